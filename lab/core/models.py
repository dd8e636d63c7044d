"""Models of the reference architectures (`lab.core.presets`), built as plain `BertForMaskedLM` (no I/O
here), and their parameter counts.

The 24 UER miniatures are `L{layers}_H{hidden}` for L in 2..12 (even) and H in 128/256/512/768, with
heads = H/64 and FFN = 4H; Tiny, Mini, Small, Medium and Base are their aliases. HFL's MiniRBT-H256 /
-H288, RBT3, RBT4-H312 and RBT6 are listed with their own widths. Any `L{n}_H{h}[_A{heads}][_I{ffn}]`
builds a custom size (the smoke profile uses width-64 models).
"""

from __future__ import annotations

import math

import torch
from transformers import BertConfig, BertForMaskedLM

from lab.core.budget import FULL_VOCAB, Size
from lab.core.presets import arch


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
    """Total and non-embedding parameters, counted as MiniRBT's table does: the encoder (pooler
    included) without the MLM head; embeddings = word + position + type + their LayerNorm. A
    Longformer layer also has its global Q/K/V projections."""
    cfg = model_or_config.config if hasattr(model_or_config, "config") else model_or_config
    if cfg.model_type not in ("bert", "longformer") and hasattr(model_or_config, "base_model"):
        return _measured(model_or_config)  # another architecture, loaded: count what it holds
    V = vocab_size or cfg.vocab_size
    H, L, F = cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size  # F: feed-forward width
    # (a config of another architecture: BERT's arithmetic at its sizes, for FLOP estimates)
    emb = (V + cfg.max_position_embeddings + getattr(cfg, "type_vocab_size", 0)) * H + 2 * H
    attention = (7 if cfg.model_type == "longformer" else 4) * (H * H + H)  # Q K V O (+ global QKV)
    layer = attention + (H * F + F) + (F * H + H) + 2 * 2 * H  # attention, FFN, 2 LayerNorms
    pooler = H * H + H
    return {
        "total": emb + L * layer + pooler,
        "non_embedding": L * layer + pooler,
        "embedding": emb,
    }


def _measured(model) -> dict[str, int]:
    """The encoder's parameters (no MLM head), those of its `embeddings` module apart."""
    base = model.base_model
    total = sum(p.numel() for p in base.parameters())
    emb = sum(p.numel() for n, p in base.named_parameters() if n.startswith("embeddings."))
    return {"total": total, "non_embedding": total - emb, "embedding": emb}


def preset_rows(vocab_size: int = FULL_VOCAB, names: list[str] | None = None) -> list[dict]:
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


def sinusoidal_positions(model) -> None:
    """Initialise BERT's (learned) position embeddings with sinusoids at the default init's scale:
    the model can read relative positions from step one. The architecture stays plain BERT."""
    weight = model.bert.embeddings.position_embeddings.weight
    positions, hidden = weight.shape
    pos = torch.arange(positions, dtype=torch.float32)[:, None]
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, hidden, 2, dtype=torch.float32) / hidden)
    table = torch.zeros(positions, hidden)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)[:, : hidden // 2]
    with torch.no_grad():
        weight.copy_(table * model.config.initializer_range * math.sqrt(2))


def size(conf) -> Size:
    """What a training budget needs to know of a model, from its config."""
    c = count(conf)
    return Size(conf.num_hidden_layers, conf.hidden_size, conf.num_attention_heads, c["total"],
                c["non_embedding"], conf.vocab_size, conf.intermediate_size)  # fmt: skip
