"""Stage 03, MLM pretraining from random initialisation: UER's two-stage recipe on the common loop.

Stage 1 trains at `seq_len` (128) for `steps`; stage 2 continues at `stage2_seq_len` (512) with its
own steps and learning rate. The result is a plain BERT (`BertForMaskedLM`) saved in Hugging Face
format with its tokenizer and a model card, loadable by `from_pretrained` and `pipeline("fill-mask")`.

    python -m lab.pretrain --run-id X [--profile P] [-p key=value ...]   # the stage without its notebook
    torchrun --nproc_per_node N -m lab.pretrain ...                      # data-parallel
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

from lab import cards, contract, runs
from lab.config import PretrainConfig
from lab.core import mlm, models, plan, shapes, train, vocab
from lab.core.files import hash_tree, sha256_json
from lab.core.masking import WholeWordMaskCollator
from lab.core.metrics import attention_by_offset, fill_mask, mlm_metrics
from lab.core.progress import echo


def build_model(cfg: PretrainConfig, tokenizer):
    """The model to pretrain: fresh from the preset, or continued from `init_from`."""
    if cfg.init_from:  # a folder, or a hub name where a hub is reachable
        model = mlm.load(cfg.init_from)
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
    collator = WholeWordMaskCollator(
        tokenizer, mlm_probability=cfg.mlm_probability, max_predictions=cfg.max_predictions or None,
        mask_replace_prob=cfg.mask_replace_prob, random_replace_prob=cfg.random_replace_prob,
        seed=cfg.seed, whole_word=cfg.masking == "wwm",
    )  # fmt: skip
    if cfg.dupe_factor:
        batches = mlm.StaticMasks(
            ids, wids, collator, batch_size, seed, dupe_factor=cfg.dupe_factor
        )
    else:
        batches = mlm.PackedBatches(ids, wids, collator, batch_size, seed)
    if warm_up_steps:
        batches = mlm.LocalityWarmup(
            batches, heads=heads, slope=cfg.locality_bias, steps=warm_up_steps, grad_accum=cfg.grad_accum
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
    plan = [("stage1", cfg.seq_len, cfg.steps, cfg.batch_size, cfg.lr)]
    if cfg.stage2_steps:
        plan.append(
            ("stage2", cfg.stage2_seq_len, cfg.stage2_steps, cfg.stage2_batch_size, cfg.stage2_lr)
        )
    for _, L, *_ in plan:
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
    if acc.is_main_process:
        echo(
            f"model {cfg.model}: {counts['total']:,} parameters ({counts['non_embedding']:,} non-embedding), "
            f"vocab {cfg.vocab} ({len(tokenizer):,}), masking {cfg.masking} {cfg.mlm_probability:.0%}"
        )
    valid = [a[: cfg.eval_sequences] for a in mlm.load_packed(packed / str(cfg.seq_len), "valid")]

    def held_out(m) -> dict:
        return mlm_metrics(m.model, *valid, tokenizer, seed=cfg.seed)

    results = {}
    for i, (name, L, steps, bs, lr) in enumerate(plan):
        ids, wids = mlm.load_packed(packed / str(L), "train")
        warm = int(cfg.locality_steps * steps) if i == 0 and cfg.locality_bias else 0
        batches = batches_for(cfg, tokenizer, ids, wids, batch_size=bs, seed=cfg.seed + i,
                              heads=model.config.num_attention_heads, warm_up_steps=warm)  # fmt: skip
        tc = train.TrainConfig(
            steps=steps, lr=lr, warmup_steps=max(1, int(cfg.warmup * steps)), schedule=cfg.schedule,
            weight_decay=cfg.weight_decay, clip=cfg.clip, grad_accum=cfg.grad_accum, bf16=cfg.bf16,
            eval_every=cfg.eval_every, ckpt_every=cfg.ckpt_every, seed=cfg.seed + i,
        )  # fmt: skip
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
    metrics = evaluate(cfg, model, tokenizer, results, counts, packed / str(cfg.seq_len))
    card = cards.teacher(cfg, shapes.arch(cfg.model), metrics, corpus_m["params"]["sources"])
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
    echo(f"held-out evaluation in {time.time() - t0:.0f}s: {held['valid']}")
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
    """A model folder to continue from is an input; a hub name is recorded as such."""
    if cfg.init_from and Path(cfg.init_from).is_dir():
        return {"init_from": sha256_json(hash_tree(Path(cfg.init_from)))}
    return {"init_from": f"hub:{cfg.init_from}"} if cfg.init_from else {}


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


def describe(cfg: PretrainConfig, context: dict | None = None) -> dict:
    """The plan: model, tokens and epochs, compute and time, memory and disk, per stage."""
    context = context or {}
    vocab_size = 21128 if cfg.vocab == "full" else context.get("compact_vocab", 8000)
    shape = models.shape(models.config(cfg.model, vocab_size, max_positions=cfg.max_positions))
    a = shapes.arch(cfg.model)
    out = {
        "model": f"{cfg.model} = {a.layers} layers x {a.hidden} hidden, {a.heads} heads; "
        f"{shape.params:,} parameters ({shape.non_embedding:,} non-embedding) with the {cfg.vocab} vocab",
    }
    runs_ = [("stage 1", cfg.steps, cfg.batch_size, cfg.seq_len)]
    if cfg.stage2_steps:
        runs_.append(("stage 2", cfg.stage2_steps, cfg.stage2_batch_size, cfg.stage2_seq_len))
    for name, steps, batch, L in runs_:
        n = plan.tokens(steps, batch, L, cfg.grad_accum, cfg.processes)
        epochs, too_many = plan.epochs_line(n, context.get("corpus_tokens"))
        flops = plan.train_flops(shape, n, L, cfg.mlm_probability)
        need = plan.memory(shape, batch, L, cfg.mlm_probability)
        out[name] = (
            f"{steps:,} steps x {batch} sequences x {L} tokens x {cfg.grad_accum} accumulation x "
            f"{cfg.processes} process(es) = {n:,} tokens; {epochs}"
        )
        out[f"{name} compute"] = plan.time_line(flops, cfg.processes)
        out[f"{name} memory"] = f"{plan.gb(need)} per process (fits {plan.fits(need)})"
        if too_many:
            out[f"{name} WARNING"] = (
                f"it reads its corpus more than {plan.MAX_EPOCHS} times: give a corpus of the size the "
                "profile expects (-p corpus.sources='[...]') or fewer steps"
            )
        if plan.fits(need).startswith("none"):
            out.setdefault("refused", []).append(
                f"pretrain {name}: {plan.gb(need)} per process fits no named accelerator; lower the batch"
            )
    out["disk"] = f"checkpoints {plan.gb(plan.checkpoint_disk(shape))} per stage"
    return out


STAGE = contract.Contract(
    name="pretrain",
    notebook="03_pretrain.ipynb",
    description="a BERT masked language model pretrained from random initialisation (UER's recipe)",
    upstream=("corpus", "wwm"),
    verify=("wwm",),
    headline=headline,
    describe=describe,
    sources=starting_point,
)


def main(argv: list[str] | None = None) -> int:
    return contract.main(STAGE, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
