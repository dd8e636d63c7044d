"""Masked-LM pieces shared by pretraining, distillation, longify and evaluation.

`MaskedLM` computes the vocabulary projection only at masked positions (about 15% of the tokens),
which on a CPU is most of the training step saved. `PackedBatches` serves packed sequences in a
seeded order and masks them with a seeded collator, so a batch is a pure function of its index.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lab.core.attention import block_attention, locality_bias, padded_uncompiled, with_bias
from lab.core.masking import static_copies


class MaskedLM(nn.Module):
    """Wraps a `BertForMaskedLM` (or `LongformerForMaskedLM`): forward returns the MLM loss
    computed on masked positions only, and the masked-token accuracy. `fused_loss` (set by
    `train.compile_encoders`) computes that loss with `MaskedCE`'s compiled kernels."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.fused_loss = False

    def encoder(self):
        return getattr(self.model, self.model.base_model_prefix)

    def head(self):
        return self.model.cls if hasattr(self.model, "cls") else self.model.lm_head

    def forward(self, input_ids, attention_mask=None, labels=None, attention_bias=None, **kwargs):
        chosen = labels != -100
        with padded_uncompiled(self, attention_mask):
            if not (hasattr(self.model, "cls") or hasattr(self.model, "lm_head")):
                # another architecture's head (ALBERT's, ModernBERT's): the model's own full forward
                logits = self.model(
                    input_ids=input_ids, attention_mask=attention_mask, **kwargs
                ).logits[chosen]
            else:
                attention_mask = with_bias(attention_mask, attention_bias)
                hidden = self.encoder()(
                    input_ids=input_ids, attention_mask=attention_mask, **kwargs
                )[0]
                logits = self.head()(hidden[chosen])  # (N, V): only the masked positions
        loss, acc, _ = MaskedCE.apply(logits, labels[chosen], self.fused_loss)
        return {"loss": loss, "acc": acc}


def _ce_rows(logits, target):
    """Per row of logits (N, V) against targets (N,): log-sum-exp, the target's logit, and
    whether the target is a top-1 prediction; in float32."""
    z = logits.float()
    lse = torch.logsumexp(z, -1)
    picked = z.gather(1, target[:, None])[:, 0]
    return lse, picked, (picked >= z.amax(-1)).float()


def _ce_grad(logits, target, lse, scale, columns=None, grad_columns=None):
    """The gradient of the mean cross-entropy times `scale`: (softmax - one-hot) * scale, plus
    `grad_columns` (N, k) added at `columns` (N, k), in float32 before the cast to the logits' dtype."""
    p = torch.exp(logits.float() - lse[:, None])
    hit = torch.arange(logits.shape[1], device=logits.device) == target[:, None]
    grad = (p - hit.float()) * scale
    if columns is not None:
        grad = grad.scatter_add(1, columns, grad_columns.float())
    return grad.to(logits.dtype)


@functools.cache
def _fused(fn):
    """`fn` compiled, once per process."""
    return torch.compile(fn, dynamic=True)


