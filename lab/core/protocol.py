"""How every model is fine-tuned and scored (UER's and MiniRBT's protocol, with selection kept off test).

Models come in groups (a student kind's distillation runs; the teacher; scratch; ...). For each task
and group the learning rate is chosen from a small grid on the valid split, fine-tuning the group's
first model once per rate with a selection seed that no test run uses; then every model of the
group is fine-tuned at that rate with fresh seeds and scored on test (`seeds` for a model that stands
alone, `student_seeds` for each distilled model, whose distillation run is already the outer level of
replication). Nothing chosen ever sees test. The character n-gram baseline is tuned the same way (C
and n-gram range on valid) and reads what the networks read: each text's first `seq_len - 2`
characters.

Data-efficiency curves repeat the protocol with the first 100, 300, ... training examples (nested
samples) for the teacher, scratch, the student kind that did best on valid, and the n-gram baseline.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product
from pathlib import Path

from lab.core import names
from lab.core.finetune import Fit, Fitter
from lab.core.progress import tqdm
from lab.core.stats import Outcomes, scores
from lab.core.tasks import TASKS, chance, encode, outcomes, sample, summary

SELECTION_SEED = 1000  # added to the protocol's seed: the selection runs' seed, never a test seed
NGRAM_GRID = {"C": (0.25, 1.0, 4.0, 16.0), "ngram": ((1, 2), (1, 3))}


@dataclass(frozen=True)
class Protocol:
    """How every model is fine-tuned and scored."""

    lrs: tuple[float, ...]  # the grid, one selection run per rate, chosen on the valid split
    epochs: float
    seeds: int  # fresh seeds scored on test per model that stands alone (teacher, scratch)
    student_seeds: int  # fresh seeds per distilled model (its distillation run is the outer level)
    batch_size: int
    seq_len: int  # inputs are cut here; NER is scored on whole sentences (the model's positions)
    train_examples: int
    eval_examples: int
    bf16: bool
    seed: int
    curve_sizes: tuple[int, ...] = ()  # smaller training sets for the data-efficiency curves
    curve_tasks: tuple[str, ...] = ()
    length_buckets: bool = False  # batches of similar length (lower scores; see lab.core.finetune)

    def n_seeds(self, model: str) -> int:
        return self.student_seeds if names.is_student(model) else self.seeds


def run_all(models: dict, data: dict, p: Protocol, work: Path, tokenizers: dict, *, workers: int = 1,
            limits: dict | None = None, progress=print) -> dict:  # fmt: skip
    """Every model x task by the protocol, and the data-efficiency curves. `models` maps a name to
    a model folder or a config (scratch), `data` a task to its DatasetDict, `limits` a model to the
    tokens it reads at most (BERT's positions, where inputs are longer). Returns {"results":
    [model][task] summaries, "outcomes": [model][task] each seed's per-example test outcomes,
    "chance": [task], "selection": how each rate was chosen, "curves": [size][model][task] outcomes}."""
    groups: dict[str, list[str]] = {}
    for m in models:
        groups.setdefault(names.kind(m), []).append(m)
    rows, shared = _data(models, data, p, work, tokenizers, limits or {})
    sizes = [n for n in p.curve_sizes if n < p.train_examples]
    curve_tasks = [t for t in p.curve_tasks if t in data]
    sel_seed = p.seed + SELECTION_SEED
    out = {
        "results": {},
        "outcomes": {},
        "chance": {},
        "selection": {},
        "curves": {n: {} for n in sizes},
    }
    bar = tqdm(total=0, desc="fine-tuning", unit="run")

    def run(fits: list[Fit]) -> dict:
        bar.total += len(fits)
        bar.refresh()
        return fitter.run(fits, lambda f, r: bar.update(1))

    with Fitter(shared, workers=workers) as fitter:
        # 1. the rate of every group and task, on valid
        select = [
            Fit(t, g[0], lr, sel_seed, ("valid",))
            for t in data
            for g in groups.values()
            for lr in p.lrs
        ]
        done = run(select if len(p.lrs) > 1 else [])
        rate = {}
        for t, (kind, g) in product(data, groups.items()):
            valid = {lr: _score(t, shared, done[Fit(t, g[0], lr, sel_seed, ("valid",))], g[0]) for lr in p.lrs} \
                if len(p.lrs) > 1 else {p.lrs[0]: None}  # fmt: skip
            rate[(t, kind)] = max(valid, key=lambda lr: valid[lr] if valid[lr] is not None else 0)
            out["selection"].setdefault(kind, {})[t] = {"chosen": rate[(t, kind)], "on_valid": {
                f"{lr:g}": v for lr, v in valid.items()}, "model": g[0], "seed": sel_seed}  # fmt: skip
        # 2. fresh seeds on test; the curves' selection runs
        best = _best_student_kind(out["selection"], groups)
        curve_groups = [k for k in groups if k in (names.TEACHER, names.SCRATCH, best)]
        test = [Fit(t, m, rate[(t, names.kind(m))], p.seed + 1 + k) for t in data for m in models
                for k in range(p.n_seeds(m))]  # fmt: skip
        curve_select = [Fit(t, groups[k][0], lr, sel_seed, ("valid",), n) for n in sizes for t in curve_tasks
                        for k in curve_groups for lr in p.lrs] if len(p.lrs) > 1 else []  # fmt: skip
        done = run(test + curve_select)
        for t in data:
            task = TASKS[t]
            out["chance"][t] = chance(task, shared["examples"][(t, next(iter(models)))]["test"])
            for m in models:
                fits = [
                    Fit(t, m, rate[(t, names.kind(m))], p.seed + 1 + k) for k in range(p.n_seeds(m))
                ]
                seeds = [_outcomes(t, shared, done[f], m) for f in fits]
                r = summary(task, seeds) | {
                    "lr": fits[0].lr,
                    "seconds": round(sum(done[f]["seconds"] for f in fits), 1),
                }
                out["results"].setdefault(m, {})[t] = r
                out["outcomes"].setdefault(m, {})[t] = seeds
                spread = f" ± {r['std']:.3f}" if len(seeds) > 1 else ""
                progress(
                    f"  {t} · {m}: lr {r['lr']:g}, test {task.metric} {r['mean']:.3f}{spread} ({r['seconds']:.0f} s)"
                )
            if task.kind == "classify":
                found = ngram_baseline(rows[t], max_chars=p.seq_len - 2)
                out["results"].setdefault(names.NGRAM, {})[t] = summary(task, [found["test"]]) | {
                    "tuned": found["tuned"]
                }
                out["outcomes"].setdefault(names.NGRAM, {})[t] = [found["test"]]
        # 3. the curves: the rate chosen at each size, fresh seeds on test
        curve_rate = {}
        for n, t, k in product(sizes, curve_tasks, curve_groups):
            key = (n, t, k)
            if len(p.lrs) > 1:
                v = {lr: _score(t, shared, done[Fit(t, groups[k][0], lr, sel_seed, ("valid",), n)], groups[k][0])
                     for lr in p.lrs}  # fmt: skip
                curve_rate[key] = max(v, key=v.get)
            else:
                curve_rate[key] = p.lrs[0]
        curve_test = [Fit(t, m, curve_rate[(n, t, k)], p.seed + 1 + s, ("test",), n) for n, t, k in
                      product(sizes, curve_tasks, curve_groups) for m in groups[k] for s in range(p.n_seeds(m))]  # fmt: skip
        done = run(curve_test)
    bar.close()
    for f in curve_test:
        out["curves"][f.n_train].setdefault(f.model, {}).setdefault(f.task, []).append(
            _outcomes(f.task, shared, done[f], f.model)
        )
    for n, t in product(sizes, curve_tasks):
        if TASKS[t].kind == "classify":
            small = {s: rows[t][s][:n] if s == "train" else rows[t][s] for s in rows[t]}
            out["curves"][n].setdefault(names.NGRAM, {})[t] = [
                ngram_baseline(small, max_chars=p.seq_len - 2)["test"]
            ]
    out["curve_models"] = [m for k in curve_groups for m in groups[k]] + [names.NGRAM]
    return out


def _data(
    models: dict, data: dict, p: Protocol, work: Path, tokenizers: dict, limits: dict
) -> tuple[dict, dict]:
    """Each task's sampled rows, and what every fit reads: one encoding per vocabulary and length."""
    rows = {}
    shared = {"sources": models, "tasks": TASKS, "examples": {}, "pad": {}, "eval_len": {},
              "batch_size": p.batch_size, "epochs": p.epochs, "bf16": p.bf16, "work": str(work / "finetune"),
              "length_buckets": p.length_buckets}  # fmt: skip
    for t, dd in data.items():
        task = TASKS[t]
        rows[t] = {
            s: sample(task, dd[s], p.train_examples if s == "train" else p.eval_examples)
            for s in dd
        }
        eval_len = shared["eval_len"][t] = (
            512 if task.kind == "tag" else p.seq_len
        )  # whole sentences
        by_vocab: dict[tuple, dict] = {}
        for name in models:
            tok, cap = tokenizers[name], limits.get(name, 1 << 30)
            key = (hash(frozenset(tok.get_vocab().items())), cap)
            if key not in by_vocab:
                by_vocab[key] = {s: encode(task, rows[t][s], tok, min(cap, p.seq_len if s == "train" else eval_len))
                                 for s in ("train", "valid", "test")}  # fmt: skip
            shared["examples"][(t, name)] = by_vocab[key]
            shared["pad"][name] = tok.pad_token_id
    return rows, shared


