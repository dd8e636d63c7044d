"""Attention pieces: the locality warm-up bias, and sliding-window attention computed block by block.

`block_attention` makes a `LongformerForMaskedLM` (or any Longformer) run its sliding window through
PyTorch's fused attention; `dense_longformer` lays a Longformer layer's banded attention maps out as a
full matrix for viewing.
"""

from __future__ import annotations

import contextlib
import types

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from lab.core import band


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


UNCOMPILED_PADDED = 8  # padded batches a compiled encoder runs uncompiled before it compiles them


def padded_uncompiled(owner, attention_mask) -> contextlib.AbstractContextManager:
    """The context to call compiled encoders in for this batch: uncompiled when the batch has
    padded rows and is one of the first `UNCOMPILED_PADDED` such batches `owner` has seen.

    In packed data only the corpus's last row is short, so a padded batch comes once an epoch.
    Compiled, it would build a second graph for that one step (the padding mask is an input the
    first graph does not take): 12-18 s on the `cpu` teacher with an empty compiler cache, where
    the step took 0.32-0.33 s uncompiled, as long as a compiled one. A source whose batches keep
    arriving padded gets its graph compiled from the ninth on. Torch before 2.6 (no compiler
    stance) compiles as before."""
    stance = getattr(torch.compiler, "set_stance", None)
    if stance is None or attention_mask is None or bool(attention_mask.all()):
        return contextlib.nullcontext()
    seen = getattr(owner, "padded_batches", 0)
    owner.padded_batches = seen + 1
    return stance("force_eager") if seen < UNCOMPILED_PADDED else contextlib.nullcontext()


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


def block_attention(long) -> None:
    """Compute each layer's sliding-window attention block by block with
    `F.scaled_dot_product_attention`: every block of w = window/2 queries attends to the keys of
    its own and both neighbouring blocks under a band mask, plus the global tokens. The function is
    transformers' (tested against it, values and gradients), without its chunk copies and with 3w
    scores per query where its chunks compute 4w; weights and what `save_pretrained` writes are
    unchanged, and `output_attentions=True` runs transformers' own code (the viewer needs its maps).
    The model no longer pads every input to a multiple of the window (a 64-token input padded to 512
    costs eight times its own work in every layer); each layer pads only as far as its blocks need.
    Nor does it build a (B, 1, T, T) padding mask to keep its first row (see `_first_row_mask`)."""
    from transformers.models.longformer import modeling_longformer

    modeling_longformer.create_bidirectional_mask = _first_row_mask
    base = long.base_model
    base._pad_to_window_size = types.MethodType(_no_window_padding, base)
    for layer in base.encoder.layer:
        layer.attention.self.forward = types.MethodType(_block_forward, layer.attention.self)


def _first_row_mask(config, inputs_embeds, attention_mask, **kwargs):
    """transformers 5's `LongformerModel` asks `create_bidirectional_mask` for the (B, 1, T, T) mask
    and keeps its first row (B, T): at 16,384 tokens a GB and a second of every forward, quadratic in a
    model whose attention is linear. This builds that row alone, with the same function, by asking
    for one query against the T keys: (B, 1, 1, T), equal to the row (tested). Installed in the
    Longformer module by `block_attention`, so it serves every Longformer in the process."""
    from transformers.masking_utils import create_bidirectional_mask

    return create_bidirectional_mask(
        config=config, inputs_embeds=inputs_embeds[:, :1], attention_mask=attention_mask,
        encoder_hidden_states=inputs_embeds, **kwargs,
    )  # fmt: skip


def _no_window_padding(self, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                       pad_token_id):  # fmt: skip
    return 0, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds


def _pad_sequence(
    multiple: int, hidden_states, attention_mask, is_index_masked, is_index_global_attn
):
    """Pad one layer's inputs along the sequence with masked positions to a multiple of `multiple`."""
    r = -hidden_states.shape[1] % multiple
    if r:
        hidden_states = F.pad(hidden_states, (0, 0, 0, r))
        attention_mask = F.pad(attention_mask, (0, r), value=torch.finfo(attention_mask.dtype).min)
        is_index_masked = F.pad(is_index_masked, (0, r), value=True)
        is_index_global_attn = F.pad(is_index_global_attn, (0, r), value=False)
    return hidden_states, attention_mask, is_index_masked, is_index_global_attn


