"""People's Daily's paragraphs grouped into blocks (their gold words kept: the segmenter's score), and
the long documents a corpus keeps: 三国演义's chapters, People's Daily's blocks, a user's long
documents."""

from __future__ import annotations

from lab.core.text import assign_split, bucket, normalize, normalize_many, to_simplified


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
        pairs = zip(normalize_many([w for w, _ in para]), (tag for _, tag in para))
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


def long_documents(blocks: list[dict], sanguo: list[str], user: list[dict], *, simplified: bool,
                   needles=None) -> tuple:  # fmt: skip
    """三国演义 chapters, People's Daily blocks and long documents of the user's sources, held out by
    chapter / block / document; with `needles` (`lab.core.text.Needles`), each document's lines that
    hold, or nearly hold, a task's evaluation text taken out. Returns (DatasetDict, ids of the
    evaluation texts found)."""
    from datasets import Dataset, DatasetDict, Features, Value

    rows = {"train": [], "test": []}
    for i, chapter in enumerate(sanguo):
        paragraphs = [p for p in (normalize(p) for p in chapter.split("\n")) if p]
        title, body = paragraphs[0], "\n".join(paragraphs[1:])
        if simplified:
            body = to_simplified(body)
        split = "test" if assign_split(title, 0.1, 0.0, salt="longdoc:") == "valid" else "train"
        rows[split].append({"text": body, "source": "sanguo", "title": title, "index": i})
    for i, block in enumerate(blocks):
        split = "train" if block["split"] == "train" else "test"
        rows[split].append({"text": "\n".join(block["texts"]), "source": "peoples_daily",
                            "title": f"pd-{i}", "index": i})  # fmt: skip
    for i, doc in enumerate(user):
        split = (
            "test" if assign_split(doc["text"], 0.1, 0.0, salt="longdoc:") == "valid" else "train"
        )
        rows[split].append({**doc, "index": i})
    found: set[int] = set()
    if needles is not None:
        for r in (r for split in rows.values() for r in split):
            r["text"], ids = needles.scrub(r["text"])
            found |= ids
    feats = Features({"text": Value("string"), "source": Value("string"), "title": Value("string"),
                      "index": Value("int64")})  # fmt: skip
    splits = {
        s: Dataset.from_dict({k: [x[k] for x in r] for k in feats}, features=feats)
        for s, r in rows.items()
    }
    return DatasetDict(splits), found
