"""Comparisons that carry every source of their noise: a claim "A - ratio x B > margin" with its
difference, a 95% interval and a verdict read from it.

Each side of a comparison is an `Arm`: a list of independently trained units at the outermost level
that has several (distillation runs; for a single pretrained model, its fine-tuning runs), each unit
with the per-example test outcomes of its fine-tuning seeds on every task. The difference is taken
over the tasks' mean. Its variance has two parts, estimated separately and added:

* between units: the sample variance of the units' task-averaged scores over their count, per arm
  (one draw of units serves every task, so a unit that is good on every task counts once; it also
  holds the units' own per-example noise);
* between test examples: a bootstrap over each task's examples, the same draw for both arms (the
  examples are paired), minus the unit-by-example noise the first part already holds (the spread of
  single units' bootstrap scores beyond their mean's, over n - 1).

The interval is the difference +- t x the standard error, with Welch-Satterthwaite degrees of
freedom: three units a side leave few, and the interval widens to say so. A deterministic arm (the
n-gram baseline: one unit, no seed) adds no unit variance. `tests/test_stats.py` checks the coverage
by simulation. Outcomes are kept per example, so that every task's metric can be recomputed on a
resample: accuracy from 0/1 correctness, entity F1 from (true positives, false positives, false
negatives), Spearman's rho from (prediction, gold) pairs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import stats as scipy_stats

HOLDS, FAILS, OPEN = "holds", "does not hold", "inconclusive"
LEVEL = 0.95


@dataclass(frozen=True)
class Outcomes:
    """One model's test-set outcomes on one task: `values` (seeds, examples, k)."""

    metric: str  # "accuracy" | "entity_f1" | "spearman"
    values: np.ndarray

    @classmethod
    def of(cls, metric: str, seeds: list[list]) -> Outcomes:
        arr = np.asarray(seeds, dtype=np.float64)
        return cls(metric, arr.reshape(arr.shape[0], arr.shape[1], -1))


def scores(o: Outcomes, idx: np.ndarray | None = None) -> np.ndarray:
    """The metric of each seed (on the examples `idx`, by default all): shape (seeds,)."""
    v = o.values if idx is None else o.values[:, idx]
    if o.metric == "entity_f1":
        tp, fp, fn = v.sum(axis=1).T
        return 2 * tp / np.maximum(1, 2 * tp + fp + fn)
    if o.metric == "spearman":
        return np.array([_spearman(seed[:, 0], seed[:, 1]) for seed in v])
    return v[:, :, 0].mean(axis=1)


def _boot_scores(o: Outcomes, weights: np.ndarray) -> np.ndarray:
    """The metric of the mean seed on each bootstrap draw: (draws,). `weights` (draws, examples) are
    the draws as counts of each example."""
    v = o.values
    if o.metric == "accuracy":
        return (weights @ v[:, :, 0].mean(axis=0)) / v.shape[1]
    if o.metric == "entity_f1":
        sums = np.einsum("be,sek->bsk", weights, v)  # (draws, seeds, 3)
        tp, fp, fn = sums[..., 0], sums[..., 1], sums[..., 2]
        return (2 * tp / np.maximum(1, 2 * tp + fp + fn)).mean(axis=1)
    idx = np.arange(v.shape[1])
    return np.array([scores(o, np.repeat(idx, w.astype(np.int64))).mean() for w in weights])


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


@dataclass(frozen=True)
class Arm:
    """One side of a comparison: its independently trained units, each a task -> Outcomes mapping
    (its fine-tuning seeds' outcomes). `level` names what a unit is, for the claim's scope."""

    name: str
    units: list[dict[str, Outcomes]]
    level: str  # "distillation run", "fine-tuning run", "deterministic", ...
    deterministic: bool = False  # one unit that training noise cannot change (no unit variance)
    chance: dict[str, float] = field(default_factory=dict)  # per task: the score guessing earns

    @property
    def tasks(self) -> set[str]:
        return set.intersection(*(set(u) for u in self.units)) if self.units else set()

    def seeds(self) -> int:
        """Fine-tuning seeds per unit (the smallest count, if they differ)."""
        return min(u[t].values.shape[0] for u in self.units for t in u)


