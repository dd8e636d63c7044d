"""bench pretrain: real tokens per second of the lab's loop against the stock transformers `Trainer`;
bench locality: held-out accuracy with the locality warm-up against the same run without it."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch

from lab.bench import data
from lab.core import models, train, vocab
from lab.core.masking import WholeWordMaskCollator
from lab.core.metrics import fill_mask, mlm_metrics
from lab.core.mlm import LocalityWarmup, MaskedLM, PackedBatches


def pretrain(*, quick: bool = False) -> dict:
    """Real (non-pad) tokens per second: our loop (packed sequences, loss only at masked positions,
    bf16 autocast) against BertForMaskedLM + DataCollatorForLanguageModeling + Trainer (fp32,
    padded batches), the same Mini model from the same initialisation, the same texts, token-level
    masking for both; then both models' held-out loss after the same number of real tokens."""
    from datasets import Dataset
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    texts = data.texts(19484)
    held, texts = texts[:400], texts[400:]
    tokenizer = data.full_tokenizer()
    steps = 12 if quick else 120
    batch = 32
    preset = "Mini"
    print(
        f"pretrain bench: {preset}, batch {batch}, {steps} steps of the Trainer, then our loop to the same real tokens",
        flush=True,
    )

    # the stock way: one paragraph per example, dynamic padding, token-level masking, fp32
    enc = tokenizer(texts, truncation=True, max_length=128)
    ds = Dataset.from_dict({"input_ids": enc["input_ids"]})
    stock_model = models.build(preset, len(tokenizer), seed=0)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=0.15, seed=0)
    real_tokens = {"n": 0}

    class Counting(DataCollatorForLanguageModeling):
        def __call__(self, features):
            out = super().__call__(features)
            real_tokens["n"] += int(out["attention_mask"].sum())
            return out

    collator = Counting(tokenizer, mlm=True, mlm_probability=0.15, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=batch, max_steps=steps, learning_rate=5e-4,
            warmup_steps=max(1, steps // 10), weight_decay=0.01, logging_steps=max(1, steps // 4),
            save_strategy="no", report_to=[], use_cpu=True, dataloader_num_workers=0, seed=0,
            disable_tqdm=True,
        )  # fmt: skip
        trainer = Trainer(model=stock_model, args=args, train_dataset=ds, data_collator=collator)
        t0 = time.perf_counter()
        trainer.train()
        t_stock = time.perf_counter() - t0
    stock_tokens = real_tokens["n"]

    # ours: the stage's packing and loop
    x, w = data.packed(texts, tokenizer, 128)
    ours_model = models.build(preset, len(tokenizer), seed=0)
    ours_steps = max(1, round(stock_tokens / (batch * 128)))
    cfg = train.TrainConfig(
        steps=ours_steps,
        lr=5e-4,
        warmup_steps=max(1, ours_steps // 10),
        bf16=True,
        log_every=max(1, ours_steps // 4),
    )
    batches = PackedBatches(x, w, WholeWordMaskCollator(tokenizer, whole_word=False), batch, 0)
    with tempfile.TemporaryDirectory() as tmp:
        res = train.train(MaskedLM(ours_model), batches, cfg, Path(tmp), desc="ours")
    ours_tokens, t_ours = res["tokens"], res["seconds"]

    hx, hw = data.packed(held, tokenizer, 128)
    loss_stock = mlm_metrics(stock_model.float(), hx, hw, tokenizer, seed=1)["loss"]
    loss_ours = mlm_metrics(ours_model, hx, hw, tokenizer, seed=1)["loss"]
    ours, base = ours_tokens / t_ours, stock_tokens / t_stock
    print(
        f"  stock Trainer {stock_tokens:,} real tokens in {t_stock:6.1f} s = {base:,.0f} tokens/s; held-out loss {loss_stock:.3f}"
    )
    print(
        f"  lab loop      {ours_tokens:,} real tokens in {t_ours:6.1f} s = {ours:,.0f} tokens/s; held-out loss {loss_ours:.3f}"
    )
    return {
        "bench": "pretrain", "ours": round(ours), "baseline": round(base), "unit": "real tokens/s",
        "ratio": round(ours / base, 2), "target": 3.0,
        "loss_ours": round(loss_ours, 4), "loss_baseline": round(loss_stock, 4),
        "tokens_ours": ours_tokens, "tokens_baseline": stock_tokens, "model": preset, "quick": quick,
    }  # fmt: skip


def _locality_arm(slope: float, steps: int, queue) -> None:
    """One arm of the locality bench, in its own process with one thread: pretrain L2_H128 on
    People's Daily (token-level masking, fp32, lr 3e-3, the setting that sits on the unigram plateau longest; a compact vocab of
    the training text's most frequent tokens, as the corpus stage builds one), with the locality
    warm-up over the first half when `slope` > 0; report held-out accuracy as it goes."""
    os.environ["OMP_NUM_THREADS"] = "1"  # one core per arm; the training loop respects it
    torch.set_num_threads(1)

    texts = data.texts(19484)
    full = data.full_tokenizer()
    tokenizer = vocab.make_tokenizer(
        vocab.compact_tokens(full, vocab.token_counts(full, texts[400:]), 8000)
    )
    hx, hw = data.packed(texts[:400], tokenizer, 128)
    x, w = data.packed(texts[400:], tokenizer, 128)
    model = models.build("L2_H128", len(tokenizer), seed=0, dropout=0.0)
    batches = PackedBatches(x, w, WholeWordMaskCollator(tokenizer, whole_word=False), 32, 0)
    if slope:
        batches = LocalityWarmup(
            batches, heads=model.config.num_attention_heads, slope=slope, steps=steps // 2
        )
    cfg = train.TrainConfig(steps=steps, lr=3e-3, warmup_steps=max(1, steps // 20), bf16=False,
                            eval_every=max(1, steps // 8), checkpoints=False, log_every=max(1, steps // 8))  # fmt: skip
    curve = []

    def held_out(module) -> dict:
        r = mlm_metrics(module.model, hx, hw, tokenizer, seed=1)
        curve.append(round(r["acc"], 4))
        return r

    with tempfile.TemporaryDirectory() as tmp:
        res = train.train(MaskedLM(model), batches, cfg, Path(tmp), evaluate=held_out,
                          desc="warm-up" if slope else "plain")  # fmt: skip
    probe = fill_mask(model.eval(), tokenizer, "中国的首都是[MASK]京。")["slots"][0][0][0]
    queue.put({"acc": res["eval"]["acc"], "loss": res["eval"]["loss"], "curve": curve,
               "probe": probe, "tokens": res["tokens"], "seconds": res["seconds"]})  # fmt: skip


def locality(*, quick: bool = False) -> dict:
    """Held-out masked-token accuracy after equal tokens: L2_H128 pretrained with the locality
    warm-up (attention bias slope 1 annealed to 0 over the first half) against the same model,
    data and schedule without it. Both arms run at once, one core each."""
    import multiprocessing as mp

    steps = 300 if quick else 2000
    print(
        f"locality bench: L2_H128 on People's Daily, {steps} steps x 32 x 128, both arms side by side",
        flush=True,
    )
    ctx = mp.get_context("spawn")
    arms = {}
    for name, slope in (("warmup", 1.0), ("plain", 0.0)):
        queue = ctx.Queue()
        proc = ctx.Process(target=_locality_arm, args=(slope, steps, queue))
        proc.start()
        arms[name] = (proc, queue)
    out = {}
    for name, (proc, queue) in arms.items():
        out[name] = queue.get()
        proc.join()
    for name, r in out.items():
        print(f"  {name:7s} held-out accuracy {r['acc']:.3f} (loss {r['loss']:.3f}) after {r['tokens']:,} tokens, "
              f"curve {r['curve']}, 中国的首都是[MASK]京。 -> {r['probe']}")  # fmt: skip
    return {
        "bench": "locality", "ours": round(out["warmup"]["acc"], 4), "baseline": round(out["plain"]["acc"], 4),
        "unit": "held-out masked-token accuracy", "ratio": round(out["warmup"]["acc"] / out["plain"]["acc"], 2),
        "target": 1.5, "curve_ours": out["warmup"]["curve"], "curve_baseline": out["plain"]["curve"],
        "probe_ours": out["warmup"]["probe"], "probe_baseline": out["plain"]["probe"],
        "tokens": out["warmup"]["tokens"], "quick": quick,
    }  # fmt: skip
