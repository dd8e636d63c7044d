"""Embedding lookups whose backward adds the looked-up rows with `index_add_`.

Compiled by inductor for a CPU, an embedding's backward zeroes the table's gradient and adds each
looked-up row into it element by element with atomic adds. A BERT's position and token-type tables
are looked up at every token (4,096 tokens a step, 256 wide, all token types on one row), so those
atomics contend: the kernel that held them took 19 ms of a 310 ms step (Mini, 21,128 tokens).
`Lookup` keeps the forward (`F.embedding`) and hands the backward to one opaque operator,
`lab::row_grads`, which runs PyTorch's own `index_add_` (vectorised rows, no atomics on a CPU).
`train.compile_encoders` installs it in a model on a CPU before compiling it (on a GPU the
compiled backward is left as it is: unmeasured there); weights, state dict keys and gradients are
unchanged (`tests/test_train.py`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


@torch.library.custom_op("lab::row_grads", mutates_args=())
def row_grads(grad: torch.Tensor, ids: torch.Tensor, rows: int, padding_idx: int) -> torch.Tensor:
    """The gradient of an embedding table of `rows` rows: `grad`'s vectors added at `ids`; the
    `padding_idx` row (-1: none) gets none, as `F.embedding` gives it none."""
    width = grad.shape[-1]
    out = grad.new_zeros(rows, width).index_add_(0, ids.reshape(-1), grad.reshape(-1, width))
    if padding_idx >= 0:
        out[padding_idx] = 0
    return out


@row_grads.register_fake
def _(grad, ids, rows, padding_idx):
    return grad.new_empty(rows, grad.shape[-1])


class _Rows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight, ids, padding_idx):
        ctx.save_for_backward(ids)
        ctx.rows, ctx.padding_idx = weight.shape[0], padding_idx
        return F.embedding(ids, weight)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (ids,) = ctx.saved_tensors
        return row_grads(grad, ids, ctx.rows, ctx.padding_idx), None, None


class Lookup(nn.Embedding):
    """`nn.Embedding` whose backward is `row_grads` (same parameters and state dict)."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        plain = self.max_norm is None and not self.sparse and not self.scale_grad_by_freq
        if not plain:
            return super().forward(ids)
        return _Rows.apply(self.weight, ids, -1 if self.padding_idx is None else self.padding_idx)


def install(module: nn.Module) -> int:
    """Every `nn.Embedding` inside `module` looks up through `Lookup` (the class swapped in place);
    how many."""
    count = 0
    for m in module.modules():
        if type(m) is nn.Embedding:
            m.__class__ = Lookup
            count += 1
    return count
