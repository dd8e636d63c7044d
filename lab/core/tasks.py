"""Downstream tasks from the corpus stage's labelled data, fine-tuned through the common loop.

sentiment (reviews, 2 classes, accuracy) · thucnews (headlines, 10 classes, accuracy) · msra_ner
(PER/LOC/ORG, entity-level F1 as seqeval counts it) · stsb (sentence pairs 0-5, Spearman, and accuracy
on score >= 4 vs <= 1 pairs). Standard heads: `AutoModelFor{Sequence,Token}Classification`.

The protocol (UER's and MiniRBT's): the learning rate chosen from a small grid on the valid split
with the first seed, then every seed at that rate scored on test, each test example's outcome kept so
that comparisons can carry intervals (`lab.core.stats`). Batches group examples of similar length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from seqeval.metrics.sequence_labeling import get_entities

from lab.core import train
from lab.core.attention import block_attention
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
    """Fine-tuning batches of examples of similar length (little padding), in a seeded order: each
    epoch shuffles, sorts pools of `pool` batches by length, cuts them into batches and shuffles the
    batches. A pure function of (index, rank, world)."""

    def __init__(
        self, examples: list[dict], batch_size: int, seed: int, pad_id: int, pool: int = 50
    ):
        self.examples, self.batch_size, self.seed, self.pad_id, self.pool = (
            examples,
            batch_size,
            seed,
            pad_id,
            pool,
        )
        self.lengths = np.array([len(e["input_ids"]) for e in examples])
        self.per_epoch = math.ceil(len(examples) / batch_size)
        self._order: dict[int, list[np.ndarray]] = {}

    def _batches(self, epoch: int) -> list[np.ndarray]:
        if epoch not in self._order:
            rng = np.random.default_rng([self.seed, epoch])
            perm = rng.permutation(len(self.examples))
            size = self.pool * self.batch_size
            batches = []
            for start in range(0, len(perm), size):
                chunk = perm[start : start + size]
                chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
                batches += [
                    chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)
                ]
            self._order = {epoch: [batches[i] for i in rng.permutation(len(batches))]}
        return self._order[epoch]

    def __call__(self, index: int, rank: int = 0, world: int = 1) -> dict:
        epoch, j = divmod(index * world + rank, self.per_epoch)
        return collate([self.examples[r] for r in self._batches(epoch)[j]], self.pad_id)


class Finetune(torch.nn.Module):
    """A task model whose forward returns {"loss"} for the training loop."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, **batch):
        return {"loss": self.model(**with_global(self.model, batch)).loss}


def with_global(model, batch: dict) -> dict:
    """A Longformer's inputs with global attention on [CLS], as the longify stage trained it (and
    as transformers' sequence classifier would set it, with a warning, on every call)."""
    if model.config.model_type != "longformer" or "global_attention_mask" in batch:
        return batch
    gm = torch.zeros_like(batch["input_ids"])
    gm[:, 0] = 1
    return batch | {"global_attention_mask": gm}


# ---------------------------------------------------------------------------------------------
# models, training, predictions


def task_model(source, task: Task, *, seed: int, max_length: int):
    """A task head on a pretrained model folder, or on an untrained config (scratch baseline).

    The pretrained encoder's weights are loaded here rather than by `from_pretrained`, so the head
    swap is checked exactly (only the MLM head is left out, only the task head is new) instead of
    reported as a warning on every load."""
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
    names = {i: f"LABEL_{i}" for i in range(task.num_labels)}
    labels = {
        "num_labels": task.num_labels,
        "id2label": names,
        "label2id": {v: k for k, v in names.items()},
    }
    if task.kind == "regress":
        labels["problem_type"] = "regression"
    pretrained = isinstance(source, (str, Path))
    base = AutoConfig.from_pretrained(str(source)) if pretrained else source
    cfg = base.__class__.from_dict({**base.to_dict(), **labels})
    _short_window(cfg, max_length)
    model = auto.from_config(cfg)
    if pretrained:
        swap_head(model, Path(source))
    if cfg.model_type == "longformer":
        block_attention(model)
    return model


def swap_head(model, folder: Path) -> None:
    """Load a masked-LM checkpoint's encoder into a task model: the MLM head's weights are the only
    ones left over and the task head's (with BERT's pooler, which an MLM has not) the only ones
    missing, or this raises."""
    from safetensors.torch import load_file

    state = load_file(str(folder / "model.safetensors"))
    result = model.load_state_dict(state, strict=False)
    prefix = model.base_model_prefix + "."
    stray = [k for k in result.unexpected_keys if k.startswith(prefix)]
    lost = [k for k in result.missing_keys if k.startswith(prefix) and ".pooler." not in k]
    if stray or lost:
        raise ValueError(
            f"{folder}: the encoder's weights do not fit a {type(model).__name__} "
            f"(missing {lost[:3]}, unexpected {stray[:3]}); is it a model of another architecture?"
        )


def _short_window(cfg, max_length: int) -> None:
    """Task inputs fit in one window: a Longformer reads them with the smallest window that still
    covers the whole input (window >= 2 x length), which computes the same and costs less."""
    if cfg.model_type == "longformer":
        w = 2 * max_length
        cfg.attention_window = [min(a, w + w % 2) for a in cfg.attention_window]


def finetune(model, examples: list[dict], p: Protocol, out_dir: Path, seed: int, pad_id: int, *,
             lr: float, desc: str) -> dict:  # fmt: skip
    batches = TaskBatches(examples, p.batch_size, seed, pad_id)
    steps = max(1, math.ceil(p.epochs * batches.per_epoch))
    tc = train.TrainConfig(
        steps=steps, lr=lr, warmup_steps=max(1, int(0.1 * steps)), bf16=p.bf16, checkpoints=False,
        log_every=max(1, steps // 10), seed=seed, weight_decay=0.01, tensorboard=False,
        leave=False,
    )  # fmt: skip
    return train.train(Finetune(model), batches, tc, out_dir, desc=desc)


@torch.no_grad()
def predict(
    model, examples: list[dict], pad_id: int, *, bf16: bool = True, batch_size: int = 128
) -> list:
    """Predictions in the examples' order, computed in batches of similar length."""
    model.eval()
    device = next(model.parameters()).device
    order = np.argsort([len(e["input_ids"]) for e in examples], kind="stable")
    out: list = [None] * len(examples)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch = collate([examples[i] for i in rows], pad_id)
        labels = batch.pop("labels")
        with train.autocast(device, bf16):
            inputs = with_global(model, {k: v.to(device) for k, v in batch.items()})
            logits = model(**inputs).logits.float().cpu()
        for i, row, lab in zip(rows, logits, labels):
            if logits.dim() == 3:  # tags at the labelled (non-special) positions
                out[i] = row.argmax(-1)[lab != -100].tolist()
            else:
                out[i] = float(row[0]) if logits.shape[-1] == 1 else int(row.argmax())
    return out


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
        r = finetune(model, self.data["train"], self.p, self.folder / f"s{seed}-lr{lr:g}", seed, self.pad_id,
                     lr=lr, desc=f"{self.task.name} {self.folder.parent.name}")  # fmt: skip
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
