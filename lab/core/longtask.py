"""A long-document task whose answer can lie past 512 tokens: find the headline in the haystack.

Each document is a stretch of 三国演义 (classical prose with no news topic in it) with one THUCNews
headline, the needle, set in at a random sentence boundary; the label is the headline's topic. A
reader that sees only the first 512 tokens can do no better than chance when the needle lies past
them; a reader of the whole document can. Splits go by source: training documents are cut from the
chapters longify trains on and carry THUCNews training headlines; valid and test documents come from
the held-out chapters (by a hash of the title) and carry the task's valid and test headlines, which
the pretraining corpus never held.
"""

from __future__ import annotations

import numpy as np
from datasets import Dataset, DatasetDict, Features, Value

from lab.core.text import assign_split

FEATURES = Features({"text": Value("string"), "label": Value("int64"), "needle_at": Value("int64"),
                     "needle_chars": Value("int64"), "source": Value("string")})  # fmt: skip


def build(longdocs: DatasetDict, thucnews: DatasetDict, *, chars: int, n_train: int, n_eval: int,
          seed: int) -> DatasetDict:  # fmt: skip
    """Documents of about `chars` characters: `n_train` for training, `n_eval` each for valid and
    test. `needle_at` is the headline's first character in the document, `needle_chars` its length."""
    chapters = {"train": [], "valid": [], "test": []}
    for split in longdocs:
        for r in longdocs[split]:
            if r["source"] != "sanguo" or len(r["text"]) < chars:
                continue
            if split == "train":
                chapters["train"].append(r)
            else:  # the held-out chapters: half for valid, half for test
                chapters[
                    "valid"
                    if assign_split(r["title"], 0.5, 0.0, salt="longtask:") == "valid"
                    else "test"
                ].append(r)
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", n_train), ("valid", n_eval), ("test", n_eval)):
        needles = thucnews[split]
        if not chapters[split] or not len(needles):
            out[split] = Dataset.from_dict({k: [] for k in FEATURES}, features=FEATURES)
            continue
        rows = []
        for i in rng.permutation(len(needles))[:n]:
            needle = needles[int(i)]
            chapter = chapters[split][int(rng.integers(len(chapters[split])))]
            body_len = chars - len(needle["text"])
            start = int(rng.integers(0, len(chapter["text"]) - body_len + 1))
            body = chapter["text"][start : start + body_len].replace("\n", "")
            at = _boundary(body, int(rng.integers(0, len(body) + 1)))
            rows.append({"text": body[:at] + needle["text"] + body[at:], "label": needle["label"], "needle_at": at,
                         "needle_chars": len(needle["text"]), "source": chapter["title"]})  # fmt: skip
        out[split] = Dataset.from_dict(
            {k: [r[k] for r in rows] for k in FEATURES}, features=FEATURES
        )
    return DatasetDict(out)


def _boundary(text: str, at: int) -> int:
    """The first sentence end at or after `at` (just past its mark), or the end of the text."""
    for i in range(at, len(text)):
        if text[i] in "。！？":
            return i + 1
    return len(text)


def bins(positions: list[int], width: int, top: int) -> list[int]:
    """Each needle position's bin of `width` tokens (the last one holds everything from `top` on)."""
    return [min(p // width, top // width - 1) for p in positions]
