"""Attention pieces: the locality warm-up bias, and sliding-window attention computed block by block.

`block_attention` makes a `LongformerForMaskedLM` (or any Longformer) run its sliding window through
PyTorch's fused attention; `dense_longformer` lays a Longformer layer's banded attention maps out as a
full matrix for viewing.
"""

from __future__ import annotations

import types

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


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


def block_attention(long) -> None:
    """Compute each layer's sliding-window attention block by block with
    `F.scaled_dot_product_attention`: every block of w = window/2 queries attends to the keys of
    its own and both neighbouring blocks under a band mask, plus the global tokens. The function is
    transformers' (tested against it, values and gradients), without its chunk copies and with 3w
    scores per query where its chunks compute 4w; weights and what `save_pretrained` writes are
    unchanged, and `output_attentions=True` runs transformers' own code (the viewer needs its maps).
    The model no longer pads every input to a multiple of the window (a 64-token input padded to 512
    costs eight times its own work in every layer); each layer pads only as far as its blocks need."""
    base = long.base_model
    base._pad_to_window_size = types.MethodType(_no_window_padding, base)
    for layer in base.encoder.layer:
        layer.attention.self.forward = types.MethodType(_block_forward, layer.attention.self)


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

    def around(x):  # (B, n * w, ...) -> (B, n, 3w, ...): each block with the blocks beside it
        x = F.pad(x.view(b, n, w, -1), (0, 0, 0, 0, 1, 1))
        return torch.cat([x[:, :-2], x[:, 1:-1], x[:, 2:]], 2)

    def blocks(x):  # (B, T, E) -> keys around each block: (B * n, heads, 3w, d)
        return around(x).view(b * n, 3 * w, heads, d).transpose(1, 2)

    q = self.query(hidden_states)
    k, v = self.key(hidden_states), self.value(hidden_states)
    # a key inside a window counts if it is real and not global (global keys come once, below);
    # padded queries (zeroed afterwards) see their whole band so that no row is empty
    keep = around(~(pad | glob)).view(b, n, 3 * w)
    i = torch.arange(w, device=k.device)[:, None]
    band = (torch.arange(3 * w, device=k.device)[None] - w - i).abs() <= w  # (w, 3w)
    allowed = band & (keep[:, :, None, :] | pad.view(b, n, w, 1))  # (B, n, w, 3w)
    g = int(glob.sum(1).max()) if is_global_attn else 0
    if g:
        where = glob.to(torch.uint8).argsort(dim=1, descending=True, stable=True)[:, :g]  # (B, g)
        real = glob.gather(1, where)  # (B, g): False for the slots of a row with fewer globals
        at = where[:, :, None].expand(b, g, e)
        allowed = torch.cat([real[:, None, None, :].expand(b, n, w, g), allowed], -1)
    mask = allowed.view(b * n, 1, w, -1)

    def globals_of(x):  # (B, T, E) -> (B * n, heads, g, d), the global tokens for every block
        x = x.gather(1, at).view(b, 1, g, heads, d).expand(b, n, g, heads, d)
        return x.reshape(b * n, g, heads, d).transpose(1, 2)

    def windows(q, k, v):  # the band's attention; the windowed copies of k and v live only in here
        kb, vb = blocks(k), blocks(v)
        if g:
            kb, vb = torch.cat([globals_of(k), kb], 2), torch.cat([globals_of(v), vb], 2)
        qb = q.view(b * n, w, heads, d).transpose(1, 2)
        return F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask, dropout_p=p)

    # in training, backward keeps q, k and v and recomputes the windows: no 3x copies held in memory
    grad = torch.is_grad_enabled() and q.requires_grad
    out = checkpoint(windows, q, k, v, use_reentrant=False) if grad else windows(q, k, v)
    out = out.transpose(1, 2).reshape(b, t, e).masked_fill(pad[:, :, None], 0.0)
    if g:  # global tokens attend to every real token through the global projections
        qg = self.query_global(hidden_states.gather(1, at)).view(b, g, heads, d).transpose(1, 2)
        kg = self.key_global(hidden_states).view(b, t, heads, d).transpose(1, 2)
        vg = self.value_global(hidden_states).view(b, t, heads, d).transpose(1, 2)
        og = F.scaled_dot_product_attention(
            qg, kg, vg, attn_mask=~pad[:, None, None, :], dropout_p=p
        )
        og = og.transpose(1, 2).reshape(b, g, e).to(out.dtype)
        out = out.scatter(1, at, torch.where(real[:, :, None], og, out.gather(1, at)))
    return (out[:, :length],)


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
