"""Sliding-window attention on CPU as one autograd function over PyTorch's fused flash kernel.

Queries go in blocks of w = window / 2 tokens; each block attends to the g global tokens, then to the
keys of its own block and the blocks on either side, under a band mask (`lab.core.attention` builds
the mask and owns the semantics; this module only computes it). Autograd through
`F.scaled_dot_product_attention` would keep the windowed (3x) copies of the keys and values, or,
checkpointed, run the attention's forward twice. `BandAttention` keeps q, k, v, the output and the
kernel's log-sum-exp, rebuilds a few blocks' windows at a time in backward and hands them to the
kernel's own backward: no forward recomputed, no windowed copy held longer than a chunk of blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

CHUNK = 1024  # query tokens whose windows exist at once, forward and backward


@dataclass
class Layout:
    """Where the blocks of one layer's input lie: w tokens a block, n blocks, the (B, g) positions
    of the global tokens (`at`; a slot of a row with fewer global tokens points at a token that is
    not one), the (B * n, 1, w, g + 3w) mask of allowed keys, the (B, T) global tokens (their rows
    of the output are theirs, not the band's) and the (B, T) padded positions (rows of zeros)."""

    w: int
    n: int
    heads: int
    at: torch.Tensor
    mask: torch.Tensor
    glob: torch.Tensor
    pad: torch.Tensor

    def chunks(self):
        step = max(1, CHUNK // self.w)
        return [(j, min(j + step, self.n)) for j in range(0, self.n, step)]


def windows(x, first, w: int, j0: int, j1: int) -> torch.Tensor:
    """(B, j1 - j0, g + 3w, C): for blocks j0..j1 of `x` (B, n, w, C), the g rows of `first`
    (B, g, C), then the block before, the block itself and the block after (zeros past the ends)."""
    b, n, _, c = x.shape
    g = first.shape[1]
    out = x.new_zeros(b, j1 - j0, g + 3 * w, c)
    out[:, :, :g] = first[:, None]
    for s, shift in enumerate((-1, 0, 1)):
        lo, hi = max(j0 + shift, 0), min(j1 + shift, n)
        out[:, lo - shift - j0 : hi - shift - j0, g + s * w : g + (s + 1) * w] = x[:, lo:hi]
    return out


def fold(dw, dx, dfirst, w: int, j0: int, j1: int) -> None:
    """The adjoint of `windows`: adds the gradient of a window tensor into `dx` (B, n, w, C) and
    `dfirst` (B, g, C)."""
    n, g = dx.shape[1], dfirst.shape[1]
    dfirst += dw[:, :, :g].sum(1, dtype=dfirst.dtype)
    for s, shift in enumerate((-1, 0, 1)):
        lo, hi = max(j0 + shift, 0), min(j1 + shift, n)
        dx[:, lo:hi] += dw[:, lo - shift - j0 : hi - shift - j0, g + s * w : g + (s + 1) * w]


def _wide(dtype) -> torch.dtype:  # the kernel's accumulation type: float32, or float64 for float64
    return torch.promote_types(dtype, torch.float32)


def _bias(mask, dtype) -> torch.Tensor:  # the kernel takes an additive mask in the query's dtype
    return torch.zeros(mask.shape, dtype=dtype).masked_fill_(~mask, float("-inf"))


def _heads(x, heads: int) -> torch.Tensor:  # (B, m, L, E) -> (B * m, heads, L, d)
    b, m, length, e = x.shape
    return x.reshape(b * m, length, heads, e // heads).transpose(1, 2)


def _tokens(x, b: int) -> torch.Tensor:  # (B * m, heads, w, d) -> (B, m, w, E)
    bm, heads, w, d = x.shape
    return x.transpose(1, 2).reshape(b, bm // b, w, heads * d)


class BandAttention(torch.autograd.Function):
    """out (B, T, E): the band's attention of q, k, v (B, T, E), T a multiple of w, with the rows of
    the global tokens taken from `og` (B, g, E), what they computed attending to every token.
    Written into the band's output, not beside it, the rows cost no further copy of the sequence
    (the next layer keeps the very tensor saved here)."""

    @staticmethod
    def forward(ctx, q, k, v, og, layout: Layout):
        b, t, e = q.shape
        w, n, heads = layout.w, layout.n, layout.heads
        qs, ks, vs = (x.view(b, n, w, e) for x in (q, k, v))
        kg, vg = (x.gather(1, layout.at[:, :, None].expand(-1, -1, e)) for x in (k, v))
        out = q.new_empty(b, n, w, e)
        lse = q.new_empty(b, n, heads, w, dtype=_wide(q.dtype))
        masks = _bias(layout.mask, q.dtype).view(b, n, 1, w, -1)
        for j0, j1 in layout.chunks():
            o, m = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                _heads(qs[:, j0:j1], heads),
                _heads(windows(ks, kg, w, j0, j1), heads),
                _heads(windows(vs, vg, w, j0, j1), heads),
                attn_mask=masks[:, j0:j1].reshape(-1, *masks.shape[2:]),
            )
            out[:, j0:j1] = _tokens(o, b)
            lse[:, j0:j1] = m.view(b, j1 - j0, heads, w)
        out = out.view(b, t, e).masked_fill_(layout.pad[:, :, None], 0.0)
        index = layout.at[:, :, None].expand(-1, -1, e)
        real = layout.glob.gather(1, layout.at)[:, :, None]
        out.scatter_(1, index, torch.where(real, og.to(out.dtype), out.gather(1, index)))
        ctx.layout = layout
        ctx.save_for_backward(q, k, v, out, lse, masks)
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, out, lse, masks = ctx.saved_tensors
        layout = ctx.layout
        b, t, e = q.shape
        w, n, heads, at = layout.w, layout.n, layout.heads, layout.at
        qs, ks, vs, os = (x.view(b, n, w, e) for x in (q, k, v, out))
        index = at[:, :, None].expand(-1, -1, e)
        dog = grad.gather(1, index) * layout.glob.gather(1, at)[:, :, None]
        gs = (
            grad.masked_fill((layout.pad | layout.glob)[:, :, None], 0.0)
            .to(q.dtype)
            .view(b, n, w, e)
        )
        kg, vg = (x.gather(1, at[:, :, None].expand(-1, -1, e)) for x in (k, v))
        dq = torch.empty_like(qs)
        # a key's gradient sums three windows in its own dtype, as autograd through the windows'
        # copies would; a global key's sums every block's, in at least float32
        dk, dv = (torch.zeros_like(qs) for _ in range(2))
        dkg, dvg = (torch.zeros(b, at.shape[1], e, dtype=_wide(q.dtype)) for _ in range(2))
        for j0, j1 in layout.chunks():
            dqb, dkb, dvb = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
                _heads(gs[:, j0:j1], heads),
                _heads(qs[:, j0:j1], heads),
                _heads(windows(ks, kg, w, j0, j1), heads),
                _heads(windows(vs, vg, w, j0, j1), heads),
                _heads(os[:, j0:j1], heads),
                lse[:, j0:j1].reshape(-1, heads, w),
                0.0,
                False,
                attn_mask=masks[:, j0:j1].reshape(-1, *masks.shape[2:]),
            )
            dq[:, j0:j1] = _tokens(dqb, b)
            fold(_tokens(dkb, b), dk, dkg, w, j0, j1)
            fold(_tokens(dvb, b), dv, dvg, w, j0, j1)
        dk, dv = (x.view(b, t, e) for x in (dk, dv))
        dk.scatter_add_(1, index, dkg.to(dk.dtype))
        dv.scatter_add_(1, index, dvg.to(dv.dtype))
        return dq.view(b, t, e), dk, dv, dog, None
