"""Stage 03, MLM pretraining from random initialisation: UER's two-stage recipe on the common loop.

Stage 1 trains at `seq_len` (128) for `steps`; stage 2 continues at `stage2_seq_len` (512) with its
own steps and learning rate. The result is a plain BERT (`BertForMaskedLM`) saved in Hugging Face
format with its tokenizer and a model card, loadable by `from_pretrained` and `pipeline("fill-mask")`.

    python -m lab.pretrain --run-id X [--profile P] [-p key=value ...]   # the stage without its notebook
    torchrun --nproc_per_node N -m lab.pretrain ...                      # data-parallel
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import torch

from lab import models, runs, train, vocab, wwm
from lab.mlm import LocalityWarmup, MaskedLM, PackedBatches, evaluate, load_packed
from lab.wwm import WholeWordMaskCollator

CODE = ("pretrain", "mlm", "train", "models", "wwm")  # modules whose changes rerun the stage


def inputs(cfg) -> dict[str, str]:
    return {
        s: runs.upstream(cfg.run_id, s, verify=s != "corpus")["digest"] for s in ("corpus", "wwm")
    }


def collator_for(cfg, tokenizer, seed: int | None = None) -> WholeWordMaskCollator:
    return wwm.collator_for(cfg, tokenizer, whole_word=cfg.masking == "wwm", seed=seed)


class StaticMasks(PackedBatches):
    """The seeds' static masking: `dupe_factor` fixed maskings per sequence, cycled by epoch."""

    def __init__(self, *args, dupe_factor: int, **kwargs):
        super().__init__(*args, **kwargs)
        from lab.wwm import static_copies

        self.mask_seeds = static_copies(len(self.input_ids), dupe_factor, self.seed)

    def __call__(self, index: int, rank: int = 0, world: int = 1) -> dict:
        rows = self.indices(index, rank, world)
        n = len(self.input_ids)
        epoch = ((index * world + rank) * self.batch_size) // n
        copy = epoch % self.mask_seeds.shape[1]
        examples = [
            {
                "input_ids": self.input_ids[i],
                "word_ids": self.word_ids[i],
                "mask_seed": int(self.mask_seeds[i, copy]),
            }
            for i in rows
        ]
        return self.collator(examples)


