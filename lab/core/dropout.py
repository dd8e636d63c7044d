"""Dropout whose mask costs a quarter of the random numbers.

On a CPU, `F.dropout` draws one random number per element (`bernoulli_`), and in an eager
fine-tuning step of a small BERT the masks took 15% of the time (`torch.profiler`, one thread).
`dropout` draws one 64-bit integer per four elements and keeps an element where its 16 bits are at
or above p x 65,536: a Bernoulli mask whose drop probability is round(65,536 p) / 65,536 (for
p = 0.1, 0.1000061), scaled to keep the expectation. `install` puts it into a model's dropout
layers and, through transformers' attention registry, into its attention weights. On a GPU torch's
fused dropout is one kernel with a boolean mask, so the training loop installs this on CPUs only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LEVELS = 1 << 16


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """`x` with each element zeroed with probability p (to 1 / 65,536) and the rest scaled by
    1 / (1 - p); the default generator of `x`'s device, so `torch.manual_seed` repeats it."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    cut = round(p * LEVELS)
    if not training or cut == 0:  # p under 1 / 131,072 drops nothing
        return x
    if cut == LEVELS:
        return x * 0.0
    return _Masked.apply(x, cut)


class _Masked(torch.autograd.Function):
    """x times a mask of zeros and 1 / (1 - p) in x's dtype, kept for backward: one multiply each
    way (a boolean mask, or `torch.where`, costs a conversion or a select on top; measured 1.5-2 ms
    against 3.1-3.8 ms for torch's dropout, forward and backward of 0.5 M elements, one thread)."""

    @staticmethod
    def forward(ctx, x, cut: int):
        n = x.numel()
        bits = torch.randint(-(2**63), 2**63 - 1, (n // 4 + 1,), dtype=torch.int64, device=x.device)
        keep = bits.view(torch.int16)[:n].view(x.shape) >= cut - LEVELS // 2
        mask = keep.to(x.dtype).mul_(LEVELS / (LEVELS - cut))
        ctx.save_for_backward(mask)
        return x * mask

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return grad * mask, None


class Dropout(nn.Dropout):
    """`nn.Dropout` through `dropout` (same parameters and state dict)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


NAME = "lab_eager"  # transformers' eager attention with its weights dropped out by `dropout`


def install(module: nn.Module) -> int:
    """Every `nn.Dropout` inside `module` computes through `dropout` (the class swapped in place:
    same parameters, same state dict), and each transformers model in it running the eager
    attention runs `NAME`, which drops its attention weights the same way; how many layers."""
    from transformers import AttentionInterface, PreTrainedModel
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    count = 0
    for m in module.modules():
        if type(m) is nn.Dropout:
            m.__class__ = Dropout
            count += 1
        eager = isinstance(m, PreTrainedModel) and m.config._attn_implementation == "eager"
        if (
            eager and type(m)._can_set_attn_implementation()
        ):  # (a Longformer's attention is its own)
            if NAME not in AttentionInterface._global_mapping:  # with the eager attention's mask
                AttentionInterface.register(NAME, eager_attention)
                AttentionMaskInterface.register(NAME, ALL_MASK_ATTENTION_FUNCTIONS["eager"])
            m.set_attn_implementation(NAME)
    return count


def eager_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **_):
    """transformers' `eager_attention_forward` (BERT's), step for step, but for the dropout."""
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = _dropout(F.softmax(weights, dim=-1), dropout, module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


_dropout = dropout  # the argument named dropout above shadows the function
