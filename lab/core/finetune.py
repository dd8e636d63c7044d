"""Fine-tuning a pretrained encoder on a task: batches of similar length, the task model (a standard
head on the encoder, the head swap checked exactly), the loop, and predictions in batches."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from lab.core import train
from lab.core.attention import block_attention


def collate(examples: list[dict], pad_id: int) -> dict:
    width = max(len(e["input_ids"]) for e in examples)
    n = len(examples)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    types = torch.zeros((n, width), dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    tag = isinstance(examples[0]["labels"], list)
    labels = torch.full((n, width), -100, dtype=torch.long) if tag else None
    for b, e in enumerate(examples):
        k = len(e["input_ids"])
        ids[b, :k] = torch.tensor(e["input_ids"])
        mask[b, :k] = 1
        if "token_type_ids" in e:
            types[b, :k] = torch.tensor(e["token_type_ids"])
        if tag:
            labels[b, :k] = torch.tensor(e["labels"])
    if not tag:
        y = [e["labels"] for e in examples]
        labels = torch.tensor(y, dtype=torch.float if isinstance(y[0], float) else torch.long)
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask, "labels": labels}


class TaskBatches:
    """Fine-tuning batches of examples of similar length (little padding), in a seeded order: each
    epoch shuffles, sorts pools of `pool` batches by length, cuts them into batches and shuffles the
    batches. A pure function of (index, rank, world)."""

    def __init__(
        self, examples: list[dict], batch_size: int, seed: int, pad_id: int, pool: int = 50
    ):
        self.examples, self.batch_size, self.seed, self.pad_id, self.pool = (
            examples,
            batch_size,
            seed,
            pad_id,
            pool,
        )
        self.lengths = np.array([len(e["input_ids"]) for e in examples])
        self.per_epoch = math.ceil(len(examples) / batch_size)
        self._order: dict[int, list[np.ndarray]] = {}

    def _batches(self, epoch: int) -> list[np.ndarray]:
        if epoch not in self._order:
            rng = np.random.default_rng([self.seed, epoch])
            perm = rng.permutation(len(self.examples))
            size = self.pool * self.batch_size
            batches = []
            for start in range(0, len(perm), size):
                chunk = perm[start : start + size]
                chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
                batches += [
                    chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)
                ]
            self._order = {epoch: [batches[i] for i in rng.permutation(len(batches))]}
        return self._order[epoch]

    def __call__(self, index: int, rank: int = 0, world: int = 1) -> dict:
        epoch, j = divmod(index * world + rank, self.per_epoch)
        return collate([self.examples[r] for r in self._batches(epoch)[j]], self.pad_id)


class Finetune(torch.nn.Module):
    """A task model whose forward returns {"loss"} for the training loop."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, **batch):
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
    return model


def swap_head(model, folder: Path) -> None:
    """Load a masked-LM checkpoint's encoder into a task model: the MLM head's weights are the only
    ones left over and the task head's (with BERT's pooler, which an MLM has not) the only ones
    missing, or this raises."""
    from safetensors.torch import load_file

    state = load_file(str(folder / "model.safetensors"))
    result = model.load_state_dict(state, strict=False)
    prefix = model.base_model_prefix + "."
    stray = [k for k in result.unexpected_keys if k.startswith(prefix)]
    lost = [k for k in result.missing_keys if k.startswith(prefix) and ".pooler." not in k]
    if stray or lost:
        raise ValueError(
            f"{folder}: the encoder's weights do not fit a {type(model).__name__} "
            f"(missing {lost[:3]}, unexpected {stray[:3]}); is it a model of another architecture?"
        )


def _short_window(cfg, max_length: int) -> None:
    """Task inputs fit in one window: a Longformer reads them with the smallest window that still
    covers the whole input (window >= 2 x length), which computes the same and costs less."""
    if cfg.model_type == "longformer":
        w = 2 * max_length
        cfg.attention_window = [min(a, w + w % 2) for a in cfg.attention_window]


def finetune(model, examples: list[dict], out_dir: Path, *, batch_size: int, epochs: float, lr: float,
             seed: int, pad_id: int, bf16: bool, desc: str) -> dict:  # fmt: skip
    """Train a task model through the common loop: warmup over the first 10%, then linear decay."""
    batches = TaskBatches(examples, batch_size, seed, pad_id)
    steps = max(1, math.ceil(epochs * batches.per_epoch))
    tc = train.TrainConfig(
        steps=steps, lr=lr, warmup_steps=max(1, int(0.1 * steps)), bf16=bf16, checkpoints=False,
        log_every=max(1, steps // 10), seed=seed, weight_decay=0.01, tensorboard=False, leave=False,
    )  # fmt: skip
    return train.train(Finetune(model), batches, tc, out_dir, desc=desc)


@torch.no_grad()
def predict(
    model, examples: list[dict], pad_id: int, *, bf16: bool = True, batch_size: int = 128
) -> list:
    """Predictions in the examples' order, computed in batches of similar length."""
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
