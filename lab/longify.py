"""Stage 05, longify: a lab BERT becomes a 4,096-token Longformer, is trained on long documents, and
is checked for using its long context (the working version of Longformer_ZH / allenai's conversion).

The conversion (`lab.core.longformer`) copies the position embeddings out to `max_positions` and
Q/K/V into the global projections; inside one window the converted model computes what BERT
computes, and the stage measures the largest logit difference. The sliding window runs through
PyTorch's fused attention, block by block (`lab.core.attention.block_attention`).

    python -m lab.longify --run-id X [--profile P] [-p key=value ...]
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
from datasets import load_from_disk

from lab import cards, contract, runs
from lab.core import (
    budget,
    hardware,
    longdocs,
    longeval,
    mlm,
    models,
    modelsource,
    stats,
    train,
    vocab,
)
from lab.core.attention import block_attention
from lab.core.longformer import ConversionError, LongBatches, convert, equivalence
from lab.core.masking import WholeWordMaskCollator
from lab.core.metrics import bits_per_char, document_nats
from lab.core.presets import check_window
from lab.core.progress import echo
from lab.groups import Loop, Masking, segmenter_of
from lab.params import ConfigError, StageConfig, param


@dataclass(frozen=True)
class LongifyConfig(Masking, Loop, StageConfig):
    stage = "longify"
    source: str = param("empty: this run's pretrained model; or a BERT model folder or hub name")
    max_positions: int = param("positions of the Longformer (tokens)", min=16)
    attention_window: int = param("sliding-window size (tokens, even)", min=2)
    global_tokens: list[str] = param("tokens that get global attention")
    seq_len: int = param("continued-pretraining sequence length (tokens)", min=16)
    steps: int = param("continued-pretraining steps", min=0)
    batch_size: int = param("sequences per step and process", min=1)
    lr: float = param("peak learning rate", min=0.0)
    eval_docs: int = param(
        "held-out long documents for bits per character, the curve and the probe (0: all)", min=0
    )
    min_doc_chars: int = param(
        "held-out documents shorter than this are skipped (characters)", min=1
    )
    context_lengths: list[int] = param(
        "context before the scored span in the context-gain curve (tokens; capped where continued "
        "pretraining stopped, seq_len)",
        min=0,
    )
    context_span: int = param("tokens of each scored span in the context-gain curve", min=8)
    context_spans_per_doc: int = param("scored spans per held-out document in the curve", min=1)
    control: bool = param(
        "also continue the BERT at 512 tokens on the same documents for the same tokens (the "
        "controlled bits-per-character comparison)"
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
            raise self.fail("seq_len", f"exceeds longify.max_positions = {self.max_positions}")
        if not self.global_tokens:
            raise ConfigError("longify.global_tokens is empty: give at least [CLS]")
        if (
            not self.context_lengths
            or min(self.context_lengths) + self.context_span + 2 > self.seq_len
        ):
            raise ConfigError(
                "longify.context_lengths: give lengths that, with longify.context_span, fit in longify.seq_len "
                "(the length continued pretraining trained)"
            )
        super().check()


def model_source(cfg: LongifyConfig, *, weights: bool = True) -> modelsource.ModelSource:
    """The BERT to convert: this run's pretrained model, or `longify.source`."""
    own = runs.stage_dir(cfg.run_id, "pretrain") / "model"
    return modelsource.resolve(cfg.source, own, param="longify.source", weights=weights)