def _block_forward(self, hidden_states, attention_mask=None, is_index_masked=None,
                   is_index_global_attn=None, is_global_attn=None, output_attentions=False):  # fmt: skip
    length = hidden_states.shape[1]
    w, heads, d = self.one_sided_attn_window_size, self.num_heads, self.head_dim
    if output_attentions:  # transformers' code, on an input padded as it expects
        padded = _pad_sequence(2 * w, hidden_states, attention_mask, is_index_masked, is_index_global_attn)  # fmt: skip
        out = type(self).forward(self, *padded, is_global_attn, output_attentions)
        return (out[0][:, :length], out[1][:, :length]) + tuple(o[..., :length] for o in out[2:])
    hidden_states, _, pad, glob = _pad_sequence(w, hidden_states, attention_mask, is_index_masked, is_index_global_attn)  # fmt: skip
    b, t, e = hidden_states.shape
    n = t // w
    p = self.dropout if self.training else 0.0

    x = _autocast_input(hidden_states)  # cast once: every projection reads (and saves) this copy
    q, k, v = _projections(x, self.query, self.key, self.value)
    g = int(glob.sum(1).max()) if is_global_attn else 0
    at = glob.to(torch.uint8).argsort(dim=1, descending=True, stable=True)[:, :g]  # (B, g)
    real = glob.gather(1, at)  # (B, g): False for the slots of a row with fewer globals

    def around(x, first):  # (B, T, C) -> (B, n, g + 3w, C): `first` (B, g, C), then 3 blocks
        return band.windows(x.view(b, n, w, -1), first, w, 0, n)

    # a key inside a window counts if it is real and not global (global keys come once, first);
    # padded queries (zeroed afterwards) see their whole band so that no row is empty
    keep = around((~(pad | glob))[..., None], real[..., None])[..., 0]  # (B, n, g + 3w)
    i = torch.arange(w, device=x.device)[:, None]
    allowed = (torch.arange(3 * w, device=x.device)[None] - w - i).abs() <= w  # (w, 3w)
    allowed = torch.cat([allowed.new_ones(w, g), allowed], 1)
    mask = (allowed & (keep[:, :, None, :] | pad.view(b, n, w, 1))).view(b * n, 1, w, -1)

    def windows(q, k, v):  # the band's attention; the windowed copies of k and v live only in here
        kb, vb = (
            around(x, x.gather(1, at[:, :, None].expand(b, g, e)))
            .view(b * n, -1, heads, d)
            .transpose(1, 2)
            for x in (k, v)
        )
        qb = q.reshape(b * n, w, heads, d).transpose(1, 2)
        out = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask, dropout_p=p)
        return out.transpose(1, 2).reshape(b, t, e).masked_fill(pad[:, :, None], 0.0)

    # global tokens attend to every real token, through the global projections
    og = x.new_zeros(b, 0, e)
    if g:
        og = _global_rows(self, x, x.gather(1, at[:, :, None].expand(b, g, e)), ~pad, p)
    if _flash_band(x, p):  # the flash kernel's own backward, no forward twice
        return (band.BandAttention.apply(q, k, v, og, band.Layout(w, n, heads, at, mask, glob, pad))[:, :length],)  # fmt: skip
    if torch.is_grad_enabled() and q.requires_grad:  # keeps q, k, v and recomputes the windows
        out = checkpoint(windows, q, k, v, use_reentrant=False)
    else:
        out = windows(q, k, v)
    if g:
        index = at[:, :, None].expand(b, g, e)
        into = out.new_zeros(b, t, e).scatter(1, index, og.to(out.dtype))
        out = torch.where(glob[:, :, None], into, out)  # (keeps only a mask for backward)
    return (out[:, :length],)


def _flash_band(x: torch.Tensor, p: float) -> bool:
    """Whether the band runs as `band.BandAttention`, over PyTorch's CPU flash kernel (which takes
    no dropout); elsewhere it runs through `F.scaled_dot_product_attention`, checkpointed."""
    return x.device.type == "cpu" and not p


def _autocast_input(x: torch.Tensor) -> torch.Tensor:
    """`x` in the autocast dtype where autocast is on (else as it is): linear layers under autocast
    each cast their input again, and each keeps its own copy for backward."""
    kind = x.device.type
    return x.to(torch.get_autocast_dtype(kind)) if torch.is_autocast_enabled(kind) else x