def sinusoidal_positions(model) -> None:
    """Initialise BERT's (learned) position embeddings with sinusoids at the default init's scale:
    the model can read relative positions from step one. The architecture stays plain BERT."""
    weight = model.bert.embeddings.position_embeddings.weight
    positions, hidden = weight.shape
    pos = torch.arange(positions, dtype=torch.float32)[:, None]
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, hidden, 2, dtype=torch.float32) / hidden)
    table = torch.zeros(positions, hidden)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)[:, : hidden // 2]
    with torch.no_grad():
        weight.copy_(table * model.config.initializer_range * math.sqrt(2))


def build_model(cfg, tokenizer):
    """The model to pretrain: fresh from the preset, or continued from `init_from`."""
    from transformers import AutoModelForMaskedLM

    if cfg.init_from:
        model = AutoModelForMaskedLM.from_pretrained(
            cfg.init_from
        )  # a folder, or a hub name where reachable
        if model.config.vocab_size != len(tokenizer):
            raise ValueError(
                f"pretrain.init_from = {cfg.init_from!r} has a vocabulary of {model.config.vocab_size:,}, "
                f"the {cfg.vocab} vocab has {len(tokenizer):,}: choose the matching pretrain.vocab"
            )
        return model
    model = models.build(
        cfg.model, len(tokenizer), seed=cfg.seed, max_positions=cfg.max_positions, dropout=cfg.dropout,
        pad_token_id=tokenizer.pad_token_id, init_std=cfg.init_std,
    )  # fmt: skip
    if cfg.position_init == "sinusoidal":
        sinusoidal_positions(model)
    return model


def train_config(cfg, *, steps: int, lr: float, seed_offset: int) -> train.TrainConfig:
    return train.TrainConfig(
        steps=steps,
        lr=lr,
        warmup_steps=max(1, int(cfg.warmup * steps)),
        schedule=cfg.schedule,
        weight_decay=cfg.weight_decay,
        clip=cfg.clip,
        grad_accum=cfg.grad_accum,
        bf16=cfg.bf16,
        eval_every=cfg.eval_every,
        ckpt_every=cfg.ckpt_every,
        seed=cfg.seed + seed_offset,
    )


def fill_mask(model, tokenizer, sentence: str, k: int = 5) -> list[list[tuple[str, float]]]:
    """Top-k tokens with probabilities at each [MASK] of `sentence`, decoded in one pass."""
    enc = tokenizer(sentence, return_tensors="pt")
    device = next(model.parameters()).device
    with torch.no_grad():
        logits = model(**{k_: v.to(device) for k_, v in enc.items()}).logits[0]
    out = []
    for pos in (enc["input_ids"][0] == tokenizer.mask_token_id).nonzero().flatten().tolist():
        probs = logits[pos].float().softmax(-1)
        top = probs.topk(k)
        out.append(
            list(zip(tokenizer.convert_ids_to_tokens(top.indices.tolist()), top.values.tolist()))
        )
    return out


def run(cfg) -> dict:
    """Pretrain the teacher (stage 1, then stage 2), save it, evaluate it; returns the manifest."""
    stage = runs.Stage(cfg, inputs(cfg), CODE)
    if stage.cached:
        runs.echo(f"pretrain: cached ({stage.dir})")
        return stage.manifest
    corpus_m = runs.upstream(cfg.run_id, "corpus", verify=False)
    wwm_m = runs.upstream(cfg.run_id, "wwm", verify=False)
    lengths = wwm_m["params"]["seq_lengths"]
    needed = [cfg.seq_len] + ([cfg.stage2_seq_len] if cfg.stage2_steps else [])
    for L in needed:
        if L not in lengths or cfg.vocab not in wwm_m["params"]["vocabs"]:
            raise ValueError(
                f"the wwm stage of run {cfg.run_id!r} packed {wwm_m['params']['vocabs']} x {lengths}; "
                f"pretraining needs vocab {cfg.vocab!r} at length {L}. Add it to wwm.seq_lengths / "
                "wwm.vocabs (or change pretrain.seq_len / stage2_seq_len)"
            )
    tokenizer = vocab.load(corpus_m["dir"] / "vocab" / cfg.vocab)
    model = build_model(cfg, tokenizer)
    work = stage.begin()
    counts = models.count(model)
    acc = train.accelerator()
    world = acc.num_processes
    if acc.is_main_process:
        print(
            f"model {cfg.model}: {counts['total']:,} parameters ({counts['non_embedding']:,} non-embedding), "
            f"vocab {cfg.vocab} ({len(tokenizer):,}), masking {cfg.masking} {cfg.mlm_probability:.0%}",
            flush=True,
        )

    valid_ids, valid_wids = load_packed(
        wwm_m["dir"] / "packed" / cfg.vocab / str(cfg.seq_len), "valid"
    )
    valid_ids, valid_wids = valid_ids[: cfg.eval_sequences], valid_wids[: cfg.eval_sequences]

    def held_out(m) -> dict:
        return evaluate(
            m.model if isinstance(m, MaskedLM) else m,
            valid_ids,
            valid_wids,
            tokenizer,
            seed=cfg.seed,
        )

    plan = [("stage1", cfg.seq_len, cfg.steps, cfg.batch_size, cfg.lr)]
    if cfg.stage2_steps:
        plan.append(
            ("stage2", cfg.stage2_seq_len, cfg.stage2_steps, cfg.stage2_batch_size, cfg.stage2_lr)
        )
    results = {}
    for i, (name, L, steps, bs, lr) in enumerate(plan):
        done = work / name / "done.json"
        if done.exists():  # finished before an interruption: take its weights and move on
            from safetensors.torch import load_model

            load_model(model, str(work / name / "model.safetensors"))
            results[name] = json.loads(done.read_text())
            continue
        ids, wids = load_packed(wwm_m["dir"] / "packed" / cfg.vocab / str(L), "train")
        collator = collator_for(cfg, tokenizer)
        if cfg.dupe_factor:
            batches = StaticMasks(
                ids, wids, collator, bs, cfg.seed + i, dupe_factor=cfg.dupe_factor
            )
        else:
            batches = PackedBatches(ids, wids, collator, bs, cfg.seed + i)
        if i == 0 and cfg.locality_bias and cfg.locality_steps:
            batches = LocalityWarmup(
                batches, heads=model.config.num_attention_heads, slope=cfg.locality_bias,
                steps=int(cfg.locality_steps * steps), grad_accum=cfg.grad_accum,
            )  # fmt: skip
        tc = train_config(cfg, steps=steps, lr=lr, seed_offset=i)
        if acc.is_main_process:
            per_step = bs * L * cfg.grad_accum * world
            print(
                f"{name}: seq {L}, {steps:,} steps x {per_step:,} tokens = {steps * per_step:,} tokens "
                f"({batches.epochs(steps * cfg.grad_accum, world):.1f} epochs of {len(ids):,} sequences), "
                f"lr {lr:g}, {world} process(es)"
                + (
                    f"; locality warm-up: attention bias slope {cfg.locality_bias:g} annealed to 0 "
                    f"over {batches.steps:,} steps"
                    if isinstance(batches, LocalityWarmup)
                    else ""
                ),
                flush=True,
            )
        res = train.train(
            MaskedLM(model), batches, tc, work / name, evaluate=held_out, desc=f"pretrain {name}"
        )
        results[name] = {k: v for k, v in res.items() if k != "eval"} | {"eval": res["eval"]}
        if acc.is_main_process:
            from safetensors.torch import save_model

            save_model(model, str(work / name / "model.safetensors"))
            runs.write_json(done, results[name])
            shutil.rmtree(work / name / "checkpoints", ignore_errors=True)
        acc.wait_for_everyone()

    if not acc.is_main_process:  # other ranks are done; the main process writes the results
        return {}
    metrics = finish(cfg, model, tokenizer, work, results, counts, corpus_m)
    return stage.finish({"model": "model", "metrics_log": "stage1/metrics.jsonl"}, metrics)


def finish(cfg, model, tokenizer, work: Path, results: dict, counts: dict, corpus_m) -> dict:
    """Held-out evaluation on all of valid and test, probes, and the Hugging Face model folder."""
    wwm_dir = runs.upstream(cfg.run_id, "wwm", verify=False)["dir"]
    model.eval()
    packed = wwm_dir / "packed" / cfg.vocab / str(cfg.seq_len)
    valid, test = load_packed(packed, "valid"), load_packed(packed, "test")
    t0 = time.time()
    held = {
        "valid": evaluate(model, *valid, tokenizer, seed=cfg.seed),
        "test": evaluate(model, *test, tokenizer, seed=cfg.seed),
        "valid_wwm": evaluate(model, *valid, tokenizer, seed=cfg.seed, whole_word=True),
    }
    probes = {p: fill_mask(model, tokenizer, p) for p in cfg.probes}
    runs.echo(f"held-out evaluation in {time.time() - t0:.0f}s: {held['valid']}")
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
    }
    save_model_dir(cfg, model, tokenizer, work / "model", metrics, corpus_m)
    metrics["attention_offsets"] = attention_by_offset(work / "model", valid[0])
    return metrics


