"""Masked-LM pieces shared by pretraining, distillation, longify and evaluation.

`MaskedLM` computes the vocabulary projection only at masked positions (about 15% of the tokens),
which on a CPU is most of the training step saved. `PackedBatches` serves packed sequences in a
seeded order and masks them with a seeded collator, so a batch is a pure function of its index.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class MaskedLM(nn.Module):
    """Wraps a `BertForMaskedLM` (or `LongformerForMaskedLM`): forward returns the MLM loss
    computed on masked positions only, and the masked-token accuracy."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def encoder(self):
        return getattr(self.model, self.model.base_model_prefix)

    def head(self):
        return self.model.cls if hasattr(self.model, "cls") else self.model.lm_head

    def forward(self, input_ids, attention_mask=None, labels=None, attention_bias=None, **kwargs):
        attention_mask = with_bias(attention_mask, attention_bias)
        hidden = self.encoder()(input_ids=input_ids, attention_mask=attention_mask, **kwargs)[
            0
        ]  # (B, T, H)
        chosen = labels != -100
        logits = self.head()(hidden[chosen])  # (N, V): only the masked positions
        target = labels[chosen]
        loss = F.cross_entropy(logits.float(), target)
        acc = (logits.argmax(-1) == target).float().mean()
        return {"loss": loss, "acc": acc.detach()}


def with_bias(attention_mask, attention_bias):
    """The attention mask to hand a model: None for a packed batch without padding (attention then
    takes its unmasked fast path); with an additive `attention_bias` (B or 1, heads, T, T), the bias,
    with padded keys blocked."""
    if attention_mask is not None and bool(attention_mask.all()):
        attention_mask = None
    if attention_bias is None:
        return attention_mask
    if attention_mask is not None:
        blocked = attention_mask[:, None, None, :] == 0
        attention_bias = attention_bias.masked_fill(blocked, torch.finfo(attention_bias.dtype).min)
    return attention_bias


def locality_bias(length: int, heads: int, slope: float) -> torch.Tensor:
    """ALiBi-style additive attention bias (1, heads, T, T): -slope / 2^h * |i - j| for head h.

    From random initialisation, attention is uniform and the position embeddings get too little
    signal to learn where a token's neighbours are; masked-LM training then sits on the unigram
    plateau (every [MASK] predicted as '，' or '的') for millions of tokens. Adding this bias while
    training starts, and annealing it to zero, lets the model use its neighbours at once and learn
    to find them through its own weights; the trained model is plain BERT."""
    pos = torch.arange(length, dtype=torch.float32)
    distance = (pos[:, None] - pos[None, :]).abs()
    slopes = slope / 2 ** torch.arange(heads, dtype=torch.float32)
    return -(slopes[:, None, None] * distance)[None]


class LocalityWarmup:
    """Wraps a batch source: adds `locality_bias` scaled from 1 at step 0 linearly down to 0 at
    `steps` optimizer steps; later batches pass through unchanged. Still a pure function of the
    batch index (resume-safe)."""

    def __init__(self, batches, *, heads: int, slope: float, steps: int, grad_accum: int = 1):
        self.batches, self.heads, self.slope = batches, heads, slope
        self.steps, self.grad_accum = steps, grad_accum

    def __getattr__(self, name):  # anything else (epochs, ...) is the wrapped source's
        if name == "batches":
            raise AttributeError(name)
        return getattr(self.batches, name)

    def scale(self, index: int) -> float:
        return max(0.0, 1.0 - (index // self.grad_accum) / max(1, self.steps))

    def __call__(self, index: int, rank: int = 0, world: int = 1) -> dict:
        batch = self.batches(index, rank, world)
        s = self.scale(index)
        if s > 0 and self.slope > 0:
            batch["attention_bias"] = locality_bias(
                batch["input_ids"].shape[1], self.heads, self.slope * s
            )
        return batch


class PackedBatches:
    """Batch `index` of a packed dataset for process `rank` of `world`: a seeded permutation per
    epoch, then the collator reseeded from (seed, index, rank). Same arguments, same batch."""

    def __init__(
        self, input_ids: np.ndarray, word_ids: np.ndarray, collator, batch_size: int, seed: int
    ):
        self.input_ids = input_ids
        self.word_ids = word_ids
        self.collator = collator
        self.batch_size = batch_size
        self.seed = seed
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {
                epoch: np.random.default_rng([self.seed, epoch]).permutation(len(self.input_ids))
            }
        return self._perms[epoch]

    def indices(self, index: int, rank: int = 0, world: int = 1) -> np.ndarray:
        n = len(self.input_ids)
        start = (index * world + rank) * self.batch_size
        positions = np.arange(start, start + self.batch_size)
        out = np.empty(self.batch_size, dtype=np.int64)
        for epoch in np.unique(positions // n):
            sel = positions // n == epoch
            out[sel] = self._perm(int(epoch))[positions[sel] % n]
        return out

    def __call__(self, index: int, rank: int = 0, world: int = 1) -> dict:
        rows = self.indices(index, rank, world)
        self.collator.reseed([self.seed, index, rank])
        examples = [{"input_ids": self.input_ids[i], "word_ids": self.word_ids[i]} for i in rows]
        return self.collator(examples)

    def epochs(self, steps: int, world: int = 1) -> float:
        return steps * world * self.batch_size / len(self.input_ids)


def load_packed(folder, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, word_ids) of a packed split as (N, L) int32 arrays."""
    from datasets import load_from_disk

    ds = load_from_disk(str(folder))[split]
    table = ds.data.table
    cols = []
    for name in ("input_ids", "word_ids"):
        col = table.column(name).combine_chunks()
        cols.append(col.values.to_numpy(zero_copy_only=False).reshape(len(ds), -1).astype(np.int64))
    return cols[0], cols[1]


@torch.no_grad()
def evaluate(model, input_ids: np.ndarray, word_ids: np.ndarray, tokenizer, *, batch_size: int = 64,
             seed: int = 0, whole_word: bool = False, mlm_probability: float = 0.15) -> dict:  # fmt: skip
    """Held-out masked-token accuracy, loss and perplexity with a fixed masking (token-level by
    default: the issue's yardstick), on every sequence given."""
    from lab.wwm import WholeWordMaskCollator

    collator = WholeWordMaskCollator(
        tokenizer, mlm_probability=mlm_probability, seed=seed, whole_word=whole_word
    )
    module = model if isinstance(model, MaskedLM) else MaskedLM(model)
    device = next(module.parameters()).device
    total_loss = total_correct = total = 0.0
    for start in range(0, len(input_ids), batch_size):
        collator.reseed([seed, start])
        batch = collator(
            [
                {"input_ids": input_ids[i], "word_ids": word_ids[i]}
                for i in range(start, min(start + batch_size, len(input_ids)))
            ]
        )
        batch = {k: v.to(device) for k, v in batch.items()}
        out = module(**batch)
        n = int((batch["labels"] != -100).sum())
        total_loss += float(out["loss"]) * n
        total_correct += float(out["acc"]) * n
        total += n
    loss = total_loss / max(1, total)
    return {
        "loss": loss,
        "acc": total_correct / max(1, total),
        "ppl": math.exp(min(loss, 50)),
        "masked": int(total),
    }
