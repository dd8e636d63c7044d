"""Downstream tasks from the corpus stage's labelled data, fine-tuned through the common loop.

sentiment (reviews, 2 classes, accuracy) · thucnews (headlines, 10 classes, accuracy) · msra_ner
(PER/LOC/ORG, entity-level F1) · stsb (sentence pairs 0-5, Spearman, and accuracy on score >= 4 vs
<= 1 pairs). Standard heads: `AutoModelFor{Sequence,Token}Classification` from each model folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lab.core import train
from lab.core.attention import block_attention
from lab.core.progress import tqdm
from lab.core.taskdata import NER_LABELS


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


# ---------------------------------------------------------------------------------------------
# data


def encode(task: Task, ds, tokenizer, max_length: int) -> list[dict]:
    """Token ids (and labels) per example, truncated to `max_length`."""
    if task.kind == "tag":
        out = []
        for tokens, tags in zip(ds["tokens"], ds["ner_tags"]):
            ids = [
                tokenizer.convert_tokens_to_ids(t.lower()) if t.strip() else tokenizer.unk_token_id
                for t in tokens
            ]
            ids = ids[: max_length - 2]
            labels = [NER_LABELS.index(t) for t in tags][: max_length - 2]
            out.append(
                {
                    "input_ids": [tokenizer.cls_token_id, *ids, tokenizer.sep_token_id],
                    "labels": [-100, *labels, -100],
                }
            )
        return out
    if task.kind == "regress":
        enc = tokenizer(
            list(ds["sentence1"]), list(ds["sentence2"]), truncation=True, max_length=max_length
        )
        labels = [float(s) for s in ds["score"]]
    else:
        enc = tokenizer(list(ds["text"]), truncation=True, max_length=max_length)
        labels = list(ds["label"])
    return [
        {"input_ids": i, "token_type_ids": t, "labels": y}
        for i, t, y in zip(enc["input_ids"], enc["token_type_ids"], labels)
    ]


def collate(examples: list[dict], pad_id: int) -> dict:
    width = max(len(e["input_ids"]) for e in examples)
    n = len(examples)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    types = torch.zeros((n, width), dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    tag = isinstance(examples[0]["labels"], list)
    labels = torch.full((n, width), -100, dtype=torch.long) if tag else None
    for b, e in enumerate(examples):
        k = len(e["input_ids"])
        ids[b, :k] = torch.tensor(e["input_ids"])
        mask[b, :k] = 1
        if "token_type_ids" in e:
            types[b, :k] = torch.tensor(e["token_type_ids"])
        if tag:
            labels[b, :k] = torch.tensor(e["labels"])
    if not tag:
        y = [e["labels"] for e in examples]
        labels = torch.tensor(y, dtype=torch.float if isinstance(y[0], float) else torch.long)
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask, "labels": labels}


class TaskBatches:
    """Shuffled fine-tuning batches, a pure function of (index, rank, world)."""

    def __init__(self, examples: list[dict], batch_size: int, seed: int, pad_id: int):
        self.examples, self.batch_size, self.seed, self.pad_id = examples, batch_size, seed, pad_id

    def __call__(self, index: int, rank: int = 0, world: int = 1) -> dict:
        n = len(self.examples)
        start = (index * world + rank) * self.batch_size
        epoch = start // n
        perm = np.random.default_rng([self.seed, epoch]).permutation(n)
        rows = [perm[(start + j) % n] for j in range(self.batch_size)]
        return collate([self.examples[r] for r in rows], self.pad_id)


class Finetune(torch.nn.Module):
    """A task model whose forward returns {"loss"} for the training loop."""

    def __init__(self, model, task: Task):
        super().__init__()
        self.model, self.task = model, task

    def forward(self, **batch):
        return {"loss": self.model(**batch).loss}


# ---------------------------------------------------------------------------------------------
# models, training and metrics


def task_model(source, task: Task, *, seed: int, max_length: int):
    """A task head on a pretrained model folder, or on an untrained config (scratch baseline)."""
    from transformers import (
        AutoConfig,
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
    )

    torch.manual_seed(seed)
    auto = (
        AutoModelForTokenClassification
        if task.kind == "tag"
        else AutoModelForSequenceClassification
    )
    kwargs = {"num_labels": task.num_labels}
    if task.kind == "regress":
        kwargs["problem_type"] = "regression"
    if isinstance(source, (str, Path)):
        cfg = AutoConfig.from_pretrained(str(source), **kwargs)
        _short_window(cfg, max_length)
        model = auto.from_pretrained(str(source), config=cfg)
    else:  # a config: train from scratch
        cfg = source.__class__.from_dict({**source.to_dict(), **kwargs})
        _short_window(cfg, max_length)
        model = auto.from_config(cfg)
    if cfg.model_type == "longformer":
        block_attention(model)
    return model


def _short_window(cfg, max_length: int) -> None:
    """Task inputs fit in one window: a Longformer reads them with the smallest window that still
    covers the whole input (window >= 2 x length), which computes the same and costs less."""
    if cfg.model_type == "longformer":
        w = 2 * max_length
        cfg.attention_window = [min(a, w + w % 2) for a in cfg.attention_window]


def finetune(
    model,
    task: Task,
    train_examples: list[dict],
    cfg,
    out_dir: Path,
    seed: int,
    pad_id: int,
    *,
    lr: float,
) -> dict:
    steps = max(1, int(cfg.epochs * len(train_examples) / cfg.batch_size))
    tc = train.TrainConfig(
        steps=steps, lr=lr, warmup_steps=max(1, int(0.1 * steps)), bf16=cfg.bf16,
        checkpoints=False, log_every=max(1, steps // 10), seed=seed, weight_decay=0.01,
    )  # fmt: skip
    return train.train(
        Finetune(model, task), TaskBatches(train_examples, cfg.batch_size, seed, pad_id), tc, out_dir,
        desc=f"{task.name} {out_dir.parent.name}",
        count_tokens=lambda b: int(b["attention_mask"].sum()),
    )  # fmt: skip


@torch.no_grad()
def predict(
    model, examples: list[dict], pad_id: int, batch_size: int = 64, bf16: bool = True
) -> list:
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(examples), batch_size):
        batch = collate(examples[start : start + batch_size], pad_id)
        labels = batch.pop("labels")
        with train.autocast(device, bf16):
            logits = model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu()
        if logits.shape[-1] == 1 and logits.dim() == 2:
            out += logits[:, 0].tolist()
        elif logits.dim() == 3:
            for row, lab in zip(logits.argmax(-1), labels):
                out.append(row[lab != -100].tolist())
        else:
            out += logits.argmax(-1).tolist()
    return out


def entities(tags: list[str]) -> set[tuple[int, int, str]]:
    """(start, end, type) spans of a BIO sequence; an I- without its B- starts an entity."""
    spans, start, kind = set(), None, None
    for i, t in enumerate([*tags, "O"]):
        if t == "O" or t.startswith("B-") or (t.startswith("I-") and t[2:] != kind):
            if start is not None:
                spans.add((start, i, kind))
            start, kind = (i, t[2:]) if t != "O" else (None, None)
    return spans


def score(task: Task, examples: list[dict], preds: list) -> dict:
    if task.kind == "classify":
        gold = [e["labels"] for e in examples]
        return {"accuracy": float(np.mean([p == g for p, g in zip(preds, gold)]))}
    if task.kind == "regress":
        from scipy.stats import spearmanr

        gold = np.array([e["labels"] for e in examples])
        pred = np.array(preds)
        sel = (gold >= 4) | (gold <= 1)
        rho = spearmanr(pred, gold).statistic
        return {
            "spearman": 0.0 if np.isnan(rho) else float(rho),  # a constant prediction ranks nothing
            "pair_accuracy": float(np.mean((pred[sel] >= 2.5) == (gold[sel] >= 4))),
        }
    tp = fp = fn = 0
    for e, p in zip(examples, preds):
        gold_tags = [NER_LABELS[x] for x in e["labels"] if x != -100]
        g, q = entities(gold_tags), entities([NER_LABELS[x] for x in p])
        tp, fp, fn = tp + len(g & q), fp + len(q - g), fn + len(g - q)
    prec, rec = tp / max(1, tp + fp), tp / max(1, tp + fn)
    return {
        "entity_f1": 2 * prec * rec / max(1e-12, prec + rec),
        "entity_precision": prec,
        "entity_recall": rec,
    }


def ngram_baseline(task: Task, train_ds, test_ds) -> dict:
    """Character 1-3-gram TF-IDF + logistic regression: the non-neural reference."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vec = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), min_df=2, sublinear_tf=True)
    x = vec.fit_transform(list(train_ds["text"]))
    clf = LogisticRegression(max_iter=2000, C=4.0)
    clf.fit(x, list(train_ds["label"]))
    pred = clf.predict(vec.transform(list(test_ds["text"])))
    return {"accuracy": float(np.mean(pred == np.array(test_ds["label"])))}