def compare(a: Arm, b: Arm, *, margin: float = 0.0, ratio: float = 1.0, chance: dict | None = None,
            n_boot: int = 1000, seed: int = 0) -> dict:  # fmt: skip
    """The claim: mean over tasks of [(A - c) - ratio x (B - c)] - margin > 0, where c is each task's
    chance level (`chance`, default 0: raw scores). Its difference, 95% interval, verdict, and per
    task the difference and an unadjusted interval (no verdict: the claim's verdict is its mean)."""
    tasks = sorted(a.tasks & b.tasks)
    if not tasks:
        return {"verdict": OPEN, "difference": None, "ci95": None, "reason": "no task in common"}
    for t in tasks:
        n = {u[t].values.shape[1] for u in (*a.units, *b.units)}
        if len(n) > 1:
            raise ValueError(f"{t}: the two sides were scored on different examples")
    chance = {t: (chance or {}).get(t, 0.0) for t in tasks}
    rng = np.random.default_rng(seed)
    parts = {t: _task_parts(a, b, t, ratio, chance[t], n_boot, rng) for t in tasks}
    overall = _combine([parts[t] for t in tasks], a, b, ratio)
    out = _interval(overall["difference"] - margin, overall)
    out["per_task"] = {t: _interval(p["difference"] - margin, _combine([p], a, b, ratio)) | {"verdict": None}
                       for t, p in parts.items()}  # fmt: skip
    out |= {
        "score_a": {t: parts[t]["a"] for t in tasks},
        "score_b": {t: parts[t]["b"] for t in tasks},
        "chance": chance,
        "units": {"a": len(a.units), "b": len(b.units)},
        "examples": {t: int(a.units[0][t].values.shape[1]) for t in tasks},
        "margin": margin,
        "ratio": ratio,
        "resamples": n_boot,
    }
    return out


def above_chance(a: Arm, chance: dict) -> dict:
    """Arm A's score above chance, mean over its tasks, with its interval: is there anything to
    keep? (The comparison with a copy of itself that counts for nothing.)"""
    nothing = Arm("chance", a.units[:1], level="deterministic", deterministic=True)
    return compare(a, nothing, ratio=0.0, chance=chance)


def _task_parts(a: Arm, b: Arm, t: str, ratio: float, chance: float, n_boot: int, rng) -> dict:
    """One task's pieces: each arm's unit scores, and the example bootstrap's draws of each unit's
    score (the same draws for both arms)."""
    n = a.units[0][t].values.shape[1]
    draws = rng.integers(0, n, (n_boot, n)) + n * np.arange(n_boot)[:, None]
    weights = np.bincount(draws.ravel(), minlength=n_boot * n).reshape(n_boot, n).astype(np.float64)
    unit = {
        side: np.array([scores(u[t]).mean() for u in arm.units])
        for side, arm in (("a", a), ("b", b))
    }
    boot = {side: np.stack([_boot_scores(u[t], weights) for u in arm.units])  # (units, draws)
            for side, arm in (("a", a), ("b", b))}  # fmt: skip
    diff = (unit["a"].mean() - chance) - ratio * (unit["b"].mean() - chance)
    return {"a": float(unit["a"].mean()), "b": float(unit["b"].mean()), "difference": float(diff),
            "unit": unit, "boot": boot}  # fmt: skip