def _projections(x, *layers: torch.nn.Linear) -> tuple[torch.Tensor, ...]:
    """Several linear layers of one input as one matmul (their outputs are views of its columns)."""
    weight = torch.cat([layer.weight for layer in layers])
    bias = torch.cat([layer.bias for layer in layers])
    return F.linear(x, weight, bias).split([layer.out_features for layer in layers], -1)


def _global_rows(self, x, xg, keys, p: float) -> torch.Tensor:
    """(B, g, E): each of the g global tokens `xg` (B, g, E) attending to the tokens of `x` (B, T, E)
    where `keys` (B, T) is True, through the global projections, without projecting every token.
    A global query's scores against key_global(x) are (q Wk_h) x^T up to the key bias, a constant
    the softmax drops; the weighted sum of value_global(x) is (weights x) Wv_h^T plus the value
    bias times the weights' sum (one, unless dropout dropped some). For g tokens that is 4 g T E
    multiply-adds a head where the two projections of every token cost 2 T E^2 (64 times more at
    g = 1, hidden 256, 4 heads); and backward keeps (B, heads g, T) weights instead of two
    projected copies of the sequence."""
    b, t, e = x.shape
    g, heads, d = xg.shape[1], self.num_heads, self.head_dim
    qg = self.query_global(xg).view(b, g, heads, d).transpose(1, 2) / d**0.5  # (B, heads, g, d)
    qk = torch.matmul(qg, self.key_global.weight.view(heads, d, e))  # (B, heads, g, E)
    scores = torch.bmm(qk.reshape(b, heads * g, e), x.transpose(1, 2))  # (B, heads g, T)
    scores = scores.to(torch.promote_types(scores.dtype, torch.float32))
    # the dtype's minimum, not -inf: a slot of a row of padding alone gets uniform weights, no NaN
    scores = scores.masked_fill(~keys[:, None, :], torch.finfo(scores.dtype).min)
    weights = F.dropout(scores.softmax(-1), p, self.training)
    mixed = torch.bmm(weights.to(x.dtype), x).view(b, heads, g, e)  # (B, heads, g, E)
    wv = self.value_global.weight.view(heads, d, e).transpose(1, 2)  # (heads, E, d)
    bias = weights.sum(-1).view(b, heads, g, 1) * self.value_global.bias.view(heads, 1, d)
    og = torch.matmul(mixed, wv) + bias  # (B, heads, g, d)
    return og.transpose(1, 2).reshape(b, g, e)


def global_mask(input_ids: torch.Tensor, token_ids: list[int]) -> torch.Tensor:
    """1 where a token gets global attention (by default [CLS])."""
    return torch.isin(input_ids, torch.tensor(token_ids, device=input_ids.device)).long()


def pad_to_window(input_ids: torch.Tensor, pad_id: int, window: int) -> dict:
    """input_ids and attention_mask padded to a multiple of the attention window, as transformers'
    Longformer pads them itself (with a warning) before its own attention code runs."""
    n = input_ids.shape[-1]
    extra = (-n) % window
    mask = torch.ones_like(input_ids)
    if extra:
        input_ids = torch.nn.functional.pad(input_ids, (0, extra), value=pad_id)
        mask = torch.nn.functional.pad(mask, (0, extra), value=0)
    return {"input_ids": input_ids, "attention_mask": mask}


def dense_longformer(local, glob, global_mask, config) -> np.ndarray:
    """(heads, T, T) from one Longformer layer's attention outputs: `local` (heads, T_pad, g+w+1),
    the attention of every token to the g global tokens then to its window; `glob` (heads, T_pad, g),
    the attention of each global token to every token."""
    T = len(global_mask)
    w = config.attention_window[0] // 2
    global_pos = global_mask.nonzero().flatten().tolist()
    g = len(global_pos)
    local = local.float().numpy()
    heads = local.shape[0]
    dense = np.zeros((heads, T, T), dtype=np.float32)
    for i in range(T):
        for j in range(max(0, i - w), min(T, i + w + 1)):
            dense[:, i, j] = local[:, i, g + (j - i) + w]
        for k, p in enumerate(global_pos):
            dense[:, i, p] += local[:, i, k]
    glob = glob.float().numpy()  # (heads, T_pad, g): what each global token attends to
    for k, p in enumerate(global_pos):
        dense[:, p, :] = glob[:, :T, k]
    return dense
