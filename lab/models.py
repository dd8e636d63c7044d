"""Model presets: the seeds' architectures by name, built as plain `BertForMaskedLM` (no I/O here).

The 24 UER miniatures are `L{layers}_H{hidden}` for L in 2..12 (even) and H in 128/256/512/768, with
heads = H/64 and FFN = 4H; Tiny, Mini, Small, Medium and Base are their aliases. HFL's MiniRBT-H256 /
-H288, RBT3, RBT4-H312 and RBT6 are listed with their own widths. Any `L{n}_H{h}[_A{heads}][_I{ffn}]`
builds a custom size (the smoke profile uses width-64 models).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from transformers import BertConfig, BertForMaskedLM


@dataclass(frozen=True)
class Arch:
    layers: int
    hidden: int
    heads: int
    ffn: int


PRESETS: dict[str, Arch] = {
    f"L{n}_H{h}": Arch(n, h, h // 64, 4 * h)
    for n in (2, 4, 6, 8, 10, 12)
    for h in (128, 256, 512, 768)
}
PRESETS.update(
    {
        "MiniRBT-H256": Arch(6, 256, 8, 1024),
        "MiniRBT-H288": Arch(6, 288, 8, 1152),
        "RBT3": Arch(3, 768, 12, 3072),
        "RBT4-H312": Arch(4, 312, 12, 1200),
        "RBT6": Arch(6, 768, 12, 3072),
    }
)
ALIASES = {
    "Tiny": "L2_H128",
    "Mini": "L4_H256",
    "Small": "L4_H512",
    "Medium": "L8_H512",
    "Base": "L12_H768",
}
CUSTOM = re.compile(r"^L(\d+)_H(\d+)(?:_A(\d+))?(?:_I(\d+))?$")


class ModelError(ValueError):
    """An unknown preset or an impossible architecture."""


def arch(name: str) -> Arch:
    """The architecture of a preset, an alias or a custom `L{n}_H{h}[_A{heads}][_I{ffn}]`."""
    name = ALIASES.get(name, name)
    if name in PRESETS:
        return PRESETS[name]
    m = CUSTOM.match(name)
    if not m:
        known = ", ".join([*ALIASES, *(k for k in PRESETS if not k.startswith("L"))])
        raise ModelError(
            f"unknown model preset {name!r}: use {known}, L{{layers}}_H{{hidden}} "
            "(e.g. L4_H256), or L{n}_H{h}_A{heads}_I{ffn} for a custom size"
        )
    layers, hidden = int(m[1]), int(m[2])
    heads = int(m[3]) if m[3] else max(1, hidden // 64)
    ffn = int(m[4]) if m[4] else 4 * hidden
    if layers < 1 or hidden < 8:
        raise ModelError(f"model {name!r}: needs at least 1 layer and hidden size 8")
    if hidden % heads:
        raise ModelError(f"model {name!r}: hidden size {hidden} is not divisible by {heads} heads")
    return Arch(layers, hidden, heads, ffn)


def config(
    name: str,
    vocab_size: int,
    *,
    max_positions: int = 512,
    dropout: float = 0.1,
    pad_token_id: int = 0,
    attn_implementation: str = "sdpa",
    init_std: float = 0.02,
) -> BertConfig:
    """A BertConfig for preset `name`; `init_std` 0 means 1/sqrt(hidden) (fan-in scale)."""
    a = arch(name)
    cfg = BertConfig(
        vocab_size=vocab_size,
        hidden_size=a.hidden,
        num_hidden_layers=a.layers,
        num_attention_heads=a.heads,
        intermediate_size=a.ffn,
        max_position_embeddings=max_positions,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        pad_token_id=pad_token_id,
        type_vocab_size=2,
        initializer_range=init_std or a.hidden**-0.5,
    )
    cfg._attn_implementation = attn_implementation
    return cfg


def build(name: str, vocab_size: int, *, seed: int = 0, **kwargs) -> BertForMaskedLM:
    """A randomly initialised `BertForMaskedLM` of preset `name` for a vocab of `vocab_size`."""
    torch.manual_seed(seed)
    return BertForMaskedLM(config(name, vocab_size, **kwargs))


def count(model_or_config, vocab_size: int | None = None) -> dict[str, int]:
    """Total and non-embedding parameters, counted as MiniRBT's table does: the encoder (BertModel,
    pooler included) without the MLM head; embeddings = word + position + type + their LayerNorm."""
    cfg = model_or_config.config if hasattr(model_or_config, "config") else model_or_config
    V = vocab_size or cfg.vocab_size
    H, L, F = cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size  # F: feed-forward width
    emb = (V + cfg.max_position_embeddings + cfg.type_vocab_size) * H + 2 * H
    layer = 4 * (H * H + H) + (H * F + F) + (F * H + H) + 2 * 2 * H  # attention, FFN, 2 LayerNorms
    pooler = H * H + H
    return {
        "total": emb + L * layer + pooler,
        "non_embedding": L * layer + pooler,
        "embedding": emb,
    }


def table(vocab_size: int = 21128, names: list[str] | None = None) -> list[dict]:
    """The parameter table of the presets for a vocab (MiniRBT's columns)."""
    names = names or [
        "Base",
        "RBT6",
        "RBT3",
        "RBT4-H312",
        "MiniRBT-H256",
        "MiniRBT-H288",
        "Medium",
        "Small",
        "Mini",
        "Tiny",
    ]
    base = count(config("Base", vocab_size))
    rows = []
    for n in names:
        a, c = arch(n), count(config(n, vocab_size))
        rows.append(
            {
                "model": n,
                "layers": a.layers,
                "hidden": a.hidden,
                "ffn": a.ffn,
                "heads": a.heads,
                "params": c["total"],
                "params %": 100 * c["total"] / base["total"],
                "non-embedding": c["non_embedding"],
                "non-embedding %": 100 * c["non_embedding"] / base["non_embedding"],
            }
        )
    return rows
