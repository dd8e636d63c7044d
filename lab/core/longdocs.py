"""Long documents: tokenised with word ids, cut into training chunks, masked once for scoring, and
the long-range name probe (a masked name whose previous mention lies far back)."""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections import Counter

import numpy as np
import torch

from lab.core.attention import dense_longformer, global_mask, pad_to_window
from lab.core.files import read_json, write_json
from lab.core.metrics import token_chars
from lab.core.segment import quiet_jieba
from lab.core.sources import cache_dir
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
    names = []
    for w, _ in merge_prefixed(name_counts(texts)).most_common(top):
        ids = tokenizer(w, add_special_tokens=False)["input_ids"]
        if tokenizer.unk_token_id not in ids:
            names.append(ids)
    return names


def name_counts(texts: list[str]) -> Counter:
    """How often jieba tags each two- or three-character word of `texts` as a person name (`nr`).

    Tagging the 300,000 characters longify reads took 17 s on a 2-core CPU, in every run, for the
    same counts each time: they are kept in the sources cache (`derived/` in $ZH_MINILAB_CACHE or
    ~/.cache/zh-minilab), under the texts' sha256, jieba's version and this rule's (v1), and tagged
    again when any of them changes or the file does not hold a table of counts."""
    import jieba

    quiet_jieba()
    digest = hashlib.sha256("\x00".join(texts).encode("utf-8")).hexdigest()[:24]
    path = cache_dir() / "derived" / f"person-names-v1-{digest}-jieba{jieba.__version__}.json"
    try:
        kept = read_json(path)
        if isinstance(kept, dict) and all(isinstance(v, int) for v in kept.values()):
            return Counter(kept)
    except (OSError, ValueError):
        pass
    import jieba.posseg as pseg

    counts: Counter = Counter()
    for t in texts:
        for w, flag in pseg.cut(t):
            if flag == "nr" and 2 <= len(w) <= 3:
                counts[w] += 1
    with contextlib.suppress(OSError):  # a read-only cache: tag again next time
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, dict(counts))
    return counts


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


def windows(n_tokens: int, length: int, count: int) -> list[int]:
    """Where `count` windows of `length` tokens end in a document of `n_tokens`: spread evenly from
    the first that fits to the document's end (fewer when the document is short)."""
    if n_tokens < length:
        return []
    last = n_tokens
    if count <= 1 or last == length:
        return [last]
    step = (last - length) / (count - 1)
    return sorted({round(length + k * step) for k in range(count)})


@torch.no_grad()
def context_gain(model, doc_ids, doc_chars, *, contexts: list[int], span: int, length: int, spans_per_doc: int,
                 mask_share: float, cls_id: int, sep_id: int, mask_id: int, global_ids: list[int] | None = None,
                 bf16: bool = True) -> dict[int, list[tuple[float, float]]]:  # fmt: skip
    """How well a model predicts a stretch of a document as it may use more of what comes before:
    for each context length c, per document (its windows pooled), (nats, characters) of every token
    of the scored span.

    One layout for every c: [CLS] + `length` - 2 consecutive tokens of the document + [SEP], the span
    the last `span` tokens before [SEP], always at the same positions. Context is taken away by the
    attention mask, not by moving anything: every token more than c tokens before the span is masked
    out as a key, for every query. Every token of the span is scored: its positions fall into
    ceil(1 / mask_share) groups, each masked in a pass of its own, all contexts of a pass in one
    batch. Documents shorter than `length` tokens are left out (an empty list for them)."""
    model.eval()
    device = next(model.parameters()).device
    groups = max(1, math.ceil(1 / mask_share))
    room = length - 2
    if room < span + max(contexts):
        raise ValueError(
            f"a context of {max(contexts)} and a span of {span} do not fit in {length} tokens"
        )
    first = room - span  # the span's place among the window's tokens (after [CLS]: + 1)
    out: dict[int, list[tuple[float, float]]] = {c: [] for c in contexts}
    for ids, chars in zip(doc_ids, doc_chars):
        ends = windows(len(ids), room, spans_per_doc)
        if not ends:
            continue
        nats = np.zeros(len(contexts))
        n_chars = 0.0
        for end in ends:
            piece, piece_chars = ids[end - room : end], chars[end - room : end]
            keys = np.ones((len(contexts), length), dtype=np.int64)
            for b, c in enumerate(contexts):
                keys[b, 1 : 1 + first - c] = 0  # more than c tokens before the span: out of sight
            for g in range(groups):
                at = np.arange(first + g, room, groups)  # this pass's span positions (in `piece`)
                x = np.concatenate([[cls_id], piece, [sep_id]])
                x[1 + at] = mask_id
                inputs = torch.tensor(np.repeat(x[None], len(contexts), 0), device=device)
                kwargs = {"attention_mask": torch.tensor(keys, device=device)}
                if global_ids is not None:
                    kwargs["global_attention_mask"] = global_mask(inputs, global_ids)
                with autocast(device, bf16):
                    logits = model(input_ids=inputs, **kwargs).logits[:, 1 + at]  # (B, n, V)
                logp = torch.log_softmax(logits.float(), -1)
                target = torch.tensor(piece[at], device=device)
                nats += (
                    (-logp.gather(-1, target[None, :, None].expand(len(contexts), -1, 1)))
                    .sum((1, 2))
                    .cpu()
                    .numpy()
                )
            n_chars += float(piece_chars[first:].sum())
        for b, c in enumerate(contexts):
            out[c].append((float(nats[b]), n_chars))
    return out
