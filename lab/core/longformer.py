"""BERT -> Longformer: the conversion (Longformer_ZH / allenai's `convert_model_to_long`, working on
transformers 5), the check that it computes what BERT computes, and batches with global attention.

Position embeddings are copied out to `max_positions` (a Longformer counts positions from
`pad_token_id + 1`, so BERT's position p becomes row p + 1 + pad), Q/K/V are copied into the
global-attention projections and the MLM head is renamed. Inside one window the converted model
computes exactly what BERT computes.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lab.core.attention import global_mask
from lab.core.mlm import PackedBatches
from lab.core.presets import ConversionError, check_window


def convert(model_or_dir, *, max_positions: int = 4096, attention_window: int = 512):
    """A `LongformerForMaskedLM` computing what the BERT MLM computes, for 4,096-token inputs."""
    from transformers import AutoModelForMaskedLM, LongformerConfig, LongformerForMaskedLM

    bert = model_or_dir
    if isinstance(model_or_dir, (str, Path)):
        bert = AutoModelForMaskedLM.from_pretrained(str(model_or_dir))
    c = bert.config
    if c.model_type != "bert":
        raise ConversionError(f"longify converts BERT models; this one is a {c.model_type!r} model")
    check_window(attention_window, max_positions, c.max_position_embeddings)
    offset = c.pad_token_id + 1  # Longformer position of the first real token
    cfg = LongformerConfig(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads, intermediate_size=c.intermediate_size,
        hidden_act=c.hidden_act, hidden_dropout_prob=c.hidden_dropout_prob,
        attention_probs_dropout_prob=c.attention_probs_dropout_prob,
        max_position_embeddings=max_positions + offset, type_vocab_size=c.type_vocab_size,
        initializer_range=c.initializer_range, layer_norm_eps=c.layer_norm_eps,
        pad_token_id=c.pad_token_id, bos_token_id=None, eos_token_id=None, sep_token_id=None,
        attention_window=[attention_window] * c.num_hidden_layers,
    )  # fmt: skip
    long = LongformerForMaskedLM(cfg)
    src = bert.state_dict()
    dst = long.state_dict()
    for key in dst:
        if key.startswith("longformer.embeddings.position_embeddings"):
            continue
        name = key.replace("longformer.", "bert.", 1)
        name = name.replace("_global.", ".")  # global Q/K/V start as copies of the local ones
        name = {
            "lm_head.dense.weight": "cls.predictions.transform.dense.weight",
            "lm_head.dense.bias": "cls.predictions.transform.dense.bias",
            "lm_head.layer_norm.weight": "cls.predictions.transform.LayerNorm.weight",
            "lm_head.layer_norm.bias": "cls.predictions.transform.LayerNorm.bias",
            "lm_head.decoder.weight": "cls.predictions.decoder.weight",
            "lm_head.decoder.bias": "cls.predictions.bias",
            "lm_head.bias": "cls.predictions.bias",
        }.get(key, name)
        dst[key] = src[name].clone()
    # positions: BERT row p -> Longformer row p + offset, the 512 rows tiled out to max_positions
    old = src["bert.embeddings.position_embeddings.weight"]  # (P, H)
    new = dst[
        "longformer.embeddings.position_embeddings.weight"
    ].clone()  # (max_positions + offset, H)
    for start in range(0, max_positions, len(old)):
        n = min(len(old), max_positions - start)
        new[offset + start : offset + start + n] = old[:n]
    dst["longformer.embeddings.position_embeddings.weight"] = new
    long.load_state_dict(dst)
    return long


@torch.no_grad()
def equivalence(bert, long, tokenizer, text: str, global_ids: list[int]) -> float:
    """Largest |logit difference| between BERT and its conversion on `text` (inside one window)."""
    enc = tokenizer(
        text,
        return_tensors="pt",
        truncation=True,
        max_length=long.config.attention_window[0] // 2 + 1,
    )
    bert.eval()
    long.eval()
    a = bert(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
    b = long(
        input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
        global_attention_mask=global_mask(enc["input_ids"], global_ids),
    ).logits  # fmt: skip
    return float((a - b).abs().max())


class LongBatches(PackedBatches):
    """Document chunks with global attention on the chosen tokens."""

    def __init__(self, *args, global_ids: list[int], **kwargs):
        super().__init__(*args, **kwargs)
        self.global_ids = global_ids

    def __call__(self, index: int, rank: int = 0, world: int = 1) -> dict:
        batch = super().__call__(index, rank, world)
        batch["global_attention_mask"] = global_mask(batch["input_ids"], self.global_ids)
        return batch
