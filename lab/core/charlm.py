"""Bits per character on the same masked characters, whatever a model's tokenizer.

Masked-token accuracy and perplexity compare models only when they cut text into the same tokens. To
compare a model with another vocabulary (a published checkpoint beside the run's own), every model
is shown the same held-out pieces with the same words hidden: the words are chosen once, in
characters (a jieba word is hidden whole), and each model masks every token of its own that overlaps
a hidden word. Its loss on those tokens, in bits, over the hidden words' characters is comparable
across tokenizers: the characters are the same, only the cut into tokens differs.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from lab.core.attention import global_mask
from lab.core.train import autocast


def hidden_words(
    texts: list[str], cut, *, share: float = 0.15, seed: int = 0
) -> list[list[tuple[int, int]]]:
    """Per text, the character spans of the words to hide: `share` of its words (at least one),
    drawn with a seed of their own so every model gets the same spans. `cut` segments a text."""
    rng = np.random.default_rng(seed)
    out = []
    for text in texts:
        spans, at = [], 0
        for word in cut(text):
            start = text.find(word, at)
            if start < 0 or not word.strip():
                continue
            spans.append((start, start + len(word)))
            at = start + len(word)
        k = max(1, round(share * len(spans))) if spans else 0
        picked = sorted(rng.choice(len(spans), size=k, replace=False)) if k else []
        out.append([spans[i] for i in picked])
    return out


@torch.no_grad()
def same_chars_bpc(model, tokenizer, texts: list[str], spans: list[list[tuple[int, int]]], *,
                   batch_size: int = 32, bf16: bool = True) -> dict:  # fmt: skip
    """Bits per hidden character, and how many tokens the model's tokenizer hid for them. Needs a
    fast tokenizer (its offsets map tokens to characters)."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"{type(tokenizer).__name__} gives no character offsets: save the model with a fast "
            "tokenizer (tokenizer.json) to measure bits per character"
        )
    model.eval()
    device = next(model.parameters()).device
    limit = model.config.max_position_embeddings - 2
    nats = chars = hidden = unknown = 0.0
    for start in range(0, len(texts), batch_size):
        rows = []
        for text, words in zip(
            texts[start : start + batch_size], spans[start : start + batch_size]
        ):
            enc = tokenizer(text, return_offsets_mapping=True)
            ids, offsets = enc["input_ids"], enc["offset_mapping"]
            if len(ids) > limit:
                raise ValueError(
                    f"a {len(text)}-character piece is {len(ids)} tokens, more than the model's "
                    f"{limit} positions: use shorter pieces"
                )
            at = [i for i, (s, e) in enumerate(offsets)
                  if e > s and any(s < we and e > ws for ws, we in words)]  # fmt: skip
            rows.append((ids, at))
            chars += sum(we - ws for ws, we in words)
            hidden += len(at)
            unknown += sum(ids[i] == tokenizer.unk_token_id for i in at)
        width = max(len(ids) for ids, _ in rows)
        x = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
        keep = torch.zeros_like(x)
        target = torch.full_like(x, -100)
        for r, (ids, at) in enumerate(rows):
            x[r, : len(ids)] = torch.tensor(ids)
            keep[r, : len(ids)] = 1
            target[r, at] = x[r, at]
            x[r, at] = tokenizer.mask_token_id
        kwargs = {"input_ids": x.to(device), "attention_mask": keep.to(device)}
        if model.config.model_type == "longformer":
            kwargs["global_attention_mask"] = global_mask(
                kwargs["input_ids"], [tokenizer.cls_token_id]
            )
        with autocast(device, bf16):
            logits = model(**kwargs).logits
        logp = torch.log_softmax(logits.float(), -1)
        t = target.to(device)
        picked = t != -100
        nats -= float(logp[picked].gather(-1, t[picked][:, None]).sum())
    return {
        "bpc": nats / math.log(2) / max(1.0, chars),
        "hidden_chars": int(chars),
        "hidden_tokens": int(hidden),
        # a tokenizer that reads characters as [UNK] predicts [UNK] cheaply: say how often
        "unknown_share": unknown / max(1.0, hidden),
    }
