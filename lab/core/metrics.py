"""One definition of each measurement: masked-LM accuracy / perplexity / bits per character, fill-mask,
speed. Every stage that reports one of these calls it from here."""

from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from lab.core.attention import global_mask
from lab.core.masking import WholeWordMaskCollator
from lab.core.mlm import MaskedLM
from lab.core.train import autocast


def token_chars(tokenizer) -> np.ndarray:
    """Characters each token id stands for: 0 for the special tokens, 1 for [UNK] (a character the
    vocabulary cannot name), the piece's length without `##` otherwise. Shape (vocab size,)."""
    out = np.zeros(len(tokenizer), dtype=np.int64)
    for token, i in tokenizer.get_vocab().items():
        out[i] = len(token.removeprefix("##")) if len(token) > 2 else len(token)
    out[tokenizer.all_special_ids] = 0
    out[tokenizer.unk_token_id] = 1
    return out


def bits_per_char(nats: float, chars: float) -> float:
    """The lab's one bits per character: -log2 p summed over the masked tokens (`nats` is the same sum
    in natural log) divided by the characters those tokens cover."""
    return nats / math.log(2) / max(1.0, chars)


@torch.no_grad()
def mlm_metrics(model, input_ids: np.ndarray, word_ids: np.ndarray, tokenizer, *, batch_size: int = 64,
                seed: int = 0, whole_word: bool = False, mlm_probability: float = 0.15) -> dict:  # fmt: skip
    """Held-out masked-token accuracy, loss, perplexity and bits per character with a fixed masking
    (token-level by default), on every sequence given."""
    collator = WholeWordMaskCollator(
        tokenizer, mlm_probability=mlm_probability, seed=seed, whole_word=whole_word
    )
    module = model if isinstance(model, MaskedLM) else MaskedLM(model)
    device = next(module.parameters()).device
    chars_of = token_chars(tokenizer)
    total_loss = total_correct = total = chars = 0.0
    for start in range(0, len(input_ids), batch_size):
        collator.reseed([seed, start])
        batch = collator(
            [
                {"input_ids": input_ids[i], "word_ids": word_ids[i]}
                for i in range(start, min(start + batch_size, len(input_ids)))
            ]
        )
        labels = batch["labels"]
        batch = {k: v.to(device) for k, v in batch.items()}
        out = module(**batch)
        n = int((labels != -100).sum())
        total_loss += float(out["loss"]) * n
        total_correct += float(out["acc"]) * n
        total += n
        chars += float(chars_of[labels[labels != -100].numpy()].sum())
    loss = total_loss / max(1, total)
    return {
        "loss": loss,
        "acc": total_correct / max(1, total),
        "ppl": math.exp(min(loss, 50)),
        "bpc": bits_per_char(total_loss, chars),
        "masked": int(total),
        "masked_chars": int(chars),
    }


