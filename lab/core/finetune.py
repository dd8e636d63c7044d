"""Fine-tuning a pretrained encoder on a task: the task model (a standard head on the encoder, the
head swap checked exactly, the attention that trains fastest here), the loop over batches drawn at
random and packed (`lab.core.taskbatches`, which says what packing and batches of similar length
do), predictions in batches, and many fine-tunings side by side (`run_fits`).
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lab.core import budget, hardware, models, train
from lab.core.attention import block_attention
from lab.core.taskbatches import (
    BUCKET_POOL,
    PACKED_ATTENTION,
    TaskBatches,
    collate,
    packed_loss,
    text_tokens,
)


class Finetune(torch.nn.Module):
    """A task model whose forward returns {"loss"} for the training loop."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, **batch):
        if "segments" in batch:
            return {"loss": packed_loss(self.model, batch)}
        return {"loss": self.model(**with_global(self.model, batch)).loss}


def with_global(model, batch: dict) -> dict:
    """A Longformer's inputs with global attention on [CLS], as the longify stage trained it (and
    as transformers' sequence classifier would set it, with a warning, on every call)."""
    if model.config.model_type != "longformer" or "global_attention_mask" in batch:
        return batch
    gm = torch.zeros_like(batch["input_ids"])
    gm[:, 0] = 1
    return batch | {"global_attention_mask": gm}


def task_model(source, task, *, seed: int, max_length: int):
    """A task head on a pretrained model folder, or on an untrained config (scratch baseline).

    The pretrained encoder's weights are loaded here rather than by `from_pretrained`, so the head
    swap is checked exactly (only the MLM head is left out, only the task head is new) instead of
    reported as a warning on every load."""
    from transformers import (
        AutoConfig,
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
    )

    torch.manual_seed(seed)
    auto = (
        AutoModelForTokenClassification
        if task.kind == "tag"
        else AutoModelForSequenceClassification
    )
    names = {i: f"LABEL_{i}" for i in range(task.num_labels)}
    labels = {
        "num_labels": task.num_labels,
        "id2label": names,
        "label2id": {v: k for k, v in names.items()},
    }
    if task.kind == "regress":
        labels["problem_type"] = "regression"
    pretrained = isinstance(source, (str, Path))
    base = AutoConfig.from_pretrained(str(source)) if pretrained else source
    cfg = base.__class__.from_dict({**base.to_dict(), **labels})
    _short_window(cfg, max_length)
    model = auto.from_config(cfg)
    if pretrained:
        swap_head(model, Path(source))
    if cfg.model_type == "longformer":
        block_attention(model)
    elif cfg.model_type == "bert":
        model.set_attn_implementation(hardware.training_attention(train.accelerator().device))
    return model


def swap_head(model, folder: Path) -> None:
    """Load a masked-LM checkpoint's encoder into a task model: the MLM head's weights are the only
    ones left over and the task head's (with BERT's pooler, which an MLM has not) the only ones
    missing, or this raises."""
    state = weights_of(folder)
    result = model.load_state_dict(state, strict=False)
    prefix = model.base_model_prefix + "."
    stray = [k for k in result.unexpected_keys if k.startswith(prefix)]
    lost = [k for k in result.missing_keys if k.startswith(prefix) and ".pooler." not in k]
    if stray or lost:
        raise ValueError(
            f"{folder}: the encoder's weights do not fit a {type(model).__name__} "
            f"(missing {lost[:3]}, unexpected {stray[:3]}); is it a model of another architecture?"
        )


def weights_of(folder: Path) -> dict:
    """A checkpoint's state dict: safetensors or a PyTorch .bin, whole or in shards."""
    import json

    from safetensors.torch import load_file

    def one(path: Path) -> dict:
        return (
            load_file(str(path))
            if path.suffix == ".safetensors"
            else torch.load(path, weights_only=True)
        )

    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return one(folder / name)
        if (index := folder / f"{name}.index.json").is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return {k: v for shard in shards for k, v in one(folder / shard).items()}
    raise FileNotFoundError(f"{folder}: no model.safetensors or pytorch_model.bin")


