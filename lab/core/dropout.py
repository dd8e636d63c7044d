"""Dropout whose mask costs a quarter of the random numbers.

On a CPU, `F.dropout` draws one random number per element (`bernoulli_`), and in an eager
fine-tuning step of a small BERT the masks took 15% of the time (`torch.profiler`, one thread).
`dropout` draws one 64-bit integer per four elements and keeps an element where its 16 bits are at
or above p x 65,536: a Bernoulli mask whose drop probability is round(65,536 p) / 65,536 (for
p = 0.1, 0.1000061), scaled to keep the expectation. Compiled, the draws, read as 32-bit integers,
give the first half of the elements their low 16 bits and the second half their high 16 bits, so
that a compiled step reads both halves in order, in vector registers; the mask is kept as bytes
(see `_Masked`). In the pretraining bench, dropout 0.1 then costs the compiled loop 1.05-1.11x against
dropout 0 (`dropout0_vs_lab`; 1.11-1.16x with the int16 fields and the bf16 mask before), most of
it the random draws themselves (inductor's Philox, about 6 ns a 64-bit draw: 27 ms of a 440 ms
step). Run eagerly (fine-tuning, which does not compile), it reads the same draws as 16-bit fields
in order and makes the mask with one comparison, whose boolean it reads as bytes: two kernels make
the mask where the shifts take seven, in up to half the time (`_EagerMasked`).
`install` puts it into a model's dropout layers and, through transformers' attention
registry, into its attention weights. On a GPU torch's fused dropout is one kernel with a boolean
mask, so the training loop installs this on CPUs only.
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
    return (_Masked if torch.compiler.is_compiling() else _EagerMasked).apply(x, cut)


def _draws(x: torch.Tensor) -> torch.Tensor:
    """One uniform 64-bit integer per four elements of `x`, from its device's default generator."""
    n = (x.numel() + 3) // 4
    return torch.randint(-(2**63), 2**63 - 1, (n,), dtype=torch.int64, device=x.device)


class _Masked(torch.autograd.Function):
    """x times its mask scaled by 1 / (1 - p); the mask is kept for backward as one byte an element.

    No comparison makes the mask: a comparison gives a boolean, and inductor's CPU kernels store and
    load booleans slowly (copying 2.1 M of them took 7.5 ms against 0.16 ms for bfloat16; a
    softmax times a boolean mask, 2.3 ms against 1.1 ms for a byte mask). The sign of field - cut
    decides instead: an arithmetic shift by 31 gives -1 below the cut and 0 at or above it."""

    @staticmethod
    def forward(ctx, x, cut: int):
        n = x.numel()
        half = (n + 1) // 2
        words = _draws(x)
        shifts = torch.tensor([[0], [16]], dtype=torch.int32, device=x.device)
        fields = (words.view(torch.int32)[:half] >> shifts) & (LEVELS - 1)  # (2, half), uniform
        keep = (((fields - cut) >> 31) + 1).to(torch.uint8)  # 1 where field >= cut, else 0
        keep = keep.view(-1)[:n].view(x.shape)
        ctx.scale = LEVELS / (LEVELS - cut)
        ctx.save_for_backward(keep)
        return x * keep * ctx.scale  # one rounding: the scale in float, as torch's dropout

    @staticmethod
    def backward(ctx, grad):
        (keep,) = ctx.saved_tensors
        return grad * keep * ctx.scale, None


class _EagerMasked(_Masked):
    """`_Masked` for eager mode: element i keeps where the i-th 16-bit field of the draws, read as a
    signed integer, is at or above cut - 32,768. The comparison's boolean is viewed as bytes (no
    copy) and kept for `_Masked.backward`. Eagerly, the shifts' layout costs a fine-tuning step's
    dropout up to twice the time: 2.2 ms against 1.1 ms forward and backward at (23, 64, 256) in
    bf16, 1.9 against 1.1-1.4 ms at the attention weights' (23, 4, 64, 64) in float32 (one
    thread)."""

    @staticmethod
    def forward(ctx, x, cut: int):
        fields = _draws(x).view(torch.int16)[: x.numel()]  # uniform on [-32,768, 32,767]
        keep = torch.ge(fields, cut - LEVELS // 2).view(torch.uint8).view(x.shape)
        ctx.scale = LEVELS / (LEVELS - cut)
        ctx.save_for_backward(keep)
        return x * keep * ctx.scale


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