def spread(ids: np.ndarray, wids: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` sequences evenly spaced over the split (the split is ordered by source, so its first `n`
    would all come from one corpus)."""
    if n >= len(ids):
        return ids, wids
    pick = np.unique(np.linspace(0, len(ids) - 1, n).round().astype(int))
    return ids[pick], wids[pick]


@torch.no_grad()
def fill_mask(model, tokenizer, sentence: str, k: int = 5) -> dict:
    """Top-k per [MASK]; several [MASK]s are decoded position by position, left to right, each
    filled with its top-1 before the next is predicted. Returns {"slots": [[(token, p)...]...], "answer"}."""
    enc = tokenizer(sentence, return_tensors="pt")
    ids = enc["input_ids"].clone()
    extra = (
        {"global_attention_mask": global_mask(ids, [tokenizer.cls_token_id])}
        if model.config.model_type == "longformer"
        else {}
    )
    device = next(model.parameters()).device
    slots = []
    for pos in (ids[0] == tokenizer.mask_token_id).nonzero().flatten().tolist():
        inputs = {"input_ids": ids, "attention_mask": enc["attention_mask"], **extra}
        logits = model(**{k_: v.to(device) for k_, v in inputs.items()}).logits[0, pos]
        top = logits.float().softmax(-1).topk(k)
        tokens = tokenizer.convert_ids_to_tokens(top.indices.tolist())
        slots.append(list(zip(tokens, [round(p, 4) for p in top.values.tolist()])))
        ids[0, pos] = top.indices[0].cpu()
    return {"slots": slots, "answer": "".join(s[0][0] for s in slots)}


@torch.no_grad()
def speeds(models: dict, *, reference: str | None = None, repeats: int = 30, length: int = 128,
           batch: int = 32, seed: int = 0) -> dict[str, dict]:  # fmt: skip
    """The lab's one speed measurement: each model's encoder forward on `length`-token inputs at
    batch 1 (latency) and at `batch` (throughput), in `repeats` rounds. In every round each model is
    timed once at each size, in a random order, with the thread count fixed, so that a busy moment
    slows every model alike. Per model: the medians, and against `reference` the ratio of medians
    (latency: reference over model, > 1 is faster; throughput: model over reference) with a 95%
    interval from a bootstrap over the rounds (the same rounds for both models)."""
    rng = np.random.default_rng(seed)
    threads = torch.get_num_threads()
    sizes = {"b1": 1, "bN": batch}
    bases, inputs = {}, {}
    for name, model in models.items():
        model.eval()
        device = next(model.parameters()).device
        bases[name] = model.base_model
        vocab = model.config.vocab_size
        inputs[name] = {k: torch.randint(5, vocab, (b, length), generator=torch.Generator().manual_seed(b),
                                         ).to(device) for k, b in sizes.items()}  # fmt: skip
        for x in inputs[name].values():  # warm-up: allocations, kernel choice
            bases[name](input_ids=x)
    times = {name: {k: np.zeros(repeats) for k in sizes} for name in models}
    order = [(name, k) for name in models for k in sizes]
    for r in range(repeats):
        torch.set_num_threads(threads)
        for i in rng.permutation(len(order)):
            name, k = order[i]
            t0 = time.perf_counter()
            bases[name](input_ids=inputs[name][k])
            times[name][k][r] = time.perf_counter() - t0
    out = {}
    for name, t in times.items():
        out[name] = {
            "latency_ms_b1": 1000 * float(np.median(t["b1"])),
            "latency_ms_b1_iqr": [1000 * float(q) for q in np.percentile(t["b1"], [25, 75])],
            f"throughput_seq_s_b{batch}": batch / float(np.median(t["bN"])),
            "repeats": repeats,
            "threads": threads,
        }
    if reference in times:
        draws = rng.integers(0, repeats, (2000, repeats))
        ref = times[reference]
        for name, t in times.items():
            for key, num, den in (
                ("latency_vs_teacher", ref["b1"], t["b1"]),
                ("throughput_vs_teacher", ref["bN"], t["bN"]),
            ):
                ratio = float(np.median(num) / np.median(den))
                boot = np.median(num[draws], axis=1) / np.median(den[draws], axis=1)
                out[name][key] = {
                    "ratio": ratio,
                    "ci95": [float(q) for q in np.percentile(boot, [2.5, 97.5])],
                }
    return out


@torch.no_grad()
def document_nats(model, doc_ids, doc_chars, masks, *, window: int, cls_id: int, sep_id: int,
                  mask_id: int, global_ids: list[int] | None = None, bf16: bool = True) -> tuple[float, float]:  # fmt: skip
    """(Σ -ln p(true token) over the masked positions, Σ their characters) of whole documents, each
    read in independent windows of `window` tokens (BERT's positions; the whole document, up to its
    length, for a Longformer). `bits_per_char` of the two is the documents' bits per character."""
    model.eval()
    device = next(model.parameters()).device
    nats = chars = 0.0
    room = window - 2
    for ids, n_chars, mask in zip(doc_ids, doc_chars, masks):
        for s in range(0, len(ids), room):
            piece, m = ids[s : s + room], mask[s : s + room]
            if not m.any():
                continue
            x = torch.tensor(
                np.concatenate([[cls_id], np.where(m, mask_id, piece), [sep_id]]), device=device
            )[None]
            kwargs = (
                {} if global_ids is None else {"global_attention_mask": global_mask(x, global_ids)}
            )
            with autocast(device, bf16):
                logits = model(input_ids=x, **kwargs).logits[0, 1:-1][
                    torch.from_numpy(m).to(device)
                ]
            logp = F.log_softmax(logits.float(), -1)
            target = torch.tensor(piece[m], device=device)
            nats += float(-logp.gather(-1, target[:, None]).sum())
            chars += float(n_chars[s : s + room][m].sum())
    return nats, chars


@torch.no_grad()
def attention_by_offset(model, ids: np.ndarray, max_offset: int = 8, sequences: int = 16) -> dict:
    """Mean attention weight each head of a BERT puts at relative offsets -max_offset..max_offset,
    over held-out sequences: a model that has left the unigram plateau attends to its neighbours by
    itself (the uniform level is 1 / sequence length)."""
    x = torch.as_tensor(ids[:sequences], device=next(model.parameters()).device)
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")  # fused attention returns no weights
    try:
        maps = model.eval()(
            input_ids=x, output_attentions=True
        ).attentions  # per layer (B, heads, T, T)
    finally:
        model.set_attn_implementation(previous)
    T = x.shape[1]
    offsets = list(range(-max_offset, max_offset + 1))
    rows = []
    for layer, a in enumerate(maps):
        by_offset = [a.diagonal(offset=d, dim1=-2, dim2=-1).mean(dim=(0, 2)) for d in offsets]
        weights = torch.stack(by_offset, dim=1)  # (heads, offsets)
        near = sum(a.diagonal(offset=d, dim1=-2, dim2=-1).sum(-1) for d in (-2, -1, 1, 2))
        share = (near / T).mean(dim=0)  # (heads,) share of attention on the 4 nearest neighbours
        for head in range(weights.shape[0]):
            rows.append({"layer": layer, "head": head, "weights": weights[head].tolist(),
                         "neighbour_share": float(share[head])})  # fmt: skip
    return {"offsets": offsets, "uniform": 1 / T, "rows": rows}
