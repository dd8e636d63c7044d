"""Stage 04, knowledge distillation: MiniRBT's two-stage recipe with TextBrewer-style losses and
the roberta-wwm-ext-distill recipe's cached top-k teacher logits, on the common training loop.

  teacher ──(teacher layers copied, then distilled)──> teacher assistant ──> student   (two-stage)
  teacher ─────────────────────────────────────────────────────────────────> student   (one-stage)

Both students have the same size and the same token budget; each is trained with several seeds.
In `cached` mode the teacher's top-k log-probabilities are computed once (`lab.core.kdcache`); in
`online` mode the teacher runs every step, which also allows hidden-state and attention losses.

    python -m lab.distill --run-id X [--profile P] [-p key=value ...]
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from lab import cards, contract, lineup, runs
from lab.core import (
    kd,
    kdeval,
    mlm,
    modelsource,
    names,
    presets,
    train,
    vocab,
)
from lab.core.files import sha256_json
from lab.core.kd import DistillError
from lab.core.progress import echo
from lab.distillation import Distillation
from lab.groups import Loop, Masking, check_share
from lab.params import ConfigError, StageConfig, param


@dataclass(frozen=True)
class DistillConfig(Masking, Loop, StageConfig):
    stage = "distill"
    teacher: str = param("empty: this run's pretrained model; or a model folder or hub name")
    vocab: str = param(
        "vocabulary the teacher was trained with: compact, full, or the name a tokenizer folder in "
        "wwm.vocabs packs under (its folder's name)"
    )
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
    seq_len: int = param("sequence length (a packed length of the wwm stage)", min=8)
    steps: int = param("student training steps (the same for one- and two-stage)", min=1)
    batch_size: int = param("sequences per step and process", min=1)
    lr: float = param("student peak learning rate", min=0.0)
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
    eval_every: int = param("steps between held-out evaluations", min=1)
    eval_sequences: int = param("held-out sequences per evaluation", min=1)
    cache_dir: str = param("where teacher caches live (empty: inside the stage folder)")
    keep_cache: bool = param("keep the cached teacher logits after the stage")

    def check(self):
        try:
            presets.arch(self.student)
        except presets.ModelError as err:
            raise ConfigError(f"distill.student: {err}") from None
        if self.mode == "cached" and (self.hidden_weight or self.attention_weight):
            raise ConfigError(
                "distill.hidden_weight / attention_weight need the teacher's hidden states: "
                "set distill.mode = online, or those weights to 0"
            )
        if not any(getattr(self, f"{k}_weight") for k in kd.LOSSES):
            raise ConfigError("distill: every loss weight is 0; give at least one term a weight")
        if self.assistant_layers and not self.assistant_steps:
            raise ConfigError("distill.assistant_layers is set but distill.assistant_steps = 0")
        check_share(self, "locality_steps")
        super().check()


def teacher_source(cfg: DistillConfig, *, weights: bool = True) -> modelsource.ModelSource:
    """The teacher: this run's pretrained model, or a model folder or hub name (`distill.teacher`)."""
    own = runs.stage_dir(cfg.run_id, "pretrain") / "model"
    return modelsource.resolve(cfg.teacher, own, param="distill.teacher", weights=weights)


def load_teacher(cfg: DistillConfig, source: modelsource.ModelSource):
    teacher = mlm.load(source.folder, attn="eager" if cfg.attention_weight else None)
    if teacher.config.model_type != "bert":
        raise DistillError(
            f"the teacher in {source.folder} is a {teacher.config.model_type} model; distillation here "
            "takes BERT teachers"
        )
    return teacher