def attention_by_offset(folder: Path, ids, max_offset: int = 8, sequences: int = 16) -> dict:
    """Mean attention weight each head puts at relative offsets -max_offset..max_offset, over held-out
    sequences: a model that has left the unigram plateau attends to its neighbours by itself (the
    uniform level is 1 / sequence length)."""
    from transformers import BertForMaskedLM

    model = BertForMaskedLM.from_pretrained(folder, attn_implementation="eager").eval()
    x = torch.as_tensor(ids[:sequences])
    with torch.no_grad():
        maps = model(input_ids=x, output_attentions=True).attentions  # per layer (B, heads, T, T)
    T = x.shape[1]
    offsets = list(range(-max_offset, max_offset + 1))
    rows = []
    for layer, a in enumerate(maps):
        by_offset = [a.diagonal(offset=d, dim1=-2, dim2=-1).mean(dim=(0, 2)) for d in offsets]
        weights = torch.stack(by_offset, dim=1)  # (heads, offsets)
        near = sum(a.diagonal(offset=d, dim1=-2, dim2=-1).sum(-1) for d in (-2, -1, 1, 2))
        share = (near / T).mean(dim=0)  # (heads,) share of attention on the 4 nearest neighbours
        for head in range(weights.shape[0]):
            rows.append({"layer": layer, "head": head, "weights": weights[head].tolist(),
                         "neighbour_share": float(share[head])})  # fmt: skip
    return {"offsets": offsets, "uniform": 1 / T, "rows": rows}


