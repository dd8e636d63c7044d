"""The offline corpus: the registry's sources as documents to clean, People's Daily's blocks with their
splits and gold words, and what the registry's text looks like before cleaning."""

from __future__ import annotations

from collections import Counter

from datasets import Dataset, Features, Sequence, Value

from lab.core import sources
from lab.core.blocks import block_splits, pd_blocks
from lab.core.documents import CorpusError, Part
from lab.core.taskdata import eval_texts
from lab.core.text import normalize

CORPUS_SOURCES = ("peoples_daily", "msra_ner", "thucnews", "reviews")
TASK_SOURCES = ("reviews", "thucnews", "msra_ner", "stsb")


def people_daily_blocks(cache_dir: str, *, max_docs: int, block_chars: int, simplified: bool,
                        valid_frac: float, test_frac: float) -> list[dict]:  # fmt: skip
    """People's Daily grouped into blocks with their splits: its held-out blocks are the gold
    segmentation the wwm stage scores against and long documents, whatever the corpus is."""
    paragraphs = sources.load("peoples_daily", cache_dir)
    if max_docs:
        paragraphs = paragraphs[:max_docs]
    blocks = pd_blocks(paragraphs, block_chars=block_chars, simplified=simplified)
    splits = block_splits(["\n".join(b["texts"]) for b in blocks], valid_frac, test_frac)
    for block, split in zip(blocks, splits):
        block["split"] = split
    return blocks


def gold_segmentation(blocks: list[dict]) -> Dataset:
    """The held-out blocks' paragraphs with their gold words and POS tags."""
    rows = [(t, w, g) for b in blocks if b["split"] != "train"
            for t, w, g in zip(b["texts"], b["words"], b["tags"])]  # fmt: skip
    feats = Features({"text": Value("string"), "words": Sequence(Value("string")),
                      "tags": Sequence(Value("string"))})  # fmt: skip
    return Dataset.from_dict({k: [r[i] for r in rows] for i, k in enumerate(feats)}, features=feats)


def registry_parts(names: list[str], raw_tasks: dict, tasks: dict, blocks: list[dict], *,
                   max_docs: int) -> list[Part]:  # fmt: skip
    """The registry's corpus sources among `names` as in-memory parts; each task's evaluation texts
    stay out of the source they came from, People's Daily keeps its blocks' splits."""
    evals = eval_texts({"msra_ner": tasks["msra_ner"], "thucnews": tasks["thucnews"],
                        "reviews": tasks["sentiment"]})  # fmt: skip
    heldout = {name: set(texts) for name, texts in evals.items()}
    parts = []
    for name in (s for s in names if s in sources.REGISTRY):
        if name == "peoples_daily":
            rows = [(f"pd-{b}", text, block["split"])
                    for b, block in enumerate(blocks) for text in block["texts"]]  # fmt: skip
            ids, texts, fixed = zip(*rows) if rows else ((), (), ())
            parts.append(Part(name, "list", texts=texts, fixed=fixed, names=ids))
            continue
        if name not in CORPUS_SOURCES:
            raise CorpusError(
                f"source {name!r} holds no corpus text (it feeds tasks, long documents or the vocab); "
                f"corpus sources are: {', '.join(CORPUS_SOURCES)}, or your own files"
            )
        texts = [t for t in _texts(name, raw_tasks) if normalize(t) not in heldout[name]]
        if max_docs:
            texts = texts[:max_docs]
        ids = tuple(f"{name}-{i}" for i in range(len(texts)))
        parts.append(Part(name, "list", texts=tuple(texts), names=ids))
    return parts


def _texts(name: str, raw_tasks: dict) -> list[str]:
    if name == "msra_ner":
        return ["".join(c) for c, _ in raw_tasks["msra_ner"]["train"]]
    if name == "thucnews":  # a headline with U+FFFD lost a character
        return [t for _, t in raw_tasks["thucnews"] if "\ufffd" not in t]
    return raw_tasks["reviews"]["pos"] + raw_tasks["reviews"]["neg"]


def registry_profile(
    names: list[str], raw_tasks: dict, cache_dir: str, *, max_docs: int
) -> Counter:
    """The characters of the registry's corpus sources among `names` as they ship (before cleaning)."""
    counts: Counter = Counter()
    for name in (s for s in names if s in CORPUS_SOURCES):
        if name == "peoples_daily":
            paragraphs = sources.load("peoples_daily", cache_dir)
            texts = ["".join(w for w, _ in p) for p in paragraphs[: max_docs or None]]
        else:
            texts = _texts(name, raw_tasks)
            if name == "thucnews":  # as shipped, U+FFFD lines included
                texts = [t for _, t in raw_tasks["thucnews"]]
        counts.update("".join(texts))
    return counts
