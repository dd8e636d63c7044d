"""Downstream tasks from the corpus stage's labelled data, fine-tuned through the common loop.

sentiment (reviews, 2 classes, accuracy) · thucnews (headlines, 10 classes, accuracy) · msra_ner
(PER/LOC/ORG, entity-level F1 as seqeval counts it) · stsb (sentence pairs 0-5, Spearman, and accuracy
on score >= 4 vs <= 1 pairs). Standard heads: `AutoModelFor{Sequence,Token}Classification`.

The protocol (UER's and MiniRBT's): the learning rate chosen from a small grid on the valid split
with the first seed, then every seed at that rate scored on test, each test example's outcome kept so
that comparisons can carry intervals (`lab.core.stats`). Batches group examples of similar length.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from seqeval.metrics.sequence_labeling import get_entities

from lab.core.finetune import Fit, Fitter
from lab.core.progress import tqdm
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
}


@dataclass(frozen=True)
class Protocol:
    """How every model is fine-tuned and scored."""

    lrs: tuple[float, ...]  # the grid, tried with the first seed and chosen on the valid split
    epochs: float
    seeds: int  # seeds scored on test at the chosen rate (the first one is the grid's run)
    batch_size: int
    seq_len: int  # inputs are cut here; NER is scored on whole sentences (the model's positions)
    train_examples: int
    eval_examples: int
    bf16: bool
    seed: int


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


def metrics(task: Task, runs: list[list[list[float]]]) -> dict:
    """A task's metrics of each run from its outcomes (one definition: `lab.core.stats.scores`)."""
    o = Outcomes.of(task.metric, runs)
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


def ngram_baseline(rows: list[dict], test: list[dict]) -> list[list[float]]:
    """Character 1-3-gram TF-IDF + logistic regression, the non-neural reference, trained on the
    same examples as the models; each test example's outcome."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vec = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), min_df=2, sublinear_tf=True)
    clf = LogisticRegression(max_iter=2000, C=4.0).fit(vec.fit_transform([r["text"] for r in rows]),
                                                       [r["label"] for r in rows])  # fmt: skip
    pred = clf.predict(vec.transform([r["text"] for r in test]))
    return [[float(p == r["label"])] for p, r in zip(pred, test)]


# ---------------------------------------------------------------------------------------------
# the protocol over every model and task


def run_all(models: dict, data: dict, p: Protocol, work: Path, tokenizers: dict, *, workers: int = 1,
            progress=print):  # fmt: skip
    """Every model x task by the protocol: each rate of the grid with the first seed, chosen on valid;
    the other seeds at that rate; every seed scored on test. Fine-tunings run `workers` at a time.
    Returns (results[model][task], outcomes[model][task] = each seed's per-example test outcomes).
    `data` maps a task to its DatasetDict."""
    rows, shared = {}, {"sources": models, "tasks": TASKS, "examples": {}, "pad": {}, "eval_len": {},
                        "batch_size": p.batch_size, "epochs": p.epochs, "bf16": p.bf16, "work": str(work / "finetune")}  # fmt: skip
    for task_name, dd in data.items():
        task = TASKS[task_name]
        rows[task_name] = {
            s: sample(task, dd[s], p.train_examples if s == "train" else p.eval_examples)
            for s in dd
        }
        eval_len = shared["eval_len"][task_name] = (
            512 if task.kind == "tag" else p.seq_len
        )  # whole sentences
        by_vocab: dict[int, dict] = {}  # one encoding per vocabulary
        for name, tok in tokenizers.items():
            vocab_id = hash(frozenset(tok.get_vocab().items()))
            if vocab_id not in by_vocab:
                by_vocab[vocab_id] = {s: encode(task, rows[task_name][s], tok, p.seq_len if s == "train" else eval_len)
                                      for s in ("train", "valid", "test")}  # fmt: skip
            shared["examples"][(task_name, name)] = by_vocab[vocab_id]
            shared["pad"][name] = tok.pad_token_id
    selection = len(p.lrs) > 1
    grid = [Fit(t, m, lr, p.seed, ("valid", "test") if selection else ("test",)) for t in data for m in models
            for lr in p.lrs]  # fmt: skip
    bar = tqdm(
        total=len(data) * len(models) * (len(p.lrs) + p.seeds - 1), desc="fine-tuning", unit="fit"
    )
    with Fitter(shared, workers=workers) as fitter:
        done = fitter.run(grid, lambda f, r: bar.update(1))
        scored = {fit: {s: outcomes(TASKS[fit.task], shared["examples"][(fit.task, fit.model)][s], preds)
                        for s, preds in r["preds"].items()} for fit, r in done.items()}  # fmt: skip
        chosen, tried = {}, {}
        for t in data:
            for m in models:
                on_valid = {lr: scores(Outcomes.of(TASKS[t].metric, [scored[Fit(t, m, lr, p.seed, grid[0].predict)]["valid"]]))[0]
                            if selection else 0.0 for lr in p.lrs}  # fmt: skip
                tried[(t, m)] = {f"{lr:g}": float(v) for lr, v in on_valid.items()}
                chosen[(t, m)] = max(p.lrs, key=lambda lr: on_valid[lr])
        more = [
            Fit(t, m, chosen[(t, m)], p.seed + k)
            for t in data
            for m in models
            for k in range(1, p.seeds)
        ]
        done |= fitter.run(more, lambda f, r: bar.update(1))
    bar.close()
    results: dict[str, dict] = {}
    kept: dict[str, dict] = {}
    for t in data:
        task = TASKS[t]
        for m in models:
            first = Fit(t, m, chosen[(t, m)], p.seed, grid[0].predict)
            fits = [first] + [Fit(t, m, chosen[(t, m)], p.seed + k) for k in range(1, p.seeds)]
            seeds = [scored[first]["test"]] + [
                outcomes(task, shared["examples"][(t, m)]["test"], done[f]["preds"]["test"])
                for f in fits[1:]
            ]
            r = summary(task, seeds) | {"lr": chosen[(t, m)], "grid": tried[(t, m)],
                                        "seconds": round(sum(done[f]["seconds"] for f in fits), 1)}  # fmt: skip
            results.setdefault(m, {})[t] = r
            kept.setdefault(m, {})[t] = seeds
            spread = f" ± {r['std']:.3f}" if len(seeds) > 1 else ""
            progress(
                f"  {t} · {m}: lr {r['lr']:g}, test {task.metric} {r['mean']:.3f}{spread} ({r['seconds']:.0f} s)"
            )
        if task.kind == "classify":
            seeds = [ngram_baseline(rows[t]["train"], rows[t]["test"])]
            results.setdefault("char n-gram LR", {})[t] = summary(task, seeds)
            kept.setdefault("char n-gram LR", {})[t] = seeds
    return results, kept


def summary(task: Task, runs: list) -> dict:
    m = metrics(task, runs)
    values = m[task.metric]
    return {
        "runs": [{k: v[i] for k, v in m.items()} for i in range(len(runs))],
        "mean": float(np.mean(values)),
        "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
        "metric": task.metric,
        "examples": len(runs[0]),
    }
