"""Long documents: tokenised with word ids, cut into training chunks, masked once for scoring, and
the long-range name probe (a masked name whose previous mention lies far back)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch

from lab.core.attention import dense_longformer, global_mask, pad_to_window
from lab.core.metrics import token_chars
from lab.core.segment import quiet_jieba
from lab.core.train import autocast
from lab.core.wordpiece import WordTokenizer


def tokenize_docs(
    texts: list[str], tokenizer, segmenter
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Per document: token ids, word ids, and each token's character length (for bits per char)."""
    words = [segmenter.cut(t) for t in texts]
    ids, wids, counts = WordTokenizer(tokenizer)(words)
    chars = token_chars(tokenizer)[ids]
    cut = np.cumsum(counts)[:-1]
    return np.split(ids, cut), np.split(wids, cut), np.split(chars, cut)


def chunk_docs(
    ids: list[np.ndarray],
    wids: list[np.ndarray],
    seq_len: int,
    cls_id: int,
    sep_id: int,
    pad_id: int,
):
    """Each document cut into [CLS] ... [SEP] pieces of `seq_len` (never across documents)."""
    room = seq_len - 2
    rows_i, rows_w = [], []
    for i, w in zip(ids, wids):
        for s in range(0, len(i), room):
            piece, wp = i[s : s + room], w[s : s + room]
            if len(piece) < 16:
                continue
            pad = room - len(piece)
            rows_i.append(np.concatenate([[cls_id], piece, [sep_id], np.full(pad, pad_id)]))
            rows_w.append(np.concatenate([[-1], wp - wp.min(), [-1], np.full(pad, -1)]))
    return np.asarray(rows_i, dtype=np.int64), np.asarray(rows_w, dtype=np.int64)


def fixed_masks(
    doc_ids: list[np.ndarray], doc_wids: list[np.ndarray], collator, seed: int
) -> list[np.ndarray]:
    """One fixed masking per document: the positions every model is scored on."""
    out = []
    for k, (i, w) in enumerate(zip(doc_ids, doc_wids)):
        collator.reseed([seed, k])
        batch = collator([{"input_ids": i, "word_ids": w}])
        out.append((batch["labels"][0] != -100).numpy())
    return out


def probe_instances(
    doc_ids, doc_wids, names: list[list[int]], *, min_gap: int, limit: int
) -> list[dict]:
    """Mentions of a name whose previous mention is more than `min_gap` tokens earlier (and none in
    between): mask the mention, predict it from the context."""
    found = []
    for d, ids in enumerate(doc_ids):
        last: dict[tuple, int] = {}
        for pos in range(len(ids)):
            for name in names:
                n = len(name)
                if pos + n <= len(ids) and ids[pos] == name[0] and list(ids[pos : pos + n]) == name:
                    key = tuple(name)
                    if key in last and pos - last[key] > min_gap:
                        found.append({"doc": d, "pos": pos, "name": name, "gap": pos - last[key]})
                    last[key] = pos
        if len(found) >= limit:
            break
    return found[:limit]


@torch.no_grad()
def probe_accuracy(model, doc_ids, instances, *, window: int, right: int, cls_id: int, sep_id: int,
                   mask_id: int, global_ids: list[int] | None = None, bf16: bool = True) -> dict:  # fmt: skip
    """Top-1 accuracy on the masked name's characters, reading the `window` tokens that end `right`
    tokens after the mention."""
    model.eval()
    device = next(model.parameters()).device
    correct_chars = total_chars = whole = 0
    for inst in instances:
        ids = doc_ids[inst["doc"]]
        n = len(inst["name"])
        end = min(len(ids), inst["pos"] + n + right)
        start = max(0, end - (window - 2))
        piece = ids[start:end].copy()
        rel = inst["pos"] - start
        piece[rel : rel + n] = mask_id
        x = torch.tensor(np.concatenate([[cls_id], piece, [sep_id]]), device=device)[None]
        kwargs = {} if global_ids is None else {"global_attention_mask": global_mask(x, global_ids)}
        with autocast(device, bf16):
            pred = (
                model(input_ids=x, **kwargs)
                .logits[0, 1 + rel : 1 + rel + n]
                .argmax(-1)
                .cpu()
                .numpy()
            )
        hit = pred == np.asarray(inst["name"])
        correct_chars += int(hit.sum())
        total_chars += n
        whole += int(hit.all())
    return {
        "instances": len(instances),
        "char_acc": correct_chars / max(1, total_chars),
        "name_acc": whole / max(1, len(instances)),
    }


def merge_prefixed(counts):
    """Fold a three-character "name" whose first two characters are themselves a name into that
    name: jieba tags 玄德曰 ("Xuande said") and 孔明曰 as names in classical text."""
    out = counts.copy()
    for w in [w for w in counts if len(w) == 3 and w[:2] in counts]:
        out[w[:2]] += out.pop(w)
    return out