def check_setup(cfg: DistillConfig, teacher, tokenizer) -> dict:
    """Everything that can be wrong with the plan, raised before any training; returns the plan."""
    if teacher.config.vocab_size != len(tokenizer):
        raise DistillError(
            f"the teacher's vocabulary has {teacher.config.vocab_size:,} tokens but the {cfg.vocab} vocab of "
            f"this run has {len(tokenizer):,}: distill with the vocab the teacher was trained on (distill.vocab)"
        )
    t_layers, t_hidden = teacher.config.num_hidden_layers, teacher.config.hidden_size
    s = presets.arch(cfg.student)
    if s.hidden > t_hidden:
        raise DistillError(
            f"distill.student = {cfg.student} is {s.hidden} wide, wider than the teacher ({t_hidden}); the "
            "hidden-state projection maps a narrower student onto the teacher. Choose a smaller student."
        )
    t_head = t_hidden // teacher.config.num_attention_heads
    if cfg.student_init == "select" and s.hidden // s.heads != t_head:
        raise DistillError(
            f"distill.student_init = select keeps whole heads, but {cfg.student}'s heads are "
            f"{s.hidden // s.heads} wide and the teacher's {t_head}: choose a student with {t_head}-wide "
            "heads or distill.student_init = random"
        )
    plan = {
        "teacher_layers": t_layers,
        "student_map": kd.check_layer_map(cfg.layer_map, s.layers, t_layers, "distill.layer_map"),
        "student_init": cfg.student_init,
    }
    if cfg.assistant_layers or cfg.assistant_steps:
        n = len(cfg.assistant_layers) or max(1, t_layers // 2)
        plan["assistant_init"] = kd.check_layer_map(
            cfg.assistant_layers, n, t_layers, "distill.assistant_layers"
        )
        plan["student_map_from_assistant"] = kd.uniform_map(s.layers, n)
    return plan


@contract.locked
def run(cfg: DistillConfig) -> dict:
    """Teacher assistant, one-stage and two-stage students over seeds; returns the manifest."""
    stage = STAGE.stage(cfg)
    if stage.cached:
        echo(f"distill: cached ({stage.dir})")
        return stage.manifest
    corpus_m = STAGE.upstream_manifest(cfg, "corpus")
    wwm_m = STAGE.upstream_manifest(cfg, "wwm")
    packed_vocabs = lineup.packed_vocabs(corpus_m, wwm_m)
    if cfg.vocab not in packed_vocabs:
        raise DistillError(f"distill.vocab = {cfg.vocab!r}, but the wwm stage packed {list(packed_vocabs)}: "
                           f"{vocab.packing_fix(cfg.vocab)}")  # fmt: skip
    tokenizer = vocab.load(packed_vocabs[cfg.vocab])
    source = teacher_source(cfg)
    teacher = load_teacher(cfg, source)
    if differ := vocab.mismatch(source.folder, tokenizer):
        raise DistillError(f"the teacher ({source.provenance()}) was not trained with the {cfg.vocab} vocabulary "
                           f"of this run: {differ}. Set distill.vocab to the one it was (full or compact), or "
                           f"add the teacher's folder to wwm.vocabs and set distill.vocab to its name")  # fmt: skip
    plan = check_setup(cfg, teacher, tokenizer)
    packed = wwm_m["dir"] / "packed" / cfg.vocab / str(cfg.seq_len)
    if not packed.exists():
        raise DistillError(
            f"the wwm stage packed no {cfg.vocab} sequences of length {cfg.seq_len} ({packed})"
        )
    teacher_digest = source.digest()

    work = stage.begin()
    job = Distillation(cfg, tokenizer, packed, work)
    t0 = time.time()
    caches = {"teacher": job.cache(teacher, teacher_digest, "teacher")}
    summaries: dict[str, dict] = {}
    trained: dict[str, object] = {}

    assistant = None
    if "assistant_init" in plan:  # its layers come from the teacher: no warm-up
        assistant = kd.student_from_teacher(teacher, plan["assistant_init"], seed=cfg.seed)
        summaries["assistant"] = job.train(
            assistant, teacher, plan["assistant_init"], "teacher" if caches["teacher"] else None,
            work / "assistant", steps=cfg.assistant_steps, lr=cfg.assistant_lr, seed=cfg.seed,
            warm_up=False,
        )  # fmt: skip
        trained["assistant"] = assistant
        a_digest = sha256_json({"assistant": summaries["assistant"], "teacher": teacher_digest})
        caches["assistant"] = job.cache(assistant, a_digest, "assistant")

    kinds = [("one-stage", teacher, "student_map", "teacher")]
    if assistant is not None:
        kinds.append(("two-stage", assistant, "student_map_from_assistant", "assistant"))
    for k in range(cfg.seeds):
        seed = cfg.seed + k
        for kind, taught_by, map_key, cache in kinds:
            name = names.student(kind, seed)
            student = kd.new_student(cfg.student, teacher, seed=seed, dropout=cfg.dropout)
            if cfg.student_init == "select":
                plan["heads_kept"] = kd.select_weights(student, taught_by, plan[map_key])
            summaries[name] = job.train(
                student, taught_by, plan[map_key], cache if caches.get(cache) else None,
                work / "students" / name, steps=cfg.steps, lr=cfg.lr, seed=seed,
                warm_up=cfg.student_init == "random",
            )  # fmt: skip
            trained[name] = student

    echo(
        f"distillation trained {len(trained)} models in {(time.time() - t0) / 60:.1f} min; evaluating ..."
    )
    valid_ids, valid_wids = mlm.load_packed(packed, "valid")
    with train.eager():  # every model scored and timed uncompiled, as the evaluate stage loads it
        table = kdeval.compare(teacher, trained, tokenizer, valid_ids, valid_wids,
                               sequences=cfg.eval_sequences * 4, seed=cfg.seed)  # fmt: skip
    for name, model in trained.items():
        card = cards.student(cfg, name, model, table[name], summaries[name],
                             init_text(cfg, plan, name), source.provenance())  # fmt: skip
        cards.save(model, tokenizer, work / "models" / name, card)
    metrics = {
        "plan": plan,
        "models": table,
        "summary": kdeval.summarize(table),
        "caches": {k: v for k, v in caches.items() if v},
        "kd_sanity": {
            name: kd.kd_sanity(train.read_log(log_dir(work, name) / "metrics.jsonl"))
            for name in trained
        },
        "train": summaries,
    }
    if not cfg.keep_cache and not cfg.cache_dir:
        shutil.rmtree(work / "cache", ignore_errors=True)
    return stage.finish({"models": "models"}, metrics)


def init_text(cfg: DistillConfig, plan: dict, name: str) -> str:
    """How a model's weights started, for its model card."""
    if name == names.ASSISTANT:
        return f"initialised from teacher layers {plan.get('assistant_init')}"
    if cfg.student_init == "select":
        source = names.taught_by(name)
        layers = plan["student_map_from_assistant" if source == names.ASSISTANT else "student_map"]
        return f"initialised by weight selection from the {source}'s layers {layers} (heads {plan.get('heads_kept')})"
    warm = cfg.locality_bias and cfg.locality_steps
    return "initialised randomly" + (
        f", locality warm-up over {cfg.locality_steps:.0%} of the steps" if warm else ""
    )


def log_dir(stage_dir: Path, name: str) -> Path:
    """Where the training log of model `name` of a distill stage folder is."""
    return stage_dir / name if name == names.ASSISTANT else stage_dir / "students" / name


def training_logs(manifest: dict) -> dict[str, list[dict]]:
    """Every distilled model's training log (for the KD-sanity panel)."""
    return {
        name: train.read_log(log_dir(manifest["dir"], name) / "metrics.jsonl")
        for name in manifest["metrics"]["train"]
    }


def teacher_inputs(cfg: DistillConfig) -> dict[str, str]:
    """A teacher named by the parameter is an input: a folder by its content, a hub name by its
    revision (this run's own teacher is an upstream stage)."""
    return {"teacher": teacher_source(cfg, weights=False).digest()} if cfg.teacher else {}


def headline(manifest: dict) -> dict:
    m = manifest["metrics"]
    out = {}
    for kind, s in m["summary"].items():
        spread = f" ± {s['acc_std']:.1%}" if s["seeds"] > 1 else ""
        rel = s["relative_to_teacher"]
        out[f"{kind} student accuracy"] = (
            f"{s['acc_mean']:.1%}{spread} ({'—' if rel is None else f'{rel:.0%}'} of teacher's; batch-1 "
            f"{s['latency_vs_teacher']:.1f}x the teacher's speed)"
        )
    out["teacher accuracy"] = f"{m['models']['teacher']['acc']:.1%}"
    if "teacher" in m["caches"]:
        k = manifest["params"]["topk"]
        out[f"top-{k} truncation mass"] = f"{m['caches']['teacher']['truncation_mass'][str(k)]:.3f}"
    return out


STAGE = contract.Contract(
    name="distill",
    notebook="04_distill.ipynb",
    description="a teacher assistant and one-stage and two-stage students distilled from the teacher",
    params=DistillConfig,
    upstream=("corpus", "wwm", "pretrain"),
    verify=("wwm", "pretrain"),
    headline=headline,
    sources=teacher_inputs,
)


def main(argv: list[str] | None = None) -> int:
    return contract.main(STAGE, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
