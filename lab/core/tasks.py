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

from lab.core.finetune import finetune, predict, task_model
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


def run_all(models: dict, data: dict, p: Protocol, work: Path, tokenizers: dict, progress=print):
    """Every model x task: each rate of the grid with the first seed, chosen on valid; the other
    seeds at that rate; every seed scored on test. Returns (results[model][task], outcomes[model][task]
    = each seed's per-example test outcomes). `data` maps a task to its DatasetDict."""
    results: dict[str, dict] = {}
    kept: dict[str, dict] = {}
    jobs = tqdm(total=len(data) * len(models), desc="fine-tuning", unit="job")
    for task_name, dd in data.items():
        task = TASKS[task_name]
        rows = {
            s: sample(task, dd[s], p.train_examples if s == "train" else p.eval_examples)
            for s in dd
        }
        eval_len = (
            512 if task.kind == "tag" else p.seq_len
        )  # whole sentences, up to BERT's positions
        encoded: dict[int, dict] = {}  # one encoding per vocabulary
        for name, source in models.items():
            tok = tokenizers[name]
            vocab_id = hash(frozenset(tok.get_vocab().items()))
            if vocab_id not in encoded:
                encoded[vocab_id] = {s: encode(task, rows[s], tok, p.seq_len if s == "train" else eval_len)
                                     for s in ("train", "valid", "test")}  # fmt: skip
            job = Job(
                task,
                source,
                encoded[vocab_id],
                p,
                work / "finetune" / name / task_name,
                tok.pad_token_id,
                eval_len,
            )
            runs, r = job.run()
            jobs.update(1)
            results.setdefault(name, {})[task_name] = r
            kept.setdefault(name, {})[task_name] = runs
            spread = f" ± {r['std']:.3f}" if len(runs) > 1 else ""
            progress(
                f"  {task_name} · {name}: lr {r['lr']:g}, test {task.metric} {r['mean']:.3f}{spread} ({r['seconds']:.0f} s)"
            )
        if task.kind == "classify":
            runs = [ngram_baseline(rows["train"], rows["test"])]
            results.setdefault("char n-gram LR", {})[task_name] = summary(task, runs)
            kept.setdefault("char n-gram LR", {})[task_name] = runs
    jobs.close()
    return results, kept


@dataclass
class Job:
    """One model on one task, by the protocol."""

    task: Task
    source: object  # a model folder, or a config (from scratch)
    data: dict  # encoded train / valid / test examples
    p: Protocol
    folder: Path
    pad_id: int
    eval_len: int

    def fit(self, seed: int, lr: float):
        model = task_model(self.source, self.task, seed=seed, max_length=self.eval_len)
        r = finetune(model, self.data["train"], self.folder / f"s{seed}-lr{lr:g}", batch_size=self.p.batch_size,
                     epochs=self.p.epochs, lr=lr, seed=seed, pad_id=self.pad_id, bf16=self.p.bf16,
                     desc=f"{self.task.name} {self.folder.parent.name}")  # fmt: skip
        return model, r["seconds"]

    def outcomes(self, model, split: str) -> list:
        preds = predict(model, self.data[split], self.pad_id, bf16=self.p.bf16)
        return outcomes(self.task, self.data[split], preds)

    def run(self) -> tuple[list, dict]:
        grid, best, seconds = {}, None, 0.0
        for lr in self.p.lrs:  # the first seed at every rate, chosen on valid
            model, s = self.fit(self.p.seed, lr)
            seconds += s
            on_valid = (
                scores(Outcomes.of(self.task.metric, [self.outcomes(model, "valid")]))[0]
                if len(self.p.lrs) > 1
                else 0.0
            )
            grid[f"{lr:g}"] = float(on_valid)
            if best is None or on_valid > best[0]:
                best = (on_valid, lr, self.outcomes(model, "test"))
        lr, runs = best[1], [best[2]]
        for k in range(1, self.p.seeds):  # the other seeds at the chosen rate
            model, s = self.fit(self.p.seed + k, lr)
            seconds += s
            runs.append(self.outcomes(model, "test"))
        return runs, summary(self.task, runs) | {
            "lr": lr,
            "grid": grid,
            "seconds": round(seconds, 1),
        }


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