def frequent_names(texts: list[str], tokenizer, top: int = 60) -> list[list[int]]:
    """The most frequent person names (jieba POS `nr`, two or three characters) in `texts`."""
    quiet_jieba()
    import jieba.posseg as pseg

    counts: Counter = Counter()
    for t in texts:
        for w, flag in pseg.cut(t):
            if flag == "nr" and 2 <= len(w) <= 3:
                counts[w] += 1
    names = []
    for w, _ in merge_prefixed(counts).most_common(top):
        ids = tokenizer(w, add_special_tokens=False)["input_ids"]
        if tokenizer.unk_token_id not in ids:
            names.append(ids)
    return names


@torch.no_grad()
def banded_attention(
    long, ids: np.ndarray, global_ids: list[int], *, cls_id: int, sep_id: int, mask_id: int
) -> np.ndarray:
    """Head-averaged attention of the last layer as a dense (T, T) matrix for one document piece:
    the local band plus the global rows and columns."""
    long.eval()
    x = torch.tensor(np.concatenate([[cls_id], ids, [sep_id]]))[None]
    gm = global_mask(x, global_ids)
    padded = pad_to_window(x, long.config.pad_token_id, long.config.attention_window[0])
    out = long(**padded, global_attention_mask=global_mask(padded["input_ids"], global_ids),
               output_attentions=True)  # fmt: skip
    return dense_longformer(
        out.attentions[-1][0], out.global_attentions[-1][0], gm[0], long.config
    ).mean(0)


def span_positions(
    contexts: list[int], span: int, period: int, max_positions: int
) -> tuple[int, int]:
    """Where the context curve's span starts, for BERT (`period` positions) and for a Longformer
    converted from it: BERT's just after the longest context it can read; the Longformer's on the same
    rows of its position table, which repeats BERT's every `period` positions, after its own longest
    context that still fits."""
    s_bert = 1 + max(c for c in contexts if c + span + 2 <= period)
    for longest in sorted(contexts, reverse=True):
        s_long = s_bert + period * -(-max(0, 1 + longest - s_bert) // period)
        if s_long + span + 1 <= max_positions:
            return s_bert, s_long
    return s_bert, s_bert


@torch.no_grad()
def context_curve(model, doc_ids, doc_chars, masks, *, contexts: list[int], span: int, cls_id: int,
                  sep_id: int, mask_id: int, max_len: int, span_position: int,
                  global_ids: list[int] | None = None,
                  bf16: bool = True) -> dict[int, list[tuple[float, float]]]:  # fmt: skip
    """How well a model predicts a document's last `span` tokens (masked at `masks`' positions) as it
    sees more of what comes before: for each context length c, per document, (nats, characters) of
    the masked tokens of the span when the input is the c tokens before it and the span.

    The span sits at the same positions for every c (from `span_position`, counted as BERT counts,
    [CLS] at 0; the context fills the positions just before it), so the curve measures context and
    not how well the model knows one position or another. Lengths that do not fit before
    `span_position`, or a span that would pass `max_len`, are left out."""
    model.eval()
    device = next(model.parameters()).device
    if span_position + span + 1 > max_len:
        raise ValueError(f"a span at {span_position} + {span} tokens passes the model's {max_len}")
    offset = model.config.pad_token_id + 1 if model.config.model_type == "longformer" else 0
    out: dict[int, list[tuple[float, float]]] = {}
    for c in contexts:
        if c + 1 > span_position:
            continue
        rows = []
        for ids, chars, mask in zip(doc_ids, doc_chars, masks):
            end = len(ids)
            tail, m = ids[end - span :], mask[end - span :]
            before = ids[max(0, end - span - c) : end - span]
            x = torch.tensor(
                np.concatenate([[cls_id], before, np.where(m, mask_id, tail), [sep_id]]),
                device=device,
            )[None]
            at = np.arange(span_position - len(before), span_position + span + 1)
            positions = torch.tensor(np.concatenate([[0], at]) + offset, device=device)[None]
            kwargs = (
                {} if global_ids is None else {"global_attention_mask": global_mask(x, global_ids)}
            )
            with autocast(device, bf16):
                logits = model(input_ids=x, position_ids=positions, **kwargs).logits[
                    0, 1 + len(before) : 1 + len(before) + span
                ]
            logp = torch.log_softmax(logits[torch.from_numpy(m).to(device)].float(), -1)
            target = torch.tensor(tail[m], device=device)
            rows.append(
                (
                    float(-logp.gather(-1, target[:, None]).sum()),
                    float(chars[end - span :][m].sum()),
                )
            )
        out[c] = rows
    return out
