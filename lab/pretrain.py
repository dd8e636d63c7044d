"""Stage 03, MLM pretraining from random initialisation: UER's two-stage recipe on the common loop.

Stage 1 trains at `seq_len` (128) for `steps`; stage 2 continues at `stage2_seq_len` (512) with its
own steps and learning rate. The result is a plain BERT (`BertForMaskedLM`) saved in Hugging Face
format with its tokenizer and a model card, loadable by `from_pretrained` and `pipeline("fill-mask")`.

    python -m lab.pretrain --run-id X [--profile P] [-p key=value ...]   # the stage without its notebook
    torchrun --nproc_per_node N -m lab.pretrain ...                      # data-parallel
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from lab import cards, contract, runs
from lab.core import budget, hardware, mlm, models, modelsource, presets, train, vocab
from lab.core.metrics import attention_by_offset, fill_mask, mlm_metrics
from lab.core.progress import echo
from lab.groups import Loop, Masking, check_share
from lab.params import ConfigError, StageConfig, param


@dataclass(frozen=True)
class PretrainConfig(Masking, Loop, StageConfig):
    stage = "pretrain"
    model: str = param(
        "preset: Tiny, Mini, Small, Medium, Base, L{n}_H{h}, MiniRBT-H256, RBT4-H312, ..."
    )
    init_from: str = param(
        "empty: random initialisation; or a model folder / hub name to start from"
    )
    vocab: str = param("compact or full vocabulary", choices=("compact", "full"))
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
    eval_every: int = param("steps between held-out evaluations", min=1)
    eval_sequences: int = param("held-out sequences per evaluation", min=1)
    probes: list[str] = param("fill-mask probe sentences, [MASK] marks each blank")

    def check(self):
        try:
            presets.arch(self.model)
        except presets.ModelError as err:
            raise ConfigError(f"pretrain.model: {err}") from None
        for name in ("seq_len", "stage2_seq_len"):
            if getattr(self, name) > self.max_positions and (
                name == "seq_len" or self.stage2_steps
            ):
                raise self.fail(
                    name, f"longer than the model's pretrain.max_positions = {self.max_positions}"
                )
        check_share(self, "locality_steps")
        if any("[MASK]" not in p for p in self.probes):
            raise ConfigError("pretrain.probes: every probe sentence needs a [MASK]")
        super().check()

    def phases(self) -> list[tuple[str, int, int, int, float]]:
        """(name, sequence length, steps, batch, peak rate) of stage 1 and, if any, stage 2."""
        out = [("stage1", self.seq_len, self.steps, self.batch_size, self.lr)]
        if self.stage2_steps:
            out.append(("stage2", self.stage2_seq_len, self.stage2_steps, self.stage2_batch_size,
                        self.stage2_lr))  # fmt: skip
        return out


def build_model(cfg: PretrainConfig, tokenizer):
    """The model to pretrain: fresh from the preset, or continued from `init_from`."""
    if cfg.init_from:  # a folder, or a hub name where a hub is reachable
        source = modelsource.resolve(cfg.init_from, param="pretrain.init_from")
        model = mlm.load(source.folder)
        if model.config.vocab_size != len(tokenizer):
            raise runs.StageError(
                f"pretrain.init_from = {cfg.init_from!r} has a vocabulary of {model.config.vocab_size:,}, "
                f"the {cfg.vocab} vocab has {len(tokenizer):,}: choose the matching pretrain.vocab"
            )
        return model
    model = models.build(
        cfg.model, len(tokenizer), seed=cfg.seed, max_positions=cfg.max_positions, dropout=cfg.dropout,
        pad_token_id=tokenizer.pad_token_id, init_std=cfg.init_std,
    )  # fmt: skip
    if cfg.position_init == "sinusoidal":
        models.sinusoidal_positions(model)
    return model


def batches_for(cfg: PretrainConfig, tokenizer, ids, wids, *, batch_size: int, seed: int, heads: int,
                warm_up_steps: int):  # fmt: skip
    """Masked batches of packed sequences: dynamic or static masking, with the locality warm-up
    over its first `warm_up_steps` optimizer steps (0: none)."""
    collator = cfg.mask_rule().collator(tokenizer, cfg.seed)
    if cfg.dupe_factor:
        batches = mlm.StaticMasks(
            ids, wids, collator, batch_size, seed, dupe_factor=cfg.dupe_factor
        )
    else:
        batches = mlm.PackedBatches(ids, wids, collator, batch_size, seed)
    if warm_up_steps:
        batches = mlm.LocalityWarmup(
            batches, heads=heads, slope=cfg.locality_bias, steps=warm_up_steps, grad_accum=cfg.grad_accum,
            hold=train.compiles_on_cpu(cfg.compile),
        )  # fmt: skip
    return batches


@contract.locked
def run(cfg: PretrainConfig) -> dict:
    """Pretrain the teacher (stage 1, then stage 2), save it, evaluate it; returns the manifest."""
    stage = STAGE.stage(cfg)
    if stage.cached:
        echo(f"pretrain: cached ({stage.dir})")
        return stage.manifest
    corpus_m = STAGE.upstream_manifest(cfg, "corpus")
    wwm_m = STAGE.upstream_manifest(cfg, "wwm")
    packed = wwm_m["dir"] / "packed" / cfg.vocab
    for _, L, *_ in cfg.phases():
        if L not in wwm_m["params"]["seq_lengths"] or cfg.vocab not in wwm_m["params"]["vocabs"]:
            raise runs.StageError(
                f"the wwm stage of run {cfg.run_id!r} packed {wwm_m['params']['vocabs']} x "
                f"{wwm_m['params']['seq_lengths']}; pretraining needs vocab {cfg.vocab!r} at length {L}. "
                "Add it to wwm.seq_lengths / wwm.vocabs (or change pretrain.seq_len / stage2_seq_len)"
            )
    tokenizer = vocab.load(corpus_m["dir"] / "vocab" / cfg.vocab)
    model = build_model(cfg, tokenizer)
    work = stage.begin()
    counts = models.count(model)
    acc = train.accelerator()
    world = acc.num_processes
    model.set_attn_implementation(hardware.training_attention(acc.device))  # not saved with it
    if acc.is_main_process:
        echo(
            f"model {cfg.model}: {counts['total']:,} parameters ({counts['non_embedding']:,} non-embedding), "
            f"vocab {cfg.vocab} ({len(tokenizer):,}), masking {cfg.masking} {cfg.mlm_probability:.0%}"
        )
    valid = [a[: cfg.eval_sequences] for a in mlm.load_packed(packed / str(cfg.seq_len), "valid")]

    def held_out(m) -> dict:
        return mlm_metrics(m.model, *valid, tokenizer, seed=cfg.seed)

    results = {}
    for i, (name, L, steps, bs, lr) in enumerate(cfg.phases()):
        ids, wids = mlm.load_packed(packed / str(L), "train")
        warm = int(cfg.locality_steps * steps) if i == 0 and cfg.locality_bias else 0
        batches = batches_for(cfg, tokenizer, ids, wids, batch_size=bs, seed=cfg.seed + i,
                              heads=model.config.num_attention_heads, warm_up_steps=warm)  # fmt: skip
        fpt = budget.flops_per_token(models.size(model.config), L, cfg.mlm_probability)
        tc = train.TrainConfig(
            **cfg.loop(
                steps=steps,
                lr=lr,
                seed=cfg.seed + i,
                eval_every=cfg.eval_every,
                flops_per_token=fpt,
            )
        )
        if acc.is_main_process:
            per_step = bs * L * cfg.grad_accum * world
            echo(
                f"{name}: seq {L}, {steps:,} steps x {per_step:,} tokens = {steps * per_step:,} tokens "
                f"({batches.epochs(steps * cfg.grad_accum, world):.1f} epochs of {len(ids):,} sequences), "
                f"lr {lr:g}, {world} process(es)"
                + (
                    f"; locality warm-up: attention bias slope {cfg.locality_bias:g} annealed to 0 "
                    f"over {warm:,} steps"
                    if warm
                    else ""
                )  # fmt: skip
            )
        fit = partial(train.train, mlm.MaskedLM(model), batches, tc, work / name,
                      evaluate=held_out, desc=f"pretrain {name}")  # fmt: skip
        results[name] = train.train_once(model, work / name, fit)

    if not acc.is_main_process:  # other ranks are done; the main process writes the results
        return {}
    with train.eager():  # compiled, each new length recompiles: 43 s against 21 s uncompiled
        metrics = evaluate(cfg, model, tokenizer, results, counts, packed / str(cfg.seq_len))
    card = cards.teacher(cfg, presets.arch(cfg.model), metrics, corpus_m["params"]["sources"])
    cards.save(model, tokenizer, work / "model", card)
    return stage.finish({"model": "model", "metrics_log": "stage1/metrics.jsonl"}, metrics)


def evaluate(cfg, model, tokenizer, results: dict, counts: dict, packed: Path) -> dict:
    """Held-out evaluation on all of valid and test, probes, and where the heads look."""
    model.eval()
    valid, test = mlm.load_packed(packed, "valid"), mlm.load_packed(packed, "test")
    t0 = time.time()
    held = {
        "valid": mlm_metrics(model, *valid, tokenizer, seed=cfg.seed),
        "test": mlm_metrics(model, *test, tokenizer, seed=cfg.seed),
        "valid_wwm": mlm_metrics(model, *valid, tokenizer, seed=cfg.seed, whole_word=True),
    }
    probes = {p: fill_mask(model, tokenizer, p)["slots"] for p in cfg.probes}
    v = held["valid"]
    echo(f"held-out evaluation in {time.time() - t0:.0f}s: masked-token accuracy {v['acc']:.1%}, "
         f"perplexity {v['ppl']:.1f}")  # fmt: skip
    seconds = sum(r["seconds"] for r in results.values())
    tokens = sum(r["tokens"] for r in results.values())
    metrics = {
        "vocab_size": len(tokenizer),
        "params": counts["total"],
        "non_embedding_params": counts["non_embedding"],
        "heldout": held,
        "masked_token_accuracy": held["valid"]["acc"],
        "perplexity": held["valid"]["ppl"],
        "probes": probes,
        "train": results,
        "train_seconds": seconds,
        "train_tokens": tokens,
        "tokens_per_s": tokens / max(1e-9, seconds),
        "attention_offsets": attention_by_offset(model, valid[0]),
    }
    return metrics


def starting_point(cfg: PretrainConfig) -> dict[str, str]:
    """A model to continue from is an input: a folder by its content, a hub name by its revision."""
    if not cfg.init_from:
        return {}
    source = modelsource.resolve(cfg.init_from, param="pretrain.init_from", weights=False)
    return {"init_from": source.digest()}


def headline(manifest: dict) -> dict:
    m = manifest["metrics"]
    first = next(iter(m["probes"].values()))[0][0]
    out = {
        "parameters (non-embedding)": f"{m['params']:,} ({m['non_embedding_params']:,})",
        "held-out masked-token accuracy": f"{m['masked_token_accuracy']:.1%}",
        "perplexity": f"{m['perplexity']:.1f}",
        "probe top-1": f"{next(iter(m['probes']))} → {first[0]} ({first[1]:.2f})",
        "training": f"{m['train_tokens'] / 1e6:.1f} M tokens in {m['train_seconds'] / 60:.1f} min",
    }
    if att := m.get("attention_offsets"):
        best = max(r["neighbour_share"] for r in att["rows"])
        out["most local head"] = (
            f"{best:.0%} of its attention on the 4 nearest neighbours (uniform {4 * att['uniform']:.0%})"
        )
    return out


STAGE = contract.Contract(
    name="pretrain",
    notebook="03_pretrain.ipynb",
    description="a BERT masked language model pretrained from random initialisation (UER's recipe)",
    params=PretrainConfig,
    upstream=("corpus", "wwm"),
    verify=("wwm",),
    headline=headline,
    sources=starting_point,
)


def main(argv: list[str] | None = None) -> int:
    return contract.main(STAGE, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