def _short_window(cfg, max_length: int) -> None:
    """Task inputs fit in one window: a Longformer reads them with the smallest window that still
    covers the whole input (window >= 2 x length), which computes the same and costs less."""
    if cfg.model_type == "longformer":
        w = 2 * max_length
        cfg.attention_window = [min(a, w + w % 2) for a in cfg.attention_window]


def finetune(model, examples: list[dict], out_dir: Path, *, batch_size: int, epochs: float, lr: float,
             seed: int, pad_id: int, bf16: bool, desc: str, fast_dropout: bool = True,
             length_buckets: bool = False, packed: bool = True) -> dict:  # fmt: skip
    """Train a task model through the common loop: warmup over the first 10%, then linear decay;
    batches drawn at random, `pack`ed into rows when the model is a BERT (unless `packed` is False),
    or of similar length (`length_buckets`)."""
    packed = (packed and not length_buckets and model.config.model_type == "bert"
              and model.config._attn_implementation in PACKED_ATTENTION)  # fmt: skip
    batches = TaskBatches(examples, batch_size, seed, pad_id,
                          pool=BUCKET_POOL if length_buckets else 1, packed=packed)  # fmt: skip
    steps = max(1, math.ceil(epochs * batches.per_epoch))
    mean_len = float(np.mean([len(e["input_ids"]) for e in examples]))
    fpt = budget.flops_per_token(models.size(model.config), round(mean_len), 0.0)
    tc = train.TrainConfig(
        steps=steps, lr=lr, warmup_steps=max(1, int(0.1 * steps)), bf16=bf16, checkpoints=False,
        log_every=max(1, steps // 10), seed=seed, weight_decay=0.01, tensorboard=False, leave=False,
        flops_per_token=fpt, fast_dropout=fast_dropout,
    )  # fmt: skip
    return train.train(Finetune(model), batches, tc, out_dir, desc=desc, count_tokens=text_tokens)


PREDICT_BATCH = 32  # examples a prediction batch holds (see `predict`)


@torch.no_grad()
def predict(
    model, examples: list[dict], pad_id: int, *, bf16: bool = True, batch_size: int = PREDICT_BATCH
) -> list:
    """Predictions in the examples' order, computed in batches of similar length. Batches of 32
    predicted 500 review texts 1.21x (Mini) and 1.26x (the `cpu` teacher) as fast as batches of 128,
    with the same predictions (medians of 8 alternated rounds, one thread); likely because their
    rows pad less and their activations fit in cache (not profiled)."""
    model.eval()
    device = next(model.parameters()).device
    order = np.argsort([len(e["input_ids"]) for e in examples], kind="stable")
    out: list = [None] * len(examples)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch = collate([examples[i] for i in rows], pad_id)
        labels = batch.pop("labels")
        with train.autocast(device, bf16):
            inputs = with_global(model, {k: v.to(device) for k, v in batch.items()})
            logits = model(**inputs).logits.float().cpu()
        for i, row, lab in zip(rows, logits, labels):
            if logits.dim() == 3:  # tags at the labelled (non-special) positions
                out[i] = row.argmax(-1)[lab != -100].tolist()
            else:
                out[i] = float(row[0]) if logits.shape[-1] == 1 else int(row.argmax())
    return out


# ---------------------------------------------------------------------------------------------
# many fine-tunings side by side


@dataclass(frozen=True)
class Fit:
    """One fine-tuning run: `model` on `task` at rate `lr` with `seed`, trained on the first
    `n_train` training examples (0: all), predicting the splits in `predict`."""

    task: str
    model: str
    lr: float
    seed: int
    predict: tuple[str, ...] = ("test",)
    n_train: int = 0


_SHARED: dict = {}  # what every fit reads, in this process or set once in each worker


class Fitter:
    """Fine-tunings `workers` at a time, each in a process of its own with its share of the cores
    (one pool for every batch of fits handed to it), or one after another in this process:

    >>> with Fitter(shared, workers=2) as fitter:
    ...     done = fitter.run(fits)   # {fit: {"preds": {split: predictions}, "seconds": s}}

    `shared` holds what the fits read: per model its `sources` (a folder or a config) and `task`
    objects, `examples[(task, model)]` (encoded splits), `pad[model]`, `eval_len[task]`, `batch_size`,
    `epochs`, `bf16`, `work` (the folder for the training logs), and optionally `length_buckets`
    (batches of similar length) and, for the benchmarks' other arms, `packed` (False: each example a
    padded row), `attention` (an implementation to use instead of this machine's fastest) and
    `fast_dropout` (False: torch's dropout masks)."""

    def __init__(self, shared: dict, *, workers: int = 1):
        self.shared, self.workers, self.pool = shared, workers, None

    def __enter__(self) -> Fitter:
        if self.workers > 1:
            threads = max(1, (os.cpu_count() or 1) // self.workers)
            with _worker_env(threads):  # the workers start inside it (spawn reads the environment)
                self.pool = ProcessPoolExecutor(
                    max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                    initializer=_init_worker, initargs=(self.shared, threads),
                )  # fmt: skip
                for f in [self.pool.submit(_ready) for _ in range(self.workers)]:
                    f.result()
        else:
            _SHARED.clear()
            _SHARED.update(self.shared)
        return self

    def __exit__(self, *exc) -> None:
        if self.pool:
            self.pool.shutdown(cancel_futures=True)

    def run(self, fits: list[Fit], done: Callable | None = None) -> dict:
        """Every fit; `done(fit, result)` is called as each finishes."""
        out = {}
        if self.pool is None:
            for fit in fits:
                out[fit] = _run(fit)
                if done:
                    done(fit, out[fit])
            return out
        futures = {self.pool.submit(_run, fit): fit for fit in fits}
        for future in as_completed(futures):
            fit = futures[future]
            out[fit] = future.result()
            if done:
                done(fit, out[fit])
        return out


def run_fits(
    fits: list[Fit], shared: dict, *, workers: int = 1, done: Callable | None = None
) -> dict:
    """Every fit in `fits`, with a pool of its own (see `Fitter`)."""
    with Fitter(shared, workers=workers) as fitter:
        return fitter.run(fits, done)


def _ready() -> bool:
    return True


@contextlib.contextmanager
def _worker_env(threads: int):
    """Workers start with `threads` threads (set before torch loads) and keep their progress bars
    to themselves (the caller reports each finished fit)."""
    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "ZH_MINILAB_PROGRESS")}
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ.pop("ZH_MINILAB_PROGRESS", None)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _init_worker(shared: dict, threads: int) -> None:
    torch.set_num_threads(threads)
    _SHARED.update(shared)


def _run(fit: Fit) -> dict:
    s = _SHARED
    data = s["examples"][(fit.task, fit.model)]
    train_rows = data["train"][: fit.n_train] if fit.n_train else data["train"]
    pad, eval_len = s["pad"][fit.model], s["eval_len"][fit.task]
    t0 = time.time()
    model = task_model(
        s["sources"][fit.model], s["tasks"][fit.task], seed=fit.seed, max_length=eval_len
    )
    if s.get("attention"):
        model.set_attn_implementation(s["attention"])
    folder = Path(s["work"]) / fit.model / fit.task / f"n{fit.n_train}-s{fit.seed}-lr{fit.lr:g}"
    finetune(model, train_rows, folder, batch_size=s["batch_size"], epochs=s["epochs"], lr=fit.lr,
             seed=fit.seed, pad_id=pad, bf16=s["bf16"], desc=f"{fit.task} {fit.model}",
             fast_dropout=s.get("fast_dropout", True), length_buckets=s.get("length_buckets", False),
             packed=s.get("packed", True))  # fmt: skip
    preds = {split: predict(model, data[split], pad, bf16=s["bf16"]) for split in fit.predict}
    return {"preds": preds, "seconds": round(time.time() - t0, 2)}
