"""bench pretrain: real tokens per second of the lab's loop against the stock transformers `Trainer`;
bench locality: held-out accuracy with the locality warm-up against the same run without it."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch

from lab.bench import data, rounds
from lab.core import budget, hardware, models, train, vocab
from lab.core.masking import WholeWordMaskCollator
from lab.core.metrics import fill_mask, mlm_metrics
from lab.core.mlm import LocalityWarmup, MaskedLM, PackedBatches


class _Clock:
    """A batch source's wrapper that notes when each step asks for its batch: the time between two
    steps, whatever loop calls it."""

    def __init__(self, batches):
        self.batches, self.times, self.tokens = batches, [], []

    def __call__(self, index: int, rank: int = 0, world: int = 1) -> dict:
        self.times.append(time.perf_counter())
        batch = self.batches(index, rank, world)
        self.tokens.append(int(batch["attention_mask"].sum()))
        return batch

    def rate(self, skip: int) -> float:
        """Real tokens per second over the steps after the first `skip` (compilation, warm-up)."""
        return sum(self.tokens[skip:-1]) / (self.times[-1] - self.times[skip])


def _trainer_arm(model, dataset, collator, *, bf16: bool, batch: int, steps: int, skip: int):
    """One round of transformers' Trainer: `steps` steps on the same model, tokens/s after `skip`."""
    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

    stamps: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(time.perf_counter())

    counted: list[int] = []

    def collate(features):
        out = collator(features)
        counted.append(
            int(out["attention_mask"].sum())
            if "attention_mask" in out
            else out["input_ids"].numel()
        )
        return out

    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=batch, max_steps=steps, learning_rate=5e-4,
            warmup_steps=1, weight_decay=0.01, logging_steps=steps, save_strategy="no", report_to=[],
            use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0, seed=0, disable_tqdm=True,
            bf16=bf16,
        )  # fmt: skip
        trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collate,
                          callbacks=[Stamp()])  # fmt: skip
        trainer.remove_callback(PrinterCallback)  # its log lines are not this bench's output
        trainer.train()
    return sum(counted[skip + 1 : len(stamps)]) / (stamps[-1] - stamps[skip])


def _grouped(ids: list[list[int]], length: int) -> list[list[int]]:
    """run_mlm.py's group_texts: every text's tokens concatenated and cut into full blocks."""
    flat = [t for x in ids for t in x]
    return [flat[i : i + length] for i in range(0, len(flat) - length + 1, length)]


def _matmuls_alone(size, batch: int, length: int, mask_share: float, repeats: int = 5):
    """A training step's matrix products alone, back to back, in bf16 at the model's shapes: each
    layer's six linear maps and two attention products, the head's transform and vocabulary
    projection at the masked rows, each forward and its backward's two products. Returns an arm
    (the tokens/s a step would reach if nothing but its matmuls took time: its MFU is the ceiling
    of the loop's), the FLOPs the products do per token (`budget.flops_per_token`'s count), and the
    products' shapes (batch, rows, inner, columns)."""
    n, h = batch * length, size.hidden
    f, m, bh, d = size.ffn or 4 * h, round(n * mask_share), batch * size.heads, h // size.heads
    mats = [(1, n, h, h)] * 4 + [(1, n, h, f), (1, n, f, h)]
    mats = mats * size.layers + [(bh, length, d, length), (bh, length, length, d)] * size.layers
    mats += [(1, m, h, h), (1, m, h, size.vocab)]
    pairs = []
    for b, rows, inner, cols in mats:  # y = x w; dx = dy w^T; dw = x^T dy
        for a, c, e in ((rows, inner, cols), (rows, cols, inner), (inner, rows, cols)):
            pairs.append((torch.randn(b, a, c, dtype=torch.bfloat16),
                          torch.randn(b, c, e, dtype=torch.bfloat16)))  # fmt: skip
    flops = sum(2 * x.shape[0] * x.shape[1] * x.shape[2] * y.shape[2] for x, y in pairs)

    def step():
        for x, y in pairs:
            torch.bmm(x, y) if x.shape[0] > 1 else x[0] @ y[0]

    step()

    def arm() -> float:
        t0 = time.perf_counter()
        for _ in range(repeats):
            step()
        return repeats * n / (time.perf_counter() - t0)

    return arm, flops / n, [(x.shape[0], *x.shape[1:], y.shape[2]) for x, y in pairs]