def _outcomes(task: str, shared: dict, result: dict, model: str, split: str = "test") -> list:
    return outcomes(TASKS[task], shared["examples"][(task, model)][split], result["preds"][split])


def _score(task: str, shared: dict, result: dict, model: str) -> float:
    """A selection run's metric on valid."""
    got = _outcomes(task, shared, result, model, "valid")
    return float(scores(Outcomes.of(TASKS[task].metric, [got]))[0])


def _best_student_kind(selection: dict, groups: dict) -> str | None:
    """The student kind whose selection runs scored best on valid, averaged over the tasks."""
    kinds = [k for k in groups if k in names.STUDENT_KINDS]
    if not kinds:
        return None

    def valid_mean(kind: str) -> float:
        best = [
            max((v for v in s["on_valid"].values() if v is not None), default=0.0)
            for s in selection[kind].values()
        ]
        return sum(best) / len(best)

    return max(kinds, key=valid_mean)


def ngram_baseline(rows: dict[str, list[dict]], *, max_chars: int) -> dict:
    """Character n-gram TF-IDF + logistic regression, the non-neural reference: trained on the same
    examples as the models, reading each text's first `max_chars` characters (what a network reads at
    its sequence length), C and the n-gram range chosen on valid. Each test example's outcome, and
    what was chosen."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    def texts(split: str) -> list[str]:
        return [r["text"][:max_chars] for r in rows[split]]

    def labels(split: str) -> list:
        return [r["label"] for r in rows[split]]

    tried = {}
    for c, ngram in product(NGRAM_GRID["C"], NGRAM_GRID["ngram"]):
        vec = TfidfVectorizer(analyzer="char", ngram_range=ngram, min_df=2, sublinear_tf=True)
        clf = LogisticRegression(max_iter=2000, C=c).fit(
            vec.fit_transform(texts("train")), labels("train")
        )
        right = clf.predict(vec.transform(texts("valid"))) == labels("valid")
        tried[(c, ngram)] = (float(right.mean()), vec, clf)
    (c, ngram), (valid, vec, clf) = max(tried.items(), key=lambda kv: kv[1][0])
    pred = clf.predict(vec.transform(texts("test")))
    return {"test": [[float(y_hat == y)] for y_hat, y in zip(pred, labels("test"))],
            "tuned": {"C": c, "ngram_range": list(ngram), "valid_accuracy": valid, "grid": len(tried),
                      "reads_chars": max_chars}}  # fmt: skip
