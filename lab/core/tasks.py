"""Downstream tasks from the corpus stage's labelled data, fine-tuned through the common loop.

sentiment (reviews, 2 classes, accuracy) · thucnews (headlines, 10 classes, accuracy) · msra_ner
(PER/LOC/ORG, entity-level F1 as seqeval counts it) · stsb (sentence pairs 0-5, Spearman, and accuracy
on score >= 4 vs <= 1 pairs). Standard heads: `AutoModelFor{Sequence,Token}Classification`.

How every model is fine-tuned and scored is `lab.core.protocol`; each test example's outcome is
kept so that comparisons can carry intervals (`lab.core.stats`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from seqeval.metrics.sequence_labeling import get_entities

from lab.core.stats import Outcomes, scores
from lab.core.taskdata import NER_LABELS
from lab.core.text import bucket


@dataclass(frozen=True)
class Task:
    name: str
    kind: str  # "classify" | "regress" | "tag"
    num_labels: int
    metric: str  # the headline metric


TASKS = {
    "sentiment": Task("sentiment", "classify", 2, "accuracy"),
    "thucnews": Task("thucnews", "classify", 10, "accuracy"),
    "msra_ner": Task("msra_ner", "tag", len(NER_LABELS), "entity_f1"),
    "stsb": Task("stsb", "regress", 1, "spearman"),
    "longdoc": Task("longdoc", "classify", 10, "accuracy"),  # `lab.core.longtask`
}


# ---------------------------------------------------------------------------------------------
# data


def key(task: Task, row: dict) -> str:
    if task.kind == "tag":
        return "".join(row["tokens"])
    return row["sentence1"] + row["sentence2"] if task.kind == "regress" else row["text"]


def sample(task: Task, ds, n: int):
    """At most `n` rows in the order of their text's hash: a stable sample that is not the first
    rows of a split (the reviews are sorted by text)."""
    rows = ds.to_list()
    if n < len(rows):
        rows = sorted(rows, key=lambda r: bucket(key(task, r)))[:n]
    return rows


def encode(task: Task, rows: list[dict], tokenizer, max_length: int) -> list[dict]:
    """Token ids (and labels) per example, cut to `max_length`."""
    if task.kind == "tag":
        out = []
        for row in rows:
            ids = [tokenizer.convert_tokens_to_ids(t.lower()) if t.strip() else tokenizer.unk_token_id
                   for t in row["tokens"]][: max_length - 2]  # fmt: skip
            labels = [NER_LABELS.index(t) for t in row["ner_tags"]]
            out.append({"input_ids": [tokenizer.cls_token_id, *ids, tokenizer.sep_token_id],
                        "labels": [-100, *labels[: max_length - 2], -100], "gold": labels})  # fmt: skip
        return out
    if task.kind == "regress":
        enc = tokenizer([r["sentence1"] for r in rows], [r["sentence2"] for r in rows], truncation=True,
                        max_length=max_length)  # fmt: skip
        labels = [float(r["score"]) for r in rows]
    else:
        enc = tokenizer([r["text"] for r in rows], truncation=True, max_length=max_length)
        labels = [r["label"] for r in rows]
    if "token_type_ids" not in tokenizer.model_input_names:  # a model without segment embeddings
        return [{"input_ids": i, "labels": y} for i, y in zip(enc["input_ids"], labels)]
    return [{"input_ids": i, "token_type_ids": t, "labels": y}
            for i, t, y in zip(enc["input_ids"], enc["token_type_ids"], labels)]  # fmt: skip


def outcomes(task: Task, examples: list[dict], preds: list) -> list[list[float]]:
    """Each example's outcome: [correct] (classify), [prediction, gold] (regress), or [true
    positives, false positives, false negatives] of its whole sentence's entities (tag; tokens past
    the input's length count as predicted O)."""
    if task.kind == "classify":
        return [[float(p == e["labels"])] for p, e in zip(preds, examples)]
    if task.kind == "regress":
        return [[float(p), float(e["labels"])] for p, e in zip(preds, examples)]
    out = []
    for p, e in zip(preds, examples):
        gold = {tuple(s) for s in get_entities([NER_LABELS[x] for x in e["gold"]])}
        tags = [NER_LABELS[x] for x in p] + ["O"] * (len(e["gold"]) - len(p))
        got = {tuple(s) for s in get_entities(tags)}
        out.append([len(gold & got), len(got - gold), len(gold - got)])
    return out


def metrics(task: Task, seeds: list[list[list[float]]]) -> dict:
    """A task's metrics of each seed from its outcomes (one definition: `lab.core.stats.scores`)."""
    o = Outcomes.of(task.metric, seeds)
    out = {task.metric: scores(o).tolist()}
    if task.kind == "tag":
        tp, fp, fn = o.values.sum(axis=1).T
        out["entity_precision"] = (tp / np.maximum(1, tp + fp)).tolist()
        out["entity_recall"] = (tp / np.maximum(1, tp + fn)).tolist()
    if task.kind == "regress":
        pred, gold = o.values[..., 0], o.values[..., 1]
        sel = (gold[0] >= 4) | (gold[0] <= 1)
        out["pair_accuracy"] = [
            float(np.mean((p[sel] >= 2.5) == (gold[0][sel] >= 4))) for p in pred
        ]
    return out


def chance(task: Task, examples: list[dict]) -> float:
    """The score guessing earns: the majority class's share for a classification task (of these
    examples), 0 for entity F1 and Spearman's rho."""
    if task.kind != "classify":
        return 0.0
    labels = [e["labels"] for e in examples]
    return max(labels.count(y) for y in set(labels)) / len(labels)


def summary(task: Task, seeds: list) -> dict:
    """A task's metrics over fine-tuning seeds: each seed's (kept under "runs"), mean and spread."""
    m = metrics(task, seeds)
    values = m[task.metric]
    return {
        "runs": [{k: v[i] for k, v in m.items()} for i in range(len(seeds))],
        "mean": float(np.mean(values)),
        "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
        "metric": task.metric,
        "examples": len(seeds[0]),
    }