def pretrain(*, quick: bool = False) -> dict:
    """Real (non-pad) tokens per second of the lab's pretraining loop (packed sequences, loss at
    masked positions only, bf16, this machine's training attention, compiled) against two
    transformers `Trainer` runs of the same Mini model from the same initialisation on the same
    texts: the stock one (fp32, one padded paragraph per example) and the one a careful user writes
    (bf16=True, run_mlm's grouped full blocks, SDPA attention). The arms run in interleaved rounds;
    the ratio against the careful arm is the result. Each arm's MFU is against this machine's
    probed bf16 matmul peak, beside the MFU of the step's matmuls run alone in the same rounds (the
    ceiling: what is not a matmul takes the rest); then each model's held-out loss. The training
    arms run at dropout 0.1 (BERT's, and the `gpu` profile's) but one: `lab_dropout0` is the lab's
    loop at dropout 0, the `cpu` profile's setting, so the MFU that profile's pretraining can reach
    is measured in the same rounds, and the ratio of the two lab arms is what dropout 0.1 costs."""
    from datasets import Dataset
    from transformers import DataCollatorForLanguageModeling

    load_start = rounds.loadavg()
    texts = data.texts(19484)
    held, texts = texts[:400], texts[400:]
    tokenizer = data.full_tokenizer()
    batch, length = 32, 128
    n_rounds, steps, skip = (2, 8, 3) if quick else (5, 30, 5)
    preset = "Mini"
    peak = {p: hardware.matmul_peak("cpu", p) for p in ("bfloat16", "float32")}
    size = models.size(models.config(preset, len(tokenizer)))
    fpt = budget.flops_per_token(size, length, 0.15)
    print(f"pretrain bench: {preset}, batch {batch} x {length}, {n_rounds} rounds of {steps} steps per arm; "
          f"probed matmul peak bf16 {peak['bfloat16'] / 1e9:,.0f} GFLOP/s, fp32 {peak['float32'] / 1e9:,.0f}; "
          f"{fpt / 1e6:.1f} MFLOP per token (budget.flops_per_token)", flush=True)  # fmt: skip

    enc = tokenizer(texts, truncation=True, max_length=length)["input_ids"]
    stock_ds = Dataset.from_dict({"input_ids": enc})
    careful_ds = Dataset.from_dict({"input_ids": _grouped([x[1:-1] for x in enc], length)})
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=0.15, seed=0)
    stock = models.build(preset, len(tokenizer), seed=0)
    careful = models.build(preset, len(tokenizer), seed=0)  # SDPA: transformers' default

    x, w = data.packed(texts, tokenizer, length)
    collate = WholeWordMaskCollator(tokenizer, whole_word=False)
    ours_model = models.build(preset, len(tokenizer), seed=0, dropout=0.1)
    ours0_model = models.build(preset, len(tokenizer), seed=0, dropout=0.0)
    alone, alone_fpt, _ = _matmuls_alone(size, batch, length, 0.15)
    hardware.retain_freed_memory()  # every arm, not only the lab's after its first round

    def batches(seed: int) -> PackedBatches:
        return PackedBatches(x, w, collate, batch, seed)

    arms = {
        "lab": _lab_arm(ours_model, batches, steps, skip, "lab"),
        "lab_dropout0": _lab_arm(ours0_model, batches, steps, skip, "lab, dropout 0"),
        "trainer_careful": lambda: _trainer_arm(
            careful, careful_ds, collator, bf16=True, batch=batch, steps=steps, skip=skip
        ),  # fmt: skip
        "trainer_stock": lambda: _trainer_arm(
            stock, stock_ds, collator, bf16=False, batch=batch, steps=steps, skip=skip
        ),  # fmt: skip
        "matmuls_alone": alone,
    }
    rates = rounds.interleaved(arms, n_rounds)
    hx, hw = data.packed(held, tokenizer, length)
    with train.eager():  # every arm's model scored by the same uncompiled code
        trained = {"lab": ours_model, "lab_dropout0": ours0_model, "trainer_careful": careful,
                   "trainer_stock": stock}  # fmt: skip
        loss = {name: mlm_metrics(m.float(), hx, hw, tokenizer, seed=1)["loss"]
                for name, m in trained.items()}  # fmt: skip
    med = {name: rounds.median(r) for name, r in rates.items()}
    mfu = {name: round(hardware.mfu(fpt, r, peak["bfloat16"]), 3) for name, r in med.items()}
    for name in loss:
        print(f"  {name:16s} {med[name]:9,.0f} real tokens/s  MFU {mfu[name]:.0%} of the bf16 peak  "
              f"held-out loss {loss[name]:.3f} after {n_rounds * steps} steps")  # fmt: skip
    print(f"  {'matmuls_alone':16s} {med['matmuls_alone']:9,.0f} tokens/s  MFU {mfu['matmuls_alone']:.0%}: "
          f"the step's {alone_fpt / 1e6:.1f} MFLOP a token of matmuls alone, the ceiling of the loop's MFU")  # fmt: skip
    vs_careful = rounds.paired_ratio(rates["lab"], rates["trainer_careful"])
    vs_stock = rounds.paired_ratio(rates["lab"], rates["trainer_stock"])
    return {
        "bench": "pretrain", "ours": round(med["lab"]), "baseline": round(med["trainer_careful"]),
        "unit": "real tokens/s", **vs_careful, "target": 1.5,
        "baseline_arm": "Trainer, bf16=True, run_mlm grouped full blocks, SDPA",
        "stock": round(med["trainer_stock"]), "ratio_vs_stock": vs_stock["ratio"],
        "ratio_vs_stock_iqr": vs_stock["ratio_iqr"], "mfu": mfu,
        "peak_gflops": {k: round(v / 1e9) for k, v in peak.items()}, "flops_per_token": fpt,
        "mfu_ceiling": mfu["matmuls_alone"], "matmul_flops_per_token": alone_fpt,
        "dropout": {k: m.config.hidden_dropout_prob for k, m in trained.items()},
        "dropout0_vs_lab": rounds.paired_ratio(rates["lab_dropout0"], rates["lab"]),
        "loss": {k: round(v, 4) for k, v in loss.items()}, "rounds": n_rounds, "steps_per_round": steps,
        "rates_by_round": {k: [round(v) for v in r] for k, r in rates.items()},
        "loadavg": {"start": load_start, "end": rounds.loadavg()}, "model": preset, "quick": quick,
    }  # fmt: skip


def _lab_arm(model, batches, steps: int, skip: int, desc: str):
    """The lab's loop as one arm: each call trains `model` `steps` more steps (compiled, bf16, this
    machine's training attention) on `batches(seed)`, a new seed each call, and returns tokens/s
    past the first `skip` steps."""
    model.set_attn_implementation(hardware.training_attention("cpu"))
    module = MaskedLM(model)
    train.compile_encoders(module)
    cfg = train.TrainConfig(steps=steps, lr=5e-4, warmup_steps=1, bf16=True, checkpoints=False,
                            tensorboard=False, log_every=steps, leave=False)  # fmt: skip
    done = {"steps": 0}

    def arm() -> float:
        clock = _Clock(batches(done["steps"]))
        with tempfile.TemporaryDirectory() as tmp:
            train.train(module, clock, cfg, Path(tmp), desc=desc)
        done["steps"] += steps
        return clock.rate(skip)

    return arm


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
