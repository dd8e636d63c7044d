"""What a corpus holds, counted a batch at a time as it is built: documents and characters per source
and split, piece lengths, the training characters (for the vocabulary), character classes."""

from __future__ import annotations

from collections import Counter

import numpy as np

from lab.core.text import FOLD, KEEP_FULLWIDTH, alnum_runs, is_cjk

SPLITS = ("train", "valid", "test")


class CorpusStats:
    """What the corpus report shows, counted a batch at a time: sizes per source and split, piece
    lengths per source (train), the training characters."""

    def __init__(self, max_chars: int):
        self.max_chars = max_chars
        self.chars = {s: Counter() for s in ("per_source", *SPLITS)}
        self.docs = {s: Counter() for s in ("per_source", *SPLITS)}
        self.lengths: dict[str, np.ndarray] = {}
        self.train_chars: Counter = Counter()
        self.train_runs: Counter = Counter()  # runs of letters and digits, for WordPiece counts
        self.overlap: set[int] = set()

    def add(self, split: str, texts: list[str], sources: list[str]) -> None:
        lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
        for source in set(sources):
            at = np.asarray([s == source for s in sources])
            n, c = int(at.sum()), int(lengths[at].sum())
            for key in ("per_source", split):
                self.docs[key][source] += n
                self.chars[key][source] += c
            if split == "train":
                counts = np.bincount(lengths[at], minlength=self.max_chars + 1)
                prev = self.lengths.get(source)
                self.lengths[source] = counts if prev is None else prev + counts
        if split == "train":
            self.train_chars.update("".join(texts))
            self.train_runs.update(alnum_runs(texts))

    def merge(self, other: CorpusStats) -> None:
        for key in self.chars:
            self.chars[key] += other.chars[key]
            self.docs[key] += other.docs[key]
        for source, counts in other.lengths.items():
            self.lengths[source] = self.lengths.get(source, 0) + counts
        self.train_chars += other.train_chars
        self.train_runs += other.train_runs
        self.overlap |= other.overlap

    def to_json(self) -> dict:
        return {"chars": self.chars, "docs": self.docs, "lengths": {s: c.tolist() for s, c in self.lengths.items()},
                "train_chars": dict(self.train_chars), "train_runs": dict(self.train_runs),
                "overlap": sorted(self.overlap)}  # fmt: skip

    @classmethod
    def from_json(cls, d: dict, max_chars: int) -> CorpusStats:
        stats = cls(max_chars)
        stats.chars = {k: Counter(v) for k, v in d["chars"].items()}
        stats.docs = {k: Counter(v) for k, v in d["docs"].items()}
        stats.lengths = {s: np.asarray(c) for s, c in d["lengths"].items()}
        stats.train_chars, stats.train_runs = Counter(d["train_chars"]), Counter(d["train_runs"])
        stats.overlap = set(d["overlap"])
        return stats

    def histograms(self) -> dict:
        out = {}
        for source, counts in self.lengths.items():
            longest = int(np.flatnonzero(counts).max()) if counts.any() else 1
            edges = np.unique(np.geomspace(1, longest + 1, 40).astype(int))
            binned = [int(counts[a:b].sum()) for a, b in zip(edges[:-1], edges[1:])]
            median = int(np.searchsorted(np.cumsum(counts), counts.sum() / 2))
            out[source] = {"edges": edges.tolist(), "counts": binned, "median": float(median)}
        return out

    def summary(self) -> dict:
        return {
            "per_source": {
                "chars": dict(self.chars["per_source"]),
                "documents": dict(self.docs["per_source"]),
            },
            "splits": {
                s: {"documents": sum(self.docs[s].values()), "chars": sum(self.chars[s].values())}
                for s in SPLITS
            },  # fmt: skip
            "length_histogram": self.histograms(),
            "top_chars": self.train_chars.most_common(40),
            "distinct_chars": len(self.train_chars),
        }


def char_profile(counts: Counter, trad: set[str]) -> dict:
    """Shares of character classes in a character count (what cleaning folds and drops)."""
    total = sum(counts.values()) or 1
    fullwidth = sum(n for c, n in counts.items() if ord(c) in FOLD)
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