def save_model_dir(cfg, model, tokenizer, folder: Path, metrics: dict, corpus_m: dict) -> None:
    """config + safetensors weights + tokenizer + README.md model card, loadable by transformers."""
    model.config.architectures = ["BertForMaskedLM"]
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    (folder / "README.md").write_text(model_card(cfg, metrics, corpus_m), encoding="utf-8")


def model_card(cfg, metrics: dict, corpus_m: dict) -> str:
    """A model card in the style of the seeds' cards (YAML front matter, description, training, results)."""
    a = models.arch(cfg.model)
    sources_used = corpus_m["params"]["sources"]
    probe_lines = "\n".join(
        f"| `{p}` | "
        + "; ".join(" ".join(f"{t} {pr:.2f}" for t, pr in slot) for slot in preds)
        + " |"
        for p, preds in metrics["probes"].items()
    )
    train_lines = "\n".join(
        f"| {name} | {r['steps']:,} | {r['tokens']:,} | {r['seconds'] / 60:.1f} min | {r['tokens_per_s']:,.0f} |"
        for name, r in metrics["train"].items()
    )
    held = metrics["heldout"]
    locality = (
        f"; locality warm-up: an ALiBi-style attention bias (slope {cfg.locality_bias:g}, halved per head) "
        f"added during the first {cfg.locality_steps:.0%} of the stage and annealed linearly to zero, "
        "so the saved model is plain BERT"
        if cfg.locality_bias and cfg.locality_steps
        else ""
    )
    return f"""---
language: zh
datasets:
{chr(10).join(f"- {s}" for s in sources_used)}
widget:
- text: "北京是[MASK]国的首都。"
tags:
- fill-mask
- zh-minilab
pipeline_tag: fill-mask
---

# zh-minilab {cfg.model} ({a.layers}/{a.hidden}) — run `{cfg.run_id}`

A Chinese BERT-architecture masked language model pretrained from random initialisation by
zh-minilab on its offline corpus ({", ".join(sources_used)}),
following UER-py's two-stage miniature recipe. It is a plain `BertForMaskedLM`; load it with
`BertTokenizer` / `AutoTokenizer` (never a RoBERTa tokenizer).

| layers | hidden | heads | FFN | vocab | parameters | non-embedding |
|---|---|---|---|---|---|---|
| {a.layers} | {a.hidden} | {a.heads} | {a.ffn} | {cfg.vocab} ({metrics["vocab_size"]:,}) | {metrics["params"]:,} | {metrics["non_embedding_params"]:,} |

## How to use

```python
from transformers import pipeline
unmasker = pipeline("fill-mask", model="path/to/this/folder")
unmasker("中国的首都是[MASK]京。")
```

## Training

Masking: {cfg.masking} ({"whole words from jieba" if cfg.masking == "wwm" else "single tokens"}),
{cfg.mlm_probability:.0%} of tokens, {cfg.mask_replace_prob:.0%} [MASK] / {cfg.random_replace_prob:.0%} random /
{1 - cfg.mask_replace_prob - cfg.random_replace_prob:.0%} kept, {"dynamic" if not cfg.dupe_factor else f"static x{cfg.dupe_factor}"}.
Dropout {cfg.dropout}; position embeddings initialised {cfg.position_init}; AdamW, weight decay
{cfg.weight_decay}, warmup {cfg.warmup:.0%} then {cfg.schedule} decay; bf16 autocast: {cfg.bf16}; seed {cfg.seed}.
Stage 1: sequence length {cfg.seq_len}, batch {cfg.batch_size} x {cfg.grad_accum}, lr {cfg.lr:g}{locality}.
Stage 2: sequence length {cfg.stage2_seq_len}, batch {cfg.stage2_batch_size} x {cfg.grad_accum}, lr {cfg.stage2_lr:g}.

| stage | steps | tokens | time | tokens/s |
|---|---|---|---|---|
{train_lines}

## Results (held-out split, never trained on)

| split | masking | masked-token accuracy | loss | perplexity |
|---|---|---|---|---|
| valid | token 15% | {held["valid"]["acc"]:.4f} | {held["valid"]["loss"]:.3f} | {held["valid"]["ppl"]:.1f} |
| test | token 15% | {held["test"]["acc"]:.4f} | {held["test"]["loss"]:.3f} | {held["test"]["ppl"]:.1f} |
| valid | whole word 15% | {held["valid_wwm"]["acc"]:.4f} | {held["valid_wwm"]["loss"]:.3f} | {held["valid_wwm"]["ppl"]:.1f} |

Fill-mask probes (top 5 with probabilities):

| sentence | predictions |
|---|---|
{probe_lines}
"""