def _combine(parts: list[dict], a: Arm, b: Arm, ratio: float) -> dict:
    """The variance of the tasks' mean difference: between units, and between examples (minus the
    unit-by-example noise the first already holds), with its degrees of freedom."""
    k = len(parts)
    diff = float(np.mean([p["difference"] for p in parts]))
    terms, dfs = [], []
    for side, arm, w in (("a", a, 1.0), ("b", b, ratio)):
        n = len(arm.units)
        if arm.deterministic or n < 2:
            continue
        s = np.mean([p["unit"][side] for p in parts], axis=0)  # units' task-averaged scores
        terms.append(w**2 * s.var(ddof=1) / n)
        dfs.append(n - 1)
    boot_diff = np.mean(
        [p["boot"]["a"].mean(0) - ratio * p["boot"]["b"].mean(0) for p in parts], axis=0
    )
    example = boot_diff.var(ddof=1)
    for side, arm, w in (("a", a, 1.0), ("b", b, ratio)):
        n = len(arm.units)
        if n >= 2:  # the units' own noise across examples, already in the unit term
            single = np.mean([p["boot"][side] for p in parts], axis=0)  # (units, draws)
            example -= (
                w**2 * (single.var(axis=1, ddof=1).mean() - single.mean(0).var(ddof=1)) / (n - 1)
            )
    example = max(0.0, float(example))
    var = sum(terms) + example
    denom = sum(t**2 / d for t, d in zip(terms, dfs))
    df = var**2 / denom if denom > 0 else math.inf
    return {"difference": diff, "var": var, "df": df, "between_units": sum(terms), "between_examples": example,
            "tasks": k}  # fmt: skip


def _interval(difference: float, v: dict) -> dict:
    se = math.sqrt(v["var"])
    q = (
        scipy_stats.t.ppf(0.5 + LEVEL / 2, v["df"])
        if math.isfinite(v["df"])
        else scipy_stats.norm.ppf(0.5 + LEVEL / 2)
    )
    lo, hi = difference - q * se, difference + q * se
    verdict = HOLDS if lo > 0 else FAILS if hi < 0 else OPEN
    return {"difference": float(difference), "ci95": [float(lo), float(hi)], "verdict": verdict, "se": se,
            "df": float(v["df"]), "se_units": math.sqrt(v["between_units"]),
            "se_examples": math.sqrt(v["between_examples"])}  # fmt: skip


def paired(a, b) -> dict:
    """The mean of a - b over paired units (documents, say) with a t interval, and the smallest true
    difference this many units would detect with 80% power at the 5% level."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    n = len(d)
    if n < 2:
        return {"verdict": OPEN, "difference": float(d.mean()) if n else None, "ci95": None,
                "reason": f"{n} paired unit(s): no interval"}  # fmt: skip
    se = d.std(ddof=1) / math.sqrt(n)
    out = _interval(
        float(d.mean()),
        {"var": se**2, "df": n - 1, "between_units": se**2, "between_examples": 0.0},
    )
    out |= {"units": n, "mde80": minimum_detectable(d.std(ddof=1), n)}
    return out


def minimum_detectable(sd: float, n: int, power: float = 0.8) -> float:
    """The true mean difference a paired t test on n units with this spread detects (two-sided 5%)
    with the given power: (t_{0.975, n-1} + t_{power, n-1}) x sd / sqrt(n)."""
    df = max(1, n - 1)
    return float((scipy_stats.t.ppf(0.975, df) + scipy_stats.t.ppf(power, df)) * sd / math.sqrt(n))


def line(f: dict) -> str:
    """A finding in one line: claim, difference, interval, verdict."""
    if f.get("difference") is None or f.get("ci95") is None:
        return f"{f['claim']}: {f['verdict']} ({f.get('reason', 'no numbers')})"
    lo, hi = f["ci95"]
    digits = 3 if max(abs(lo), abs(hi)) >= 0.01 else 4  # a fourth decimal inside +-0.01
    return (f"{f['claim']}: {f['verdict']} ({f['difference']:+.{digits}f}, "
            f"95% interval [{lo:+.{digits}f}, {hi:+.{digits}f}])")  # fmt: skip
