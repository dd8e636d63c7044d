"""The labelled tasks, prepared from the registry's sources with fixed splits: review sentiment,
THUCNews topics, MSRA NER and STS-B. Splits go by a hash of the text, so a rerun gives the same
ones; `eval_texts` lists what must never reach a pretraining corpus."""

from __future__ import annotations

from collections import defaultdict

import pyarrow as pa
from datasets import Dataset, DatasetDict, Features, Sequence, Value
from datasets.table import InMemoryTable

from lab.core.text import FOLD, assign_split, bucket, normalize

SPLITS = ("train", "valid", "test")
NER_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
THUCNEWS_LABELS = [
    "education", "entertainment", "finance", "game", "politics",
    "realty", "science", "society", "sports", "stocks",
]  # fmt: skip


def _split_by_hash(items: list, key, eval_frac: float) -> dict[str, list]:
    out = {s: [] for s in SPLITS}
    for item in items:
        out[assign_split(key(item), eval_frac, eval_frac, salt="task:")].append(item)
    return out


def _cap(rows: list, n: int, key) -> list:
    """At most `n` rows (0 = all), a hash-ordered sample so the choice is stable."""
    return rows if not n or len(rows) <= n else sorted(rows, key=lambda r: bucket(key(r)))[:n]


def prepare_tasks(
    raw: dict, *, eval_frac: float, max_train: int, max_eval: int
) -> tuple[dict[str, DatasetDict], dict]:
    """Fixed train/valid/test splits of every labelled task, and facts about their cleaning.
    `eval_frac` of each task goes to valid and to test; `max_train` / `max_eval` cap the splits
    (0: all)."""
    caps = (max_train, max_eval)
    facts = {}
    tasks = {}

    # sentiment: dedupe, drop texts under both labels, split by hash
    labels = defaultdict(set)
    for label, texts in raw["reviews"].items():
        for t in texts:
            t = normalize(t)
            if t:
                labels[t].add(label)
    conflicting = [t for t, ls in labels.items() if len(ls) > 1]
    rows = sorted((t, 1 if "pos" in ls else 0) for t, ls in labels.items() if len(ls) == 1)
    facts["sentiment"] = {
        "raw": sum(len(v) for v in raw["reviews"].values()),
        "unique": len(labels),
        "conflicting_dropped": len(conflicting),
    }
    split = _split_by_hash(rows, lambda r: r[0], eval_frac)
    feats = Features({"text": Value("string"), "label": Value("int64")})
    tasks["sentiment"] = _dataset_dict(
        split, caps, lambda r: {"text": r[0], "label": r[1]}, feats, key=lambda r: r[0]
    )

    # THUCNews headlines: drop lines with U+FFFD (a character was lost), dedupe, split by hash
    seen, rows, lost = set(), [], 0
    for label, title in raw["thucnews"]:
        if "\ufffd" in title:
            lost += 1
            continue
        title = normalize(title)
        if title and title not in seen and label in THUCNEWS_LABELS:
            seen.add(title)
            rows.append((title, THUCNEWS_LABELS.index(label)))
    facts["thucnews"] = {
        "raw": len(raw["thucnews"]),
        "replacement_char_dropped": lost,
        "unique": len(rows),
    }
    split = _split_by_hash(rows, lambda r: r[0], eval_frac)
    tasks["thucnews"] = _dataset_dict(
        split, caps, lambda r: {"text": r[0], "label": r[1]}, feats, key=lambda r: r[0]
    )

    # MSRA NER: the given test set; train split by hash into train / valid; BMES -> BIO
    bio = {}

    def ner_row(sent):
        chars, tags = sent
        # fold full-width forms character by character, so tokens and tags stay aligned
        folded = "".join(chars).translate(FOLD)
        tokens = list(folded) if len(folded) == len(chars) else [c.translate(FOLD) for c in chars]
        return {
            "tokens": tokens,
            "ner_tags": [bio.get(t) or bio.setdefault(t, _bio(t)) for t in tags],
        }

    test_texts = {"".join(c) for c, _ in raw["msra_ner"]["test"]}
    train = [s for s in raw["msra_ner"]["train"] if "".join(s[0]) not in test_texts]
    facts["msra_ner"] = {"train_equal_to_test_dropped": len(raw["msra_ner"]["train"]) - len(train)}
    split = _split_by_hash(train, lambda s: "".join(s[0]), eval_frac / 2)
    split = {
        "train": split["train"],
        "valid": split["valid"] + split["test"],
        "test": raw["msra_ner"]["test"],
    }
    ner_feats = Features(
        {"tokens": Sequence(Value("string")), "ner_tags": Sequence(Value("string"))}
    )
    tasks["msra_ner"] = _dataset_dict(split, caps, ner_row, ner_feats, key=lambda s: "".join(s[0]))

    # STS-B: the given splits
    sts_feats = Features(
        {"sentence1": Value("string"), "sentence2": Value("string"), "score": Value("int64")}
    )
    split = {s: raw["stsb"][{"valid": "valid"}.get(s, s)] for s in SPLITS}
    tasks["stsb"] = _dataset_dict(
        split,
        caps,
        lambda r: {"sentence1": normalize(r[0]), "sentence2": normalize(r[1]), "score": r[2]},
        sts_feats,
        key=lambda r: r[0] + r[1],
    )
    return tasks, facts


def _bio(tag: str) -> str:
    kind, _, ent = tag.partition("-")
    if not ent:
        return "O"
    return ("B-" if kind in ("B", "S") else "I-") + ent


def _dataset_dict(split, caps: tuple[int, int], to_row, features, key) -> DatasetDict:
    out = {}
    for name in SPLITS:
        cap = caps[0] if name == "train" else caps[1]
        rows = [to_row(r) for r in _cap(split[name], cap, key)]
        columns = {k: [r[k] for r in rows] for k in features}
        # straight to Arrow: the values already have the features' types
        out[name] = Dataset(InMemoryTable(pa.table(columns, schema=features.arrow_schema)))
    return DatasetDict(out)


def eval_texts(tasks: dict[str, DatasetDict]) -> dict[str, list[str]]:
    """Every task's valid and test texts, normalised as the corpus is (an NER sentence's characters
    joined): what must never be in the MLM corpus."""
    out = {}
    for name, dd in tasks.items():
        texts = []
        for s in ("valid", "test"):
            columns = dd[s].data.table.to_pydict()  # whole columns, not row by row
            if "text" in columns:
                texts += columns["text"]
            elif "tokens" in columns:
                texts += ["".join(t) for t in columns["tokens"]]
            else:
                texts += columns["sentence1"] + columns["sentence2"]
        out[name] = sorted({normalize(t) for t in texts} - {""})
    return out