def headline(manifest: dict) -> dict:
    m = manifest["metrics"]
    first = next(iter(m["probes"].values()))[0][0]
    return {
        "parameters (non-embedding)": f"{m['params']:,} ({m['non_embedding_params']:,})",
        "held-out masked-token accuracy": f"{m['masked_token_accuracy']:.1%}",
        "perplexity": f"{m['perplexity']:.1f}",
        "probe top-1": f"{next(iter(m['probes']))} → {first[0]} ({first[1]:.2f})",
        "training": f"{m['train_tokens'] / 1e6:.1f} M tokens in {m['train_seconds'] / 60:.1f} min",
    } | (
        {
            "most local head": f"{max(r['neighbour_share'] for r in att['rows']):.0%} of its attention on "
            f"the 4 nearest neighbours (uniform {4 * att['uniform']:.0%})"
        }
        if (att := m.get("attention_offsets"))
        else {}
    )


def describe(cfg) -> dict:
    a = models.arch(cfg.model)
    vocab_size = 21128 if cfg.vocab == "full" else 8000
    c = models.count(models.config(cfg.model, vocab_size, max_positions=cfg.max_positions))
    t1 = cfg.steps * cfg.batch_size * cfg.seq_len * cfg.grad_accum
    t2 = cfg.stage2_steps * cfg.stage2_batch_size * cfg.stage2_seq_len * cfg.grad_accum
    flops = 6 * c["non_embedding"] * (t1 + t2)  # the usual 6 N D estimate, per process
    return {
        "model": f"{cfg.model} = {a.layers} layers x {a.hidden} hidden, {a.heads} heads; "
        f"{c['total']:,} parameters ({c['non_embedding']:,} non-embedding) with the {cfg.vocab} vocab",
        "stage 1": f"{cfg.steps:,} steps x {cfg.batch_size} x {cfg.seq_len} = {t1:,} tokens, lr {cfg.lr:g}",
        "stage 2": f"{cfg.stage2_steps:,} steps x {cfg.stage2_batch_size} x {cfg.stage2_seq_len} = {t2:,} tokens, lr {cfg.stage2_lr:g}",
        "expected compute": f"{flops / 1e12:,.1f} TFLOP (6 N D) per data-parallel process",
    }


def main(argv: list[str] | None = None) -> int:
    from lab.cli import stage_main

    return stage_main("pretrain", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
