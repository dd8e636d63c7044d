"""Stage parameters: one frozen dataclass per stage, filled from a profile and validated once.

A profile is a YAML parameter set shipped in `lab/profiles/`. `cpu.yaml` holds every parameter of
every stage (it is the default and what the notebooks' `parameters` cells show); `smoke.yaml` and
`gpu.yaml` change sizes and counts on top of it, never code paths.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from functools import cache
from importlib import resources

import yaml

from lab.core.shapes import ConversionError, ModelError, arch, check_window
from lab.params import PROFILES, STAGES, ConfigError, StageConfig, check_share, param

__all__ = ["PROFILES", "STAGES", "ConfigError", "StageConfig", "load", "profile_values"]


# ---------------------------------------------------------------------------------------------
# 01 corpus


@dataclass(frozen=True)
class CorpusConfig(StageConfig):
    stage = "corpus"
    sources: list[str] = param(
        "registry names (python -m lab sources) and/or paths to .txt / .jsonl / datasets folders"
    )
    text_encoding: str = param("encoding of user text files, e.g. utf-8 or gb18030")
    max_docs_per_source: int = param("documents kept per source (0: all)", min=0)
    source_max_chars: int = param("characters read per user source, its first ones (0: all)", min=0)
    min_chars: int = param("documents shorter than this (characters) are dropped", min=1)
    max_chars: int = param(
        "longer documents are cut at sentence ends into pieces this long", min=16
    )
    long_doc_chars: int = param(
        "People's Daily paragraphs are grouped into long documents this long; a user document "
        "this long is also a long document",
        min=256,
    )
    user_long_docs: int = param("long documents kept from each part of a user source", min=0)
    to_simplified: bool = param("convert Traditional to Simplified Chinese (OpenCC t2s)")
    valid_frac: float = param(
        "share of documents in the valid split (by hash of the text)", min=0.0
    )
    test_frac: float = param("share of documents in the test split (by hash of the text)", min=0.0)
    task_eval_frac: float = param(
        "share of each labelled task in its valid and in its test split", min=0.0
    )
    task_max_train: int = param("training examples kept per labelled task (0: all)", min=0)
    task_max_eval: int = param("valid / test examples kept per labelled task (0: all)", min=0)
    compact_vocab_size: int = param(
        "size of the compact CLUE-style vocab built from the corpus", min=200
    )
    num_proc: int = param("processes that clean the sources side by side", min=1)
    cache_dir: str = param("sources cache; empty: $ZH_MINILAB_CACHE or ~/.cache/zh-minilab")

    def check(self):
        if self.valid_frac + self.test_frac >= 0.5:
            raise ConfigError(
                f"corpus.valid_frac + corpus.test_frac = {self.valid_frac + self.test_frac:g}: "
                "keep the held-out share below 0.5"
            )
        if 2 * self.task_eval_frac >= 0.8:
            raise ConfigError("corpus.task_eval_frac: keep it below 0.4 (valid and test each)")
        if self.min_chars >= self.max_chars:
            raise ConfigError(
                f"corpus.min_chars ({self.min_chars}) must be below corpus.max_chars ({self.max_chars})"
            )
        if not self.sources:
            raise ConfigError("corpus.sources is empty: name at least one source")


# ---------------------------------------------------------------------------------------------
# 02 whole-word masking


@dataclass(frozen=True)
class WwmConfig(StageConfig):
    stage = "wwm"
    segmenter: str = param(
        "jieba (rjieba where identical) or jieba-python", choices=("jieba", "jieba-python")
    )
    user_dict: str = param("path of a jieba user dictionary (empty: none)")
    user_words: list[str] = param("extra words the segmenter must keep whole")
    vocabs: list[str] = param("vocabularies to tokenize with: compact and/or full")
    seq_lengths: list[int] = param("packed sequence lengths to store (tokens)", min=8)
    num_proc: int = param("processes for segmentation and tokenization", min=1)
    check_docs: int = param("documents compared with pure jieba before rjieba is trusted", min=0)
    mlm_probability: float = param(
        "share of tokens chosen for masking (statistics and demos)", min=0.0
    )
    max_predictions: int = param("cap on chosen tokens per sequence (0: none)", min=0)
    mask_replace_prob: float = param("share of chosen words replaced by [MASK]", min=0.0)
    random_replace_prob: float = param("share of chosen words replaced by random tokens", min=0.0)
    stats_sequences: int = param("sequences sampled for the masking statistics", min=10)

    def check(self):
        bad = [v for v in self.vocabs if v not in ("compact", "full")]
        if bad or not self.vocabs:
            raise ConfigError(
                f"wwm.vocabs = {self.vocabs}: choose from compact, full (at least one)"
            )
        if not self.seq_lengths:
            raise ConfigError("wwm.seq_lengths is empty: give at least one length, e.g. [128]")
        if not 0 < self.mlm_probability < 1:
            raise ConfigError(
                f"wwm.mlm_probability = {self.mlm_probability}: must be between 0 and 1"
            )
        if self.mask_replace_prob + self.random_replace_prob > 1:
            raise ConfigError("wwm.mask_replace_prob + wwm.random_replace_prob must not exceed 1")


# ---------------------------------------------------------------------------------------------
# 03 pretraining


@dataclass(frozen=True)
class PretrainConfig(StageConfig):
    stage = "pretrain"
    model: str = param(
        "preset: Tiny, Mini, Small, Medium, Base, L{n}_H{h}, MiniRBT-H256, RBT4-H312, ..."
    )
    init_from: str = param(
        "empty: random initialisation; or a model folder / hub name to start from"
    )
    vocab: str = param("compact or full vocabulary", choices=("compact", "full"))
    masking: str = param("wwm (whole words) or token (single tokens)", choices=("wwm", "token"))
    mlm_probability: float = param("share of tokens chosen for masking", min=0.0)
    mask_replace_prob: float = param("share of chosen words replaced by [MASK]", min=0.0)
    random_replace_prob: float = param("share of chosen words replaced by random tokens", min=0.0)
    max_predictions: int = param("cap on chosen tokens per sequence (0: none)", min=0)
    dupe_factor: int = param("0: dynamic masking; n: n fixed maskings per sequence (static)", min=0)
    dropout: float = param(
        "dropout while pretraining (0 is faster to learn on a small budget)", min=0.0
    )
    init_std: float = param(
        "std of the random weights (BERT uses 0.02; 0 means 1/sqrt(hidden))", min=0.0
    )
    position_init: str = param(
        "position embeddings: random (BERT) or sinusoidal init", choices=("random", "sinusoidal")
    )
    locality_bias: float = param(
        "locality warm-up: slope of an ALiBi-style attention bias -slope*|i-j| (head h gets "
        "slope/2^h) added while pretraining starts, annealed to 0; 0: off",
        min=0.0,
    )
    locality_steps: float = param(
        "share of stage 1 over which the locality bias anneals to 0 (the model is plain BERT after)",
        min=0.0,
    )
    max_positions: int = param("position embeddings of the model (tokens)", min=8)
    seq_len: int = param(
        "stage 1 sequence length (tokens; a packed length of the wwm stage)", min=8
    )
    steps: int = param("stage 1 optimizer steps", min=1)
    batch_size: int = param("stage 1 sequences per micro-batch per process", min=1)
    lr: float = param("stage 1 peak learning rate", min=0.0)
    stage2_seq_len: int = param("stage 2 sequence length (tokens)", min=8)
    stage2_steps: int = param(
        "stage 2 optimizer steps, continuing from stage 1 (0: no stage 2)", min=0
    )
    stage2_batch_size: int = param("stage 2 sequences per micro-batch per process", min=1)
    stage2_lr: float = param("stage 2 peak learning rate", min=0.0)
    warmup: float = param("warmup as a share of each stage's steps", min=0.0)
    schedule: str = param("decay after warmup", choices=("linear", "cosine", "constant"))
    weight_decay: float = param("AdamW weight decay", min=0.0)
    clip: float = param("max gradient norm (0: off)", min=0.0)
    grad_accum: int = param("micro-batches per optimizer step", min=1)
    processes: int = param(
        "data-parallel processes the plan assumes (torchrun --nproc_per_node); a run uses the "
        "processes it is launched with",
        min=1,
    )
    bf16: bool = param("bfloat16 autocast where the hardware supports it")
    eval_every: int = param("steps between held-out evaluations", min=1)
    ckpt_every: int = param("steps between checkpoints (resume points)", min=1)
    eval_sequences: int = param("held-out sequences per evaluation", min=1)
    probes: list[str] = param("fill-mask probe sentences, [MASK] marks each blank")

    def check(self):
        try:
            arch(self.model)
        except ModelError as err:
            raise ConfigError(f"pretrain.model: {err}") from None
        for name in ("seq_len", "stage2_seq_len"):
            if getattr(self, name) > self.max_positions and (
                name == "seq_len" or self.stage2_steps
            ):
                raise ConfigError(
                    f"pretrain.{name} = {getattr(self, name)} is longer than the model's "
                    f"pretrain.max_positions = {self.max_positions}"
                )
        if self.mask_replace_prob + self.random_replace_prob > 1:
            raise ConfigError(
                "pretrain.mask_replace_prob + pretrain.random_replace_prob must not exceed 1"
            )
        if not 0 < self.mlm_probability < 1:
            raise ConfigError(
                f"pretrain.mlm_probability = {self.mlm_probability}: must be between 0 and 1"
            )
        if self.warmup >= 1:
            raise ConfigError(f"pretrain.warmup = {self.warmup}: a share of the steps, below 1")
        check_share(self, "locality_steps")
        if any("[MASK]" not in p for p in self.probes):
            raise ConfigError("pretrain.probes: every probe sentence needs a [MASK]")


# ---------------------------------------------------------------------------------------------
# 04 distillation


@dataclass(frozen=True)
class DistillConfig(StageConfig):
    stage = "distill"
    teacher: str = param("empty: this run's pretrained model; or a model folder")
    vocab: str = param("vocabulary the teacher was trained with", choices=("compact", "full"))
    student: str = param("student preset (at most the teacher's width)")
    seeds: int = param("students trained per setting, seeds seed, seed+1, ...", min=1)
    assistant_layers: list[int] = param(
        "teacher layers copied into the teacher assistant (empty: uniform)"
    )
    assistant_steps: int = param(
        "teacher-assistant training steps (0: no assistant, one-stage only)", min=0
    )
    assistant_lr: float = param("teacher-assistant peak learning rate", min=0.0)
    layer_map: list[int] = param("teacher layer matched by each student layer (empty: uniform)")
    mode: str = param(
        "cached: teacher top-k stored once; online: teacher forward every step",
        choices=("cached", "online"),
    )
    topk: int = param("teacher entries kept per masked position", min=1)
    dupe_factor: int = param("fixed maskings per sequence in the cache (static masking)", min=1)
    temperature: float = param("softmax temperature T of the KD term", min=0.01)
    kd_t2: bool = param("multiply the KD term by T squared (Hinton); TextBrewer does not")
    kd_weight: float = param("weight of the soft-target KD term", min=0.0)
    mlm_weight: float = param("weight of the hard MLM term on the true tokens", min=0.0)
    hidden_weight: float = param("weight of hidden-state MSE (online mode only)", min=0.0)
    attention_weight: float = param("weight of attention-map MSE (online mode only)", min=0.0)
    topk_weight: float = param("weight of the seed's top-k CE + (1 - cosine) term", min=0.0)
    masking: str = param("wwm or token masking of the distillation data", choices=("wwm", "token"))
    seq_len: int = param("sequence length (a packed length of the wwm stage)", min=8)
    steps: int = param("student training steps (the same for one- and two-stage)", min=1)
    batch_size: int = param("sequences per step and process", min=1)
    processes: int = param(
        "data-parallel processes the plan assumes (torchrun --nproc_per_node)", min=1
    )
    lr: float = param("student peak learning rate", min=0.0)
    warmup: float = param("warmup as a share of the steps", min=0.0)
    dropout: float = param("student dropout", min=0.0)
    student_init: str = param(
        "random (MiniRBT), or select: evenly spaced dimensions and whole heads of the teacher's "
        "(two-stage: the assistant's) mapped layers (weight selection, Xu et al. 2023)",
        choices=("random", "select"),
    )
    locality_bias: float = param(
        "locality warm-up of students from random init, as pretrain.locality_bias (0: off)",
        min=0.0,
    )
    locality_steps: float = param(
        "share of the student's steps over which the locality bias anneals to 0", min=0.0
    )
    bf16: bool = param("bfloat16 autocast where the hardware supports it")
    eval_every: int = param("steps between held-out evaluations", min=1)
    ckpt_every: int = param("steps between checkpoints", min=1)
    eval_sequences: int = param("held-out sequences per evaluation", min=1)
    cache_dir: str = param("where teacher caches live (empty: inside the stage folder)")
    keep_cache: bool = param("keep the cached teacher logits after the stage")

    def check(self):
        try:
            arch(self.student)
        except ModelError as err:
            raise ConfigError(f"distill.student: {err}") from None
        if self.mode == "cached" and (self.hidden_weight or self.attention_weight):
            raise ConfigError(
                "distill.hidden_weight / attention_weight need the teacher's hidden states: "
                "set distill.mode = online, or those weights to 0"
            )
        if not any(
            getattr(self, f"{k}_weight") for k in ("kd", "mlm", "hidden", "attention", "topk")
        ):
            raise ConfigError("distill: every loss weight is 0; give at least one term a weight")
        if self.assistant_layers and not self.assistant_steps:
            raise ConfigError("distill.assistant_layers is set but distill.assistant_steps = 0")
        check_share(self, "locality_steps")


# ---------------------------------------------------------------------------------------------
# 05 longify


@dataclass(frozen=True)
class LongifyConfig(StageConfig):
    stage = "longify"
    source: str = param("empty: this run's pretrained model; or a BERT model folder")
    max_positions: int = param("positions of the Longformer (tokens)", min=16)
    attention_window: int = param("sliding-window size (tokens, even)", min=2)
    global_tokens: list[str] = param("tokens that get global attention")
    masking: str = param("wwm or token masking in continued pretraining", choices=("wwm", "token"))
    mlm_probability: float = param("share of tokens masked in continued pretraining", min=0.0)
    seq_len: int = param("continued-pretraining sequence length (tokens)", min=16)
    steps: int = param("continued-pretraining steps", min=0)
    batch_size: int = param("sequences per step and process", min=1)
    processes: int = param(
        "data-parallel processes the plan assumes (torchrun --nproc_per_node)", min=1
    )
    lr: float = param("peak learning rate", min=0.0)
    warmup: float = param("warmup as a share of the steps", min=0.0)
    bf16: bool = param("bfloat16 autocast where the hardware supports it")
    ckpt_every: int = param("steps between checkpoints", min=1)
    eval_docs: int = param("held-out long documents for bits per character and the probe", min=1)
    min_doc_chars: int = param(
        "held-out documents shorter than this are skipped (characters)", min=1
    )
    context_lengths: list[int] = param(
        "context before the scored span in the context-gain curve (tokens)", min=0
    )
    context_span: int = param(
        "final tokens of each document scored in the context-gain curve", min=8
    )
    probe_gap: int = param(
        "a probed name's previous mention is more than this many tokens back", min=1
    )
    probe_right: int = param("tokens of right context after a probed name", min=0)
    probe_limit: int = param("most probe mentions", min=1)

    def check(self):
        try:
            check_window(self.attention_window, self.max_positions)
        except ConversionError as err:
            raise ConfigError(f"longify.{err}") from None
        if self.seq_len > self.max_positions:
            raise ConfigError(
                f"longify.seq_len = {self.seq_len} exceeds longify.max_positions = {self.max_positions}"
            )
        if not self.global_tokens:
            raise ConfigError("longify.global_tokens is empty: give at least [CLS]")
        if (
            not self.context_lengths
            or min(self.context_lengths) + self.context_span + 2 > self.max_positions
        ):
            raise ConfigError(
                "longify.context_lengths: give lengths that, with longify.context_span, fit in longify.max_positions"
            )


# ---------------------------------------------------------------------------------------------
# 06 evaluate


@dataclass(frozen=True)
class EvaluateConfig(StageConfig):
    stage = "evaluate"
    models: list[str] = param(
        "models to evaluate: [all] or names (teacher, assistant, one-stage-s1234, ...)"
    )
    all_seeds: bool = param("every seed's student (else the first seed of each kind)")
    tasks: list[str] = param("downstream tasks: sentiment, thucnews, msra_ner, stsb")
    task_models: list[str] = param(
        "models fine-tuned on the tasks: [all] or names / kinds (teacher, one-stage, ...); "
        "the others get LM metrics, probes, size and speed"
    )
    scratch: bool = param("also fine-tune the teacher's architecture from random init (baseline)")
    seeds: int = param("fine-tuning seeds per model and task", min=1)
    lrs: list[float] = param(
        "fine-tuning learning rates; several: chosen on the valid split", min=0.0
    )
    epochs: float = param("fine-tuning epochs", min=0.0)
    batch_size: int = param("fine-tuning batch size", min=1)
    task_seq_len: int = param("fine-tuning sequence length (tokens)", min=8)
    task_train_examples: int = param("training examples per task", min=1)
    task_eval_examples: int = param("valid / test examples per task", min=1)
    bf16: bool = param("bfloat16 autocast where the hardware supports it")
    lm_sequences: int = param(
        "held-out sequences for accuracy / perplexity / BPC, evenly spaced", min=1
    )
    speed_repeats: int = param("timed forward passes per speed measurement", min=1)
    probes_file: str = param("fill-mask probe file, one sentence a line (empty: the packaged one)")

    def check(self):
        bad = [t for t in self.tasks if t not in ("sentiment", "thucnews", "msra_ner", "stsb")]
        if bad:
            raise ConfigError(
                f"evaluate.tasks: unknown {bad}; choose from sentiment, thucnews, msra_ner, stsb"
            )
        if not self.lrs:
            raise ConfigError("evaluate.lrs is empty: give at least one learning rate")


CONFIGS: dict[str, type[StageConfig]] = {
    "corpus": CorpusConfig,
    "wwm": WwmConfig,
    "pretrain": PretrainConfig,
    "distill": DistillConfig,
    "longify": LongifyConfig,
    "evaluate": EvaluateConfig,
}


# ---------------------------------------------------------------------------------------------
# profiles and resolution


@cache
def profile_values(profile: str) -> dict[str, dict]:
    """Every stage's parameters under `profile` (cpu.yaml with the profile's changes on top)."""
    if profile not in PROFILES:
        raise ConfigError(f"profile = {profile!r}: choose one of {list(PROFILES)}")
    base = _read_profile("cpu")
    if profile != "cpu":
        for stage, values in _read_profile(profile).items():
            unknown = set(values) - set(base.get(stage, {}))
            if unknown:
                raise ConfigError(
                    f"profile {profile}: unknown {stage} parameters {sorted(unknown)}"
                )
            base[stage] = {**base[stage], **values}
    return base


def _read_profile(name: str) -> dict[str, dict]:
    text = resources.files("lab").joinpath("profiles", f"{name}.yaml").read_text("utf-8")
    data = yaml.safe_load(text) or {}
    return {stage: dict(values or {}) for stage, values in data.items()}


def load(
    stage: str,
    namespace: dict | None = None,
    *,
    run_id: str | None = None,
    profile: str | None = None,
    overrides: dict | None = None,
) -> StageConfig:
    """The validated config of `stage`.

    From a notebook, pass `globals()`: `run_id`, `profile` and the stage's parameters are read from
    it. A value left at its `cpu` default takes the profile's value; a changed value overrides the
    profile. When `python -m lab run` executed the notebook it injected `lab_resolved = True` with
    every value already resolved, and those are taken as they are.
    """
    if stage not in CONFIGS:
        raise ConfigError(f"unknown stage {stage!r}; stages are {list(CONFIGS)}")
    cls = CONFIGS[stage]
    ns = dict(namespace or {})
    profile = profile or ns.get("profile", "cpu")
    run_id = run_id or ns.get("run_id") or profile  # `python -m lab run` names a run so too
    names = field_names(stage)
    cpu = profile_values("cpu")[stage]
    values = dict(profile_values(profile)[stage])
    resolved = ns.get("lab_resolved", False)
    for name in names:
        if name in ns and (resolved or ns[name] != cpu.get(name)):
            values[name] = ns[name]
    for key, value in (overrides or {}).items():
        if key not in names:
            raise ConfigError(unknown(stage, key, names))
        values[key] = value
    missing = [n for n in names if n not in values]
    if missing:
        raise ConfigError(f"{stage}: no value for {missing} in profile {profile}")
    return cls(run_id=run_id, profile=profile, **{n: values[n] for n in names})


def field_names(stage: str) -> list[str]:
    return [
        f.name for f in dataclasses.fields(CONFIGS[stage]) if f.name not in ("run_id", "profile")
    ]


def unknown(stage: str, key: str, names: list[str]) -> str:
    close = difflib.get_close_matches(key, names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(names)}"
    return f"unknown parameter {key!r} for stage {stage}{hint}"