@contract.locked
def run(cfg: LongifyConfig) -> dict:
    """Convert, check equivalence, continue pretraining on long documents, then measure bits per
    character, the context-gain curve and the name probe."""
    stage = STAGE.stage(cfg)
    if stage.cached:
        echo(f"longify: cached ({stage.dir})")
        return stage.manifest
    corpus_m = STAGE.upstream_manifest(cfg, "corpus")
    wwm_params = STAGE.upstream_manifest(cfg, "wwm")["params"]
    source = model_source(cfg)
    src = source.folder
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
    seg = segmenter_of(wwm_params)  # the run's segmenter, as the wwm stage used it
    test = held_out(cfg, docs, tokenizer, seg)
    scoring = Scoring(cfg, test, global_ids, tokenizer)
    bpc = {"bert_512_windows": scoring.bpc(bert), "longformer_before": scoring.bpc(long)}
    echo("bits per character before continued pretraining: BERT in 512-token windows "
         f"{bpc['bert_512_windows']:.3f}, converted {bpc['longformer_before']:.3f}")  # fmt: skip

    tr_ids, tr_wids, _ = longdocs.tokenize_docs(list(docs["train"]["text"]), tokenizer, seg)
    x, w = longdocs.chunk_docs(tr_ids, tr_wids, cfg.seq_len, tokenizer.cls_token_id,
                               tokenizer.sep_token_id, tokenizer.pad_token_id)  # fmt: skip
    collator = cfg.mask_rule().collator(tokenizer)
    batches = LongBatches(x, w, collator, cfg.batch_size, cfg.seed, global_ids=global_ids)
    fpt = budget.flops_per_token(
        models.size(bert.config), cfg.attention_window, cfg.mlm_probability
    )
    tc = train.TrainConfig(
        **cfg.loop(steps=cfg.steps, lr=cfg.lr, seed=cfg.seed, log_every=5, flops_per_token=fpt)
    )
    echo(f"continued pretraining: {len(x):,} chunks of {cfg.seq_len} tokens from {len(docs['train']):,} documents; "
         f"{cfg.steps:,} steps x {cfg.batch_size} = {cfg.steps * cfg.batch_size * cfg.seq_len:,} tokens")  # fmt: skip
    fit = partial(train.train, mlm.MaskedLM(long), batches, tc, work / "continued", desc="longify")
    res = train.train_once(long, work / "continued", fit)
    bpc["longformer_after"] = scoring.bpc(long)
    per_doc = {"bert_512_windows": scoring.per_doc(bert), "longformer_after": scoring.per_doc(long)}
    control = None
    if cfg.control:  # the same documents and tokens for the BERT, at 512
        bert_c = continue_bert(cfg, src, tr_ids, tr_wids, tokenizer, work)
        per_doc["bert_continued_512"] = scoring.per_doc(bert_c)
        bpc["bert_continued_512"] = scoring.bpc(bert_c)
        control = longeval.controlled(
            per_doc["bert_continued_512"], per_doc["longformer_after"], length=cfg.seq_len
        )

    gain = scoring.context_gain(bert, long)
    names = longdocs.frequent_names(
        [sanguo_text(docs)[:300_000]], tokenizer
    )  # a few 100K chars name them
    probe = scoring.probe(bert, long, names) | {
        "names": [tokenizer.decode(n).replace(" ", "") for n in names[:20]]
    }
    field = receptive_field(cfg, long)
    results = {
        "bpc": bpc,
        "bpc_per_document": per_doc,
        "equivalence": diff,
        "probe": probe,
        "receptive_field": field,
        "context_gain": gain,
    }
    if control:
        results["controlled_bpc"] = control
    card = cards.longformer(cfg, source.label, source.provenance(), results)
    cards.save(long, tokenizer, work / "model", card)
    sample = test["ids"][0][: min(len(test["ids"][0]), 2 * cfg.attention_window + 64)]
    np.save(
        work / "attention_sample.npy",
        longdocs.banded_attention(long, sample, global_ids, **scoring.specials),
    )
    metrics = results | {
        "source": str(src),
        "equivalence_max_abs_diff": diff,
        "train": {k: v for k, v in res.items() if k != "eval"},
        "docs": {
            "train": len(docs["train"]),
            "test": len(test["ids"]),
            "test_tokens": int(sum(map(len, test["ids"]))),
        },
        "chunks": len(x),
    }
    del metrics["equivalence"]
    return stage.finish({"model": "model", "attention_sample": "attention_sample.npy"}, metrics)