def run_all(models: dict, task_dirs: dict, cfg, work: Path, tokenizers: dict) -> dict:
    """Every model x task x seed; returns results[model][task] = {"runs": [...], "mean", "spread"}.

    With several learning rates in `cfg.lrs` each is tried and the one best on the valid split is
    reported on test (the gpu profile's small grid); with one, the valid split is not used."""
    from datasets import load_from_disk

    results: dict[str, dict] = {}
    for task_name in cfg.tasks:
        task = TASKS[task_name]
        dd = load_from_disk(str(task_dirs[task_name]))
        train_ds = dd["train"].select(range(min(cfg.task_train_examples, len(dd["train"]))))
        valid_ds = dd["valid"].select(range(min(cfg.task_eval_examples, len(dd["valid"]))))
        test_ds = dd["test"].select(range(min(cfg.task_eval_examples, len(dd["test"]))))
        for name, source in tqdm(list(models.items()), desc=f"fine-tune {task_name}"):
            tok = tokenizers[name]
            tr, te = (
                encode(task, train_ds, tok, cfg.task_seq_len),
                encode(task, test_ds, tok, cfg.task_seq_len),
            )
            va = encode(task, valid_ds, tok, cfg.task_seq_len) if len(cfg.lrs) > 1 else None
            runs_ = []
            for k in range(cfg.seeds):
                seed = cfg.seed + k
                best = None
                for lr in cfg.lrs:
                    out = work / "finetune" / name / task_name / f"s{seed}-lr{lr:g}"
                    model = task_model(source, task, seed=seed, max_length=cfg.task_seq_len)
                    finetune(model, task, tr, cfg, out, seed, tok.pad_token_id, lr=lr)
                    on_valid = (
                        score(task, va, predict(model, va, tok.pad_token_id, bf16=cfg.bf16))[
                            task.metric
                        ]
                        if va
                        else 0.0
                    )
                    if best is None or on_valid > best[0]:
                        best = (
                            on_valid,
                            lr,
                            score(task, te, predict(model, te, tok.pad_token_id, bf16=cfg.bf16)),
                        )
                runs_.append({**best[2], "lr": best[1]})
            values = [r[task.metric] for r in runs_]
            results.setdefault(name, {})[task_name] = {
                "runs": runs_,
                "mean": float(np.mean(values)),
                "spread": float(np.max(values) - np.min(values)) if len(values) > 1 else 0.0,
                "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                "metric": task.metric,
            }
        if task.kind == "classify":
            r = ngram_baseline(task, train_ds, test_ds)
            results.setdefault("char n-gram LR", {})[task_name] = {
                "runs": [r], "mean": r["accuracy"], "spread": 0.0, "std": 0.0, "metric": "accuracy",
            }  # fmt: skip
    return results
