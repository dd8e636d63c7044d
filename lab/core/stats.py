"""Comparisons that carry their noise: a claim "A - ratio x B > margin" with its difference, a 95%
interval from a bootstrap that resamples the test examples (paired: the same draw for A and B) and
the runs (seeds) of each side, and a verdict read from the interval.

Outcomes are kept per example, so that every task's metric can be recomputed on a resample:
accuracy from 0/1 correctness, entity F1 from (true positives, false positives, false negatives),
Spearman's rho from (prediction, gold) pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HOLDS, FAILS, OPEN = "holds", "does not hold", "inconclusive"


@dataclass(frozen=True)
class Outcomes:
    """One model's test-set outcomes on one task: `values` (runs, examples, k)."""

    metric: str  # "accuracy" | "entity_f1" | "spearman"
    values: np.ndarray

    @classmethod
    def of(cls, metric: str, runs: list[list]) -> Outcomes:
        arr = np.asarray(runs, dtype=np.float64)
        return cls(metric, arr.reshape(arr.shape[0], arr.shape[1], -1))


def scores(o: Outcomes, idx: np.ndarray | None = None) -> np.ndarray:
    """The metric of each run (on the examples `idx`, by default all): shape (runs,)."""
    v = o.values if idx is None else o.values[:, idx]
    if o.metric == "entity_f1":
        tp, fp, fn = v.sum(axis=1).T
        return 2 * tp / np.maximum(1, 2 * tp + fp + fn)
    if o.metric == "spearman":
        return np.array([_spearman(run[:, 0], run[:, 1]) for run in v])
    return v[:, :, 0].mean(axis=1)


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    rx, ry = _ranks(x), _ranks(y)
    sx, sy = rx.std(), ry.std()
    return (
        0.0
        if sx == 0 or sy == 0
        else float(((rx - rx.mean()) * (ry - ry.mean())).mean() / (sx * sy))
    )


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share theirs), as Spearman's rho needs."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x))
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return (sums / counts)[inverse]


def compare(a: dict[str, Outcomes], b: dict[str, Outcomes], *, margin: float = 0.0, ratio: float = 1.0,
            n_boot: int = 2000, seed: int = 0) -> dict:  # fmt: skip
    """The claim mean over tasks of (A - ratio x B) > margin, on the tasks both sides have.

    Each bootstrap draw resamples every task's test examples (one draw for both sides) and each
    side's runs; the interval is the draws' 2.5th and 97.5th percentiles of the difference
    A - ratio x B - margin. Per task too."""
    tasks = sorted(set(a) & set(b))
    if not tasks:
        return {"verdict": OPEN, "difference": None, "ci95": None, "reason": "no task in common"}
    for t in tasks:
        if a[t].values.shape[1] != b[t].values.shape[1]:
            raise ValueError(f"{t}: the two sides were scored on different examples")
    rng = np.random.default_rng(seed)
    draws = np.zeros((n_boot, len(tasks)))
    for i in range(n_boot):
        for j, t in enumerate(tasks):
            n = a[t].values.shape[1]
            idx = rng.integers(0, n, n)
            ra = rng.integers(0, a[t].values.shape[0], a[t].values.shape[0])
            rb = rng.integers(0, b[t].values.shape[0], b[t].values.shape[0])
            draws[i, j] = scores(a[t], idx)[ra].mean() - ratio * scores(b[t], idx)[rb].mean()
    observed = np.array([scores(a[t]).mean() - ratio * scores(b[t]).mean() for t in tasks])
    out = _verdict(observed.mean() - margin, draws.mean(axis=1) - margin)
    out["per_task"] = {
        t: _verdict(observed[j] - margin, draws[:, j] - margin) for j, t in enumerate(tasks)
    }
    out |= {
        "score_a": {t: float(scores(a[t]).mean()) for t in tasks},
        "score_b": {t: float(scores(b[t]).mean()) for t in tasks},
        "runs": {"a": int(a[tasks[0]].values.shape[0]), "b": int(b[tasks[0]].values.shape[0])},
        "examples": {t: int(a[t].values.shape[1]) for t in tasks},
        "margin": margin,
        "ratio": ratio,
        "resamples": n_boot,
    }
    return out


def _verdict(difference: float, draws: np.ndarray) -> dict:
    lo, hi = (float(q) for q in np.percentile(draws, [2.5, 97.5]))
    verdict = HOLDS if lo > 0 else FAILS if hi < 0 else OPEN
    return {"difference": float(difference), "ci95": [lo, hi], "verdict": verdict}


def paired(a: np.ndarray, b: np.ndarray, *, n_boot: int = 2000, seed: int = 0) -> dict:
    """The mean of a - b over paired units (documents, say) with a bootstrap interval."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), (n_boot, len(a)))
    return _verdict(float((a - b).mean()), (a - b)[idx].mean(axis=1))


def line(f: dict) -> str:
    """A finding in one line: claim, difference, interval, verdict."""
    if f.get("difference") is None:
        return f"{f['claim']}: {f['verdict']} ({f.get('reason', 'no numbers')})"
    lo, hi = f["ci95"]
    digits = 3 if max(abs(lo), abs(hi)) >= 0.01 else 4  # a fourth decimal inside +-0.01
    return (f"{f['claim']}: {f['verdict']} ({f['difference']:+.{digits}f}, "
            f"95% interval [{lo:+.{digits}f}, {hi:+.{digits}f}])")  # fmt: skip