class MaskedCE(torch.autograd.Function):
    """Mean cross-entropy and top-1 accuracy (a target tied with the largest logit counts as right;
    in bfloat16 ties are not rare) of logits (N, V) against targets (N,), in float32:
    the loss and gradient of `F.cross_entropy(logits.float(), target)` without an (N, V) float32
    copy of the logits (on a CPU, memory traffic is most of this part of the step).

    Eagerly, a chunk of rows at a time; with `fused`, forward and backward are each one compiled
    kernel over all rows (`_ce_rows`, `_ce_grad`), which reads the logits once (2-3x faster than
    the chunks on a CPU at 600 x 21,128). Call it with `fused` only where `torch.compile` runs
    (`hardware.compiler()`).

    `columns` (N, k) vocabulary ids, or None: the third output is those logits of each row in float32
    (a distillation target's top k, `kd.Distiller`), and backward adds their gradient to the
    cross-entropy's in float32 as it goes, where autograd's gather would scatter it into an (N, V)
    tensor of zeros of its own and add that in the logits' dtype (on a CPU a bfloat16 scatter
    converts the whole tensor to float32 and back). Returns (loss, accuracy, those logits or an
    empty tensor)."""

    ROWS = 64  # rows per chunk: 64 x a 21,128-token vocabulary in float32 is 5 MB

    @staticmethod
    def forward(ctx, logits, target, fused=False, columns=None):
        ctx.fused = fused
        if fused:
            lse, picked, right = _fused(_ce_rows)(logits, target)
        else:
            lse, picked, right = (torch.empty(len(logits), device=logits.device) for _ in "abc")
            for s in range(0, len(logits), MaskedCE.ROWS):
                rows = slice(s, s + MaskedCE.ROWS)
                z = logits[rows].float()
                lse[rows] = torch.logsumexp(z, -1)
                picked[rows] = z.gather(1, target[rows, None])[:, 0]
                right[rows] = (picked[rows] >= z.amax(-1)).float()
        ctx.save_for_backward(logits, target, lse, columns)
        acc = right.mean()
        if columns is None:
            at_columns = logits.new_empty(0, dtype=torch.float32)
            ctx.mark_non_differentiable(acc, at_columns)
        else:
            at_columns = logits.gather(1, columns).float()
            ctx.mark_non_differentiable(acc)
        return (lse - picked).mean(), acc, at_columns

    @staticmethod
    def backward(ctx, grad, _, grad_columns):
        logits, target, lse, columns = ctx.saved_tensors
        scale = grad / len(logits)
        if columns is None:
            grad_columns = None
        if ctx.fused:
            out = _fused(_ce_grad)(logits, target, lse, scale, columns, grad_columns)
            return out, None, None, None
        out = torch.empty_like(logits)
        for s in range(0, len(logits), MaskedCE.ROWS):
            rows = slice(s, s + MaskedCE.ROWS)
            p = torch.exp(logits[rows].float() - lse[rows, None])
            p[torch.arange(p.shape[0], device=p.device), target[rows]] -= 1
            p.mul_(scale)
            if columns is not None:
                p.scatter_add_(1, columns[rows], grad_columns[rows].float())
            out[rows] = p
        return out, None, None, None


class LocalityWarmup:
    """Wraps a batch source: adds `locality_bias` scaled from 1 at step 0 linearly down to 0 at
    `steps` optimizer steps; later batches pass through unchanged, or with `hold` carry a bias of
    zeros: a compiled model then keeps the graph the warm-up compiled, where a batch without the
    bias would compile a second one (13 s on the `cpu` teacher with an empty compiler cache, against
    0.33 s a step). There, compiled on a CPU, the zeros cost less than that A/B resolves: the step
    ran 0.996x the tokens/s it runs without a bias (8 alternated rounds of 40 steps, rounds
    0.965-1.049x; a 1% cost over the `cpu` profile's 1,200 steps after the warm-up would be 4 s).
    The stages hold only there (`train.compiles_on_cpu`): on a GPU a float mask keeps attention off
    its flash kernel. Still a pure function of the batch index (resume-safe)."""

    def __init__(self, batches, *, heads: int, slope: float, steps: int, grad_accum: int = 1,
                 hold: bool = False):  # fmt: skip
        self.batches, self.heads, self.slope = batches, heads, slope
        self.steps, self.grad_accum, self.hold = steps, grad_accum, hold

    def __getattr__(self, name):  # anything else (epochs, ...) is the wrapped source's
        if name == "batches":
            raise AttributeError(name)
        return getattr(self.batches, name)

    def scale(self, index: int) -> float:
        return max(0.0, 1.0 - (index // self.grad_accum) / max(1, self.steps))

    def __call__(self, index: int, rank: int = 0, world: int = 1) -> dict:
        batch = self.batches(index, rank, world)
        s = self.scale(index)
        if self.slope > 0 and (s > 0 or self.hold):
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


class StaticMasks(PackedBatches):
    """Static masking (UER's and the distillation recipe's `dupe_factor`): fixed maskings per sequence,
    cycled by epoch."""

    def __init__(self, *args, dupe_factor: int, **kwargs):
        super().__init__(*args, **kwargs)
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


def load(folder: Path, attn: str | None = None):
    """A model folder's MLM; `attn="eager"` where attention weights are wanted (BERT only: a
    Longformer has its own attention, and otherwise runs the lab's block attention)."""
    from transformers import AutoConfig, AutoModelForMaskedLM

    kind = AutoConfig.from_pretrained(str(folder)).model_type
    kwargs = {"attn_implementation": attn} if attn and kind == "bert" else {}
    model = AutoModelForMaskedLM.from_pretrained(str(folder), **kwargs)
    if kind == "longformer" and not attn:
        block_attention(model)
    return model