def continue_bert(cfg: LongifyConfig, src, tr_ids, tr_wids, tokenizer, work):
    """The control: the source BERT continued on the same training documents, for as many tokens as
    the Longformer got, at 512 (same rate, schedule and masking)."""
    bert = mlm.load(src)
    bert.set_attn_implementation(hardware.training_attention(train.accelerator().device))
    length = bert.config.max_position_embeddings
    x, w = longdocs.chunk_docs(tr_ids, tr_wids, length, tokenizer.cls_token_id, tokenizer.sep_token_id,
                               tokenizer.pad_token_id)  # fmt: skip
    batch = max(1, cfg.batch_size * cfg.seq_len // length)  # the same tokens per step
    batches = mlm.PackedBatches(x, w, cfg.mask_rule().collator(tokenizer), batch, cfg.seed)
    fpt = budget.flops_per_token(models.size(bert.config), length, cfg.mlm_probability)
    tc = train.TrainConfig(
        **cfg.loop(steps=cfg.steps, lr=cfg.lr, seed=cfg.seed, log_every=5, flops_per_token=fpt)
    )
    fit = partial(
        train.train, mlm.MaskedLM(bert), batches, tc, work / "control", desc="longify control"
    )
    train.train_once(bert, work / "control", fit)
    return bert


def held_out(cfg: LongifyConfig, docs, tokenizer, seg) -> dict:
    """The held-out long documents scored here: tokens, word ids, characters per token, and one
    fixed masking of each (the positions every model is scored on)."""
    rows = [r for r in docs["test"] if len(r["text"]) >= cfg.min_doc_chars][: cfg.eval_docs or None]
    if not rows:
        raise runs.StageError(
            f"no held-out long document has {cfg.min_doc_chars}+ characters; lower longify.min_doc_chars"
        )
    ids, wids, chars = ([a[: cfg.max_positions - 2] for a in part]
                        for part in longdocs.tokenize_docs([r["text"] for r in rows], tokenizer, seg))  # fmt: skip
    masks = longdocs.fixed_masks(
        ids, wids, WholeWordMaskCollator(tokenizer, whole_word=False), cfg.seed
    )
    return {"ids": ids, "wids": wids, "chars": chars, "masks": masks}


def sanguo_text(docs) -> str:
    return "\n".join(r["text"] for r in docs["train"] if r["source"] == "sanguo")


def receptive_field(cfg: LongifyConfig, long) -> dict:
    """How far information travels: through the sliding windows, layers x half a window on each
    side; through the global tokens, anywhere in two layers."""
    layers, half = long.config.num_hidden_layers, cfg.attention_window // 2
    return {"layers": layers, "one_sided_window": half, "local_reach_tokens": layers * half,
            "global_tokens": cfg.global_tokens}  # fmt: skip


class Scoring:
    """The held-out long documents' measurements, for BERT and for the Longformer."""

    def __init__(self, cfg: LongifyConfig, test: dict, global_ids: list[int], tokenizer):
        self.cfg, self.test, self.global_ids = cfg, test, global_ids
        self.specials = dict(cls_id=tokenizer.cls_token_id, sep_id=tokenizer.sep_token_id,
                             mask_id=tokenizer.mask_token_id)  # fmt: skip

    def _long(self, model) -> dict:
        """What a model reads: BERT its positions, the Longformer its length with global tokens."""
        if model.config.model_type == "longformer":
            return {"max_len": self.cfg.max_positions, "global_ids": self.global_ids}
        return {"max_len": model.config.max_position_embeddings, "global_ids": None}

    def bpc(self, model) -> float:
        """Whole documents, each read in independent windows of what the model can read."""
        r = self._long(model)
        t = self.test
        nats, chars = document_nats(model, t["ids"], t["chars"], t["masks"], window=r["max_len"],
                                    global_ids=r["global_ids"], bf16=self.cfg.bf16, **self.specials)  # fmt: skip
        return bits_per_char(nats, chars)

    def per_doc(self, model) -> list[float]:
        r = self._long(model)
        return longeval.per_document_bpc(model, self.test, window=r["max_len"], global_ids=r["global_ids"],
                                         bf16=self.cfg.bf16, specials=self.specials)  # fmt: skip

    def context_gain(self, bert, long) -> dict:
        """Each model's context-gain curve (`lab.core.longeval`), the Longformer's up to the length
        continued pretraining trained, and its gain from 512 tokens of context to its longest."""
        cfg = self.cfg
        span = cfg.context_span
        out = {"span": span, "contexts": {}, "curves": {}}
        for name, model, limit in (("bert", bert, bert.config.max_position_embeddings),
                                   ("longformer", long, min(cfg.seq_len, cfg.max_positions))):  # fmt: skip
            top = limit - span - 2
            contexts = sorted({c for c in cfg.context_lengths if c <= top} | {top})
            r = self._long(model)
            out["curves"][name] = longeval.curve(model, self.test, contexts=contexts, span=span, length=limit,
                                                 spans_per_doc=cfg.context_spans_per_doc,
                                                 mask_share=cfg.mlm_probability, global_ids=r["global_ids"],
                                                 bf16=cfg.bf16, specials=self.specials)  # fmt: skip
            out["contexts"][name] = contexts
        long_contexts = out["contexts"]["longformer"]
        out["documents"] = len(out["curves"]["longformer"]["per_doc"][str(long_contexts[0])])
        longest = long_contexts[-1]
        if 512 in long_contexts and longest > 512:
            out["gain_beyond_512"] = longeval.gain(
                out["curves"]["longformer"]["per_doc"], 512, longest,
                claim=f"the Longformer predicts better with {longest:,} tokens of context than with 512")  # fmt: skip
        return out

    def probe(self, bert, long, names: list[list[int]]) -> dict:
        cfg, t = self.cfg, self.test
        instances = longdocs.probe_instances(
            t["ids"], t["wids"], names, min_gap=cfg.probe_gap, limit=cfg.probe_limit
        )
        out = {}
        for name, model in (("bert_last_512", bert), ("longformer_whole_document", long)):
            r = self._long(model)
            out[name] = longdocs.probe_accuracy(model, t["ids"], instances, window=r["max_len"], right=cfg.probe_right,
                                                global_ids=r["global_ids"], bf16=cfg.bf16, **self.specials)  # fmt: skip
        out["gaps"] = [i["gap"] for i in instances]
        return out


def source_inputs(cfg: LongifyConfig) -> dict[str, str]:
    """A model named by `longify.source` is an input (the run's own is an upstream stage)."""
    return {"source": model_source(cfg, weights=False).digest()} if cfg.source else {}


def headline(manifest: dict) -> dict:
    m = manifest["metrics"]
    b, p = m["bpc"], m["probe"]
    return {
        "equivalence max |Δlogit|": f"{m['equivalence_max_abs_diff']:.1e}",
        "BPC BERT-512 / before / after": f"{b['bert_512_windows']:.2f} / {b['longformer_before']:.2f} / {b['longformer_after']:.2f}",
        "long-range probe BERT / Longformer": f"{p['bert_last_512']['name_acc']:.1%} / {p['longformer_whole_document']['name_acc']:.1%} ({p['bert_last_512']['instances']} mentions)",
        "receptive field": f"{m['receptive_field']['local_reach_tokens']:,} tokens through the windows, "
        "anywhere through the global tokens",
    } | (
        {"context beyond 512": stats.line(g)}
        if (g := m["context_gain"].get("gain_beyond_512"))
        else {}
    )


STAGE = contract.Contract(
    name="longify",
    notebook="05_longify.ipynb",
    description="a 4,096-token Longformer converted from the BERT, trained on long documents",
    params=LongifyConfig,
    upstream=("corpus", "wwm", "pretrain"),
    verify=("wwm", "pretrain"),
    headline=headline,
    sources=source_inputs,
)


def main(argv: list[str] | None = None) -> int:
    return contract.main(STAGE, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
