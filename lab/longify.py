"""Stage 05, longify: a lab BERT becomes a 4,096-token Longformer, is trained on long documents, and
is checked for using its long context (the working version of Longformer_ZH / allenai's conversion).

The conversion (`lab.core.longformer`) copies the position embeddings out to `max_positions` and
Q/K/V into the global projections; inside one window the converted model computes what BERT
computes, and the stage measures the largest logit difference. The sliding window runs through
PyTorch's fused attention, block by block (`lab.core.attention.block_attention`).

    python -m lab.longify --run-id X [--profile P] [-p key=value ...]
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import numpy as np
from datasets import load_from_disk

from lab import cards, contract, runs
from lab.config import LongifyConfig
from lab.core import longdocs, mlm, models, plan, train, vocab
from lab.core.attention import block_attention
from lab.core.files import hash_tree, sha256_json
from lab.core.longformer import ConversionError, LongBatches, convert, equivalence
from lab.core.masking import WholeWordMaskCollator
from lab.core.metrics import bits_per_char, document_nats
from lab.core.progress import echo
from lab.core.segment import Segmenter


def source_dir(cfg: LongifyConfig) -> Path:
    """The BERT to convert: this run's pretrained model, or `longify.source`."""
    folder = (
        Path(cfg.source)
        if cfg.source
        else STAGE.upstream_manifest(cfg, "pretrain")["dir"] / "model"
    )
    if not (folder / "config.json").exists():
        raise ConversionError(
            f"longify.source = {str(folder)!r} is not a model folder (no config.json)"
        )
    return folder


def run(cfg: LongifyConfig) -> dict:
    """Convert, check equivalence, continue pretraining on long documents, measure BPC and the probe."""
    stage = STAGE.stage(cfg)
    if stage.cached:
        echo(f"longify: cached ({stage.dir})")
        return stage.manifest
    corpus_m = STAGE.upstream_manifest(cfg, "corpus")
    wwm_params = STAGE.upstream_manifest(cfg, "wwm")["params"]
    src = source_dir(cfg)
    bert = mlm.load(src)
    tokenizer = vocab.load(src)
    long = convert(bert, max_positions=cfg.max_positions, attention_window=cfg.attention_window)
    block_attention(long)
    global_ids = tokenizer.convert_tokens_to_ids(cfg.global_tokens)
    if tokenizer.unk_token_id in global_ids:
        raise ConversionError(
            f"longify.global_tokens = {cfg.global_tokens}: not all are tokens of the vocab"
        )

    work = stage.begin()
    diff = equivalence(bert, long, tokenizer, "中国的首都是北京。" * 40, global_ids)
    echo(f"converted {src.name}: max |logit difference| inside one window = {diff:.2e}")

    docs = load_from_disk(str(corpus_m["dir"] / "longdocs"))
    seg = Segmenter(  # the run's segmenter, as the wwm stage used it
        wwm_params["segmenter"],
        user_dict=wwm_params["user_dict"],
        words=tuple(wwm_params["user_words"]),
    )
    train_docs = list(docs["train"]["text"])
    test_rows = [r for r in docs["test"] if len(r["text"]) >= cfg.min_doc_chars][: cfg.eval_docs]
    if not test_rows:
        raise runs.StageError(
            f"no held-out long document has {cfg.min_doc_chars}+ characters; lower longify.min_doc_chars"
        )
    tr_ids, tr_wids, _ = longdocs.tokenize_docs(train_docs, tokenizer, seg)
    te = longdocs.tokenize_docs([r["text"] for r in test_rows], tokenizer, seg)
    te_ids, te_wids, te_chars = ([a[: cfg.max_positions - 2] for a in part] for part in te)
    specials = dict(cls_id=tokenizer.cls_token_id, sep_id=tokenizer.sep_token_id, mask_id=tokenizer.mask_token_id)  # fmt: skip
    masks = longdocs.fixed_masks(
        te_ids, te_wids, WholeWordMaskCollator(tokenizer, whole_word=False), cfg.seed
    )
    bert_window = bert.config.max_position_embeddings

    def bpc(model, window: int, globals_: list[int] | None = None) -> float:
        nats, chars = document_nats(model, te_ids, te_chars, masks, window=window,
                                    global_ids=globals_, bf16=cfg.bf16, **specials)  # fmt: skip
        return bits_per_char(nats, chars)

    t0 = time.time()
    result_bpc = {
        "bert_512_windows": bpc(bert, bert_window),
        "longformer_before": bpc(long, cfg.max_positions, global_ids),
    }
    echo(f"bits per character before continued pretraining: {result_bpc} ({time.time() - t0:.0f}s)")

    x, w = longdocs.chunk_docs(
        tr_ids, tr_wids, cfg.seq_len, tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
    )  # fmt: skip
    collator = WholeWordMaskCollator(
        tokenizer, mlm_probability=cfg.mlm_probability, whole_word=cfg.masking == "wwm"
    )
    batches = LongBatches(x, w, collator, cfg.batch_size, cfg.seed, global_ids=global_ids)
    tc = train.TrainConfig(
        steps=cfg.steps, lr=cfg.lr, warmup_steps=max(1, int(cfg.warmup * cfg.steps)), bf16=cfg.bf16,
        eval_every=cfg.steps, ckpt_every=cfg.ckpt_every, seed=cfg.seed, log_every=5,
    )  # fmt: skip
    echo(
        f"continued pretraining: {len(x):,} chunks of {cfg.seq_len} tokens from {len(train_docs):,} documents; "
        f"{cfg.steps:,} steps x {cfg.batch_size} = {cfg.steps * cfg.batch_size * cfg.seq_len:,} tokens"
    )
    fit = partial(train.train, mlm.MaskedLM(long), batches, tc, work / "continued", desc="longify")
    res = train.train_once(long, work / "continued", fit)
    result_bpc["longformer_after"] = bpc(long, cfg.max_positions, global_ids)

    sanguo = "\n".join(r["text"] for r in docs["train"] if r["source"] == "sanguo")
    names = longdocs.frequent_names(
        [sanguo[:300_000]], tokenizer
    )  # a few 100K characters name them
    instances = longdocs.probe_instances(
        te_ids, te_wids, names, min_gap=cfg.probe_gap, limit=cfg.probe_limit
    )
    probe = {
        "bert_last_512": longdocs.probe_accuracy(bert, te_ids, instances, window=bert_window, right=cfg.probe_right, bf16=cfg.bf16, **specials),
        "longformer_whole_document": longdocs.probe_accuracy(long, te_ids, instances, window=cfg.max_positions, right=cfg.probe_right, global_ids=global_ids, bf16=cfg.bf16, **specials),
    }  # fmt: skip
    probe["names"] = [tokenizer.decode(n).replace(" ", "") for n in names[:20]]
    probe["gaps"] = [i["gap"] for i in instances]
    results = {"bpc": result_bpc, "equivalence": diff, "probe": probe}
    cards.save(long, tokenizer, work / "model", cards.longformer(cfg, src.name, results))
    sample = te_ids[0][: min(len(te_ids[0]), 2 * cfg.attention_window + 64)]
    np.save(
        work / "attention_sample.npy",
        longdocs.banded_attention(long, sample, global_ids, **specials),
    )
    metrics = {
        "source": str(src),
        "equivalence_max_abs_diff": diff,
        "bpc": result_bpc,
        "probe": probe,
        "train": {k: v for k, v in res.items() if k != "eval"},
        "docs": {
            "train": len(train_docs),
            "test": len(test_rows),
            "test_tokens": int(sum(map(len, te_ids))),
        },
        "chunks": len(x),
    }
    return stage.finish({"model": "model", "attention_sample": "attention_sample.npy"}, metrics)


