"""Building a pretraining corpus from documents: cleaning, cutting, deduplication and splits by hash,
People's Daily's blocks, the long documents, and the statistics the corpus report shows."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
from datasets import Dataset, DatasetDict, Features, Value

from lab.core.progress import tqdm
from lab.core.text import (
    FOLD,
    KEEP_FULLWIDTH,
    assign_split,
    bucket,
    cut,
    is_cjk,
    normalize,
    to_simplified,
)

SPLITS = ("train", "valid", "test")


def char_profile(texts: list[str], trad: set[str]) -> dict:
    counts = Counter()
    for t in texts:
        counts.update(t)
    total = sum(counts.values()) or 1
    fullwidth = sum(n for c, n in counts.items() if ord(c) in FOLD)  # what cleaning folds
    cjk = sum(n for c, n in counts.items() if is_cjk(c))
    control = sum(n for c, n in counts.items() if ord(c) < 32 and c not in "\n\t")
    return {
        "chars": total,
        "fullwidth_share": fullwidth / total,
        "fullwidth_punct_share": sum(counts[c] for c in KEEP_FULLWIDTH) / total,
        "traditional_share": sum(counts[c] for c in trad) / total,
        "non_cjk_share": 1 - cjk / total,
        "control_chars": control,
        "replacement_chars": counts["\ufffd"],
    }


def block_splits(keys: list[str], valid_frac: float, test_frac: float) -> list[str]:
    """Splits of People's Daily blocks by hash; with 3+ blocks, valid and test get at least one
    each (the lowest-hash train blocks), so small profiles still have held-out gold segmentation."""
    splits = [assign_split(k, valid_frac, test_frac, salt="corpus:") for k in keys]
    if len(keys) >= 3:
        order = sorted(range(len(keys)), key=lambda i: bucket("corpus:" + keys[i]))
        for need in ("valid", "test"):
            if need not in splits:
                i = next(i for i in order if splits[i] == "train")
                splits[i] = need
    return splits


def pd_blocks(
    paragraphs: list[list[tuple[str, str]]], *, block_chars: int, simplified: bool
) -> list[dict]:
    """People's Daily's consecutive paragraphs (of gold words and tags) grouped into documents of
    about `block_chars` characters."""
    blocks, cur = [], {"texts": [], "words": [], "tags": []}
    size = 0
    for para in paragraphs:
        pairs = [(normalize(w), tag) for w, tag in para]
        pairs = [(to_simplified(w) if simplified else w, tag) for w, tag in pairs if w]
        text = "".join(w for w, _ in pairs)
        if not text:
            continue
        cur["texts"].append(text)
        cur["words"].append([w for w, _ in pairs])
        cur["tags"].append([t for _, t in pairs])
        size += len(text)
        if size >= block_chars:
            blocks.append(cur)
            cur, size = {"texts": [], "words": [], "tags": []}, 0
    if cur["texts"]:
        blocks.append(cur)
    return blocks


def clean_and_dedupe(
    docs: list[dict], *, min_chars: int, max_chars: int, simplified: bool, valid_frac: float,
    test_frac: float,
) -> tuple[list[dict], dict]:  # fmt: skip
    """Normalised, cut into pieces of at most `max_chars` at sentence ends, pieces under
    `min_chars` and exact duplicates dropped, each piece given its split (by hash, unless its
    document has one); returns the pieces and the counts dropped."""
    dropped = Counter()
    seen = set()
    out = []
    for d in tqdm(docs, desc="clean", mininterval=2):
        text = d["text"] if d["source"] == "peoples_daily" else normalize(d["text"])
        if simplified and d["source"] != "peoples_daily":
            text = to_simplified(text)
        for i, piece in enumerate(cut(text, max_chars)):
            if len(piece) < min_chars:
                dropped["too_short"] += 1
                continue
            if piece in seen:
                dropped["duplicate"] += 1
                continue
            seen.add(piece)
            split = d["split"] or assign_split(piece, valid_frac, test_frac, salt="corpus:")
            doc = d["doc"] if i == 0 else f"{d['doc']}.{i}"
            out.append({"text": piece, "source": d["source"], "doc": doc, "split": split})
    return out, dict(dropped)


def long_documents(blocks: list[dict], sanguo: list[str], *, simplified: bool) -> DatasetDict:
    """三国演义 chapters and People's Daily blocks, held out by chapter / block."""
    rows = {"train": [], "test": []}
    for i, chapter in enumerate(sanguo):
        paragraphs = [normalize(p) for p in chapter.split("\n")]
        paragraphs = [p for p in paragraphs if p]
        title, body = paragraphs[0], "\n".join(paragraphs[1:])
        if simplified:
            body = to_simplified(body)
        split = "test" if assign_split(title, 0.1, 0.0, salt="longdoc:") == "valid" else "train"
        rows[split].append({"text": body, "source": "sanguo", "title": title, "index": i})
    for i, block in enumerate(blocks):
        split = "train" if block["split"] == "train" else "test"
        rows[split].append(
            {
                "text": "\n".join(block["texts"]),
                "source": "peoples_daily",
                "title": f"pd-{i}",
                "index": i,
            }
        )
    feats = Features(
        {
            "text": Value("string"),
            "source": Value("string"),
            "title": Value("string"),
            "index": Value("int64"),
        }
    )
    return DatasetDict(
        {
            s: Dataset.from_dict({k: [x[k] for x in r] for k in feats}, features=feats)
            for s, r in rows.items()
        }
    )


def statistics(by_split: dict[str, list[dict]], longdocs) -> dict:
    """Per-source sizes, length histograms, the most frequent characters and the long documents
    of a corpus split into train / valid / test."""
    per_source = {"chars": Counter(), "documents": Counter()}
    lengths = defaultdict(list)
    chars = Counter()
    for s in SPLITS:
        for d in by_split[s]:
            text, source = d["text"], d["source"]
            per_source["chars"][source] += len(text)
            per_source["documents"][source] += 1
            if s == "train":
                lengths[source].append(len(text))
                chars.update(text)
    hist = {}
    for source, ls in lengths.items():
        edges = np.unique(np.geomspace(1, max(ls) + 1, 40).astype(int))
        counts, edges = np.histogram(ls, bins=edges)
        hist[source] = {
            "edges": edges.tolist(),
            "counts": counts.tolist(),
            "median": float(np.median(ls)),
        }
    return {
        "per_source": {k: dict(v) for k, v in per_source.items()},
        "splits": {
            s: {"documents": len(docs), "chars": sum(len(d["text"]) for d in docs)}
            for s, docs in by_split.items()
        },
        "length_histogram": hist,
        "top_chars": chars.most_common(40),
        "distinct_chars": len(chars),
        "longdocs": {
            s: {"documents": len(longdocs[s]), "chars": sum(map(len, list(longdocs[s]["text"])))}
            for s in longdocs
        },
    }