def model_source(cfg: LongifyConfig) -> dict[str, str]:
    return {"source": sha256_json(hash_tree(Path(cfg.source)))} if cfg.source else {}


def headline(manifest: dict) -> dict:
    m = manifest["metrics"]
    b, p = m["bpc"], m["probe"]
    return {
        "equivalence max |Δlogit|": f"{m['equivalence_max_abs_diff']:.1e}",
        "BPC BERT-512 / before / after": f"{b['bert_512_windows']:.2f} / {b['longformer_before']:.2f} / {b['longformer_after']:.2f}",
        "long-range probe BERT / Longformer": f"{p['bert_last_512']['name_acc']:.1%} / {p['longformer_whole_document']['name_acc']:.1%} ({p['bert_last_512']['instances']} mentions)",
    }


def describe(cfg: LongifyConfig, context: dict | None = None) -> dict:
    """The plan: conversion, continued pretraining's tokens, compute and memory, the evaluation."""
    context = context or {}
    out = {
        "conversion": f"{cfg.source or 'this run pretrained model'} -> Longformer, {cfg.max_positions:,} positions, "
        f"window {cfg.attention_window}, global {cfg.global_tokens}",
        "evaluation": f"{cfg.eval_docs} held-out documents, probe gap > {cfg.probe_gap} tokens",
    }
    n = plan.tokens(cfg.steps, cfg.batch_size, cfg.seq_len, 1, cfg.processes)
    out["continued pretraining"] = (
        f"{cfg.steps:,} steps x {cfg.batch_size} x {cfg.seq_len} tokens x {cfg.processes} process(es) = {n:,} tokens"
    )
    pre = context.get("configs", {}).get("pretrain")
    if pre is not None and not cfg.source:
        vocab_size = 21128 if pre.vocab == "full" else context.get("compact_vocab", 8000)
        bert = models.config(pre.model, vocab_size, max_positions=pre.max_positions)
        shape = models.shape(bert)
        # a sliding window: each token attends to window + 1 keys, not the whole sequence
        flops = plan.train_flops(shape, n, cfg.attention_window, cfg.mlm_probability)
        need = plan.memory(
            shape, cfg.batch_size, cfg.seq_len, cfg.mlm_probability, window=cfg.attention_window
        )
        out["compute"] = plan.time_line(flops, cfg.processes)
        out["memory"] = f"{plan.gb(need)} per process (fits {plan.fits(need)})"
    return out


STAGE = contract.Contract(
    name="longify",
    notebook="05_longify.ipynb",
    description="a 4,096-token Longformer converted from the BERT, trained on long documents",
    upstream=("corpus", "wwm", "pretrain"),
    verify=("wwm", "pretrain"),
    headline=headline,
    describe=describe,
    sources=model_source,
)


def main(argv: list[str] | None = None) -> int:
    return contract.main(STAGE, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
