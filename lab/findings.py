"""The reference recipes' claims, checked on a run's own numbers with their noise.

Every claim reads "A - ratio x B > margin" over the downstream tasks (the mean of the tasks, and
each task): its difference, a 95% interval from a bootstrap over the test examples (paired) and
the runs of each side (fine-tuning seeds, and distillation seeds where a side has several), and a
verdict read from the interval: holds, does not hold, or inconclusive. Claims that compare two runs
are the report layer's (`lab.crossrun`).
"""

from __future__ import annotations

from lab.core import names
from lab.core.stats import Outcomes, compare
from lab.core.tasks import TASKS

OUTCOMES = (
    "outcomes.json"  # in the evaluate stage's folder: per model and task, each run's outcomes
)


def group(outcomes: dict, models: list[str], tasks: list[str] | None = None) -> dict[str, Outcomes]:
    """The runs of several models (a student's distillation seeds) pooled, per task."""
    out = {}
    for task in tasks or sorted({t for n in models for t in outcomes.get(n, {})}):
        runs_ = [r for n in models for r in outcomes.get(n, {}).get(task, [])]
        if runs_:
            out[task] = Outcomes.of(TASKS[task].metric, runs_)
    return out


def claim(text: str, a: str, b: str, result: dict) -> dict:
    return {"claim": text, "a": a, "b": b, **result}


def findings(outcomes: dict, rows: dict) -> dict:
    """Every claim this run's evaluate stage can check. `rows` are the models' measurements (speed)."""
    out = {}
    students = {k: sorted(n for n in outcomes if names.kind(n) == k) for k in names.STUDENT_KINDS}
    if "teacher" in outcomes and "scratch" in outcomes:
        c = "pretraining beats training from scratch"
        out[c] = claim(
            c,
            "teacher",
            "scratch",
            compare(group(outcomes, ["teacher"]), group(outcomes, ["scratch"])),
        )
    if "teacher" in outcomes and "char n-gram LR" in outcomes:
        c = "the pretrained teacher beats the character n-gram baseline"
        tasks = sorted(outcomes["char n-gram LR"])  # the classification tasks
        out[c] = claim(c, "teacher", "char n-gram LR",
                       compare(group(outcomes, ["teacher"], tasks), group(outcomes, ["char n-gram LR"], tasks)))  # fmt: skip
    best = students["two-stage"] or students["one-stage"]
    if "teacher" in outcomes and best:
        c = "the distilled students keep 85% of the teacher's score"
        found = claim(c, f"{names.kind(best[0])} students", "teacher",
                      compare(group(outcomes, best), group(outcomes, ["teacher"]), ratio=0.85))  # fmt: skip
        found["speedup"] = speedup(rows, best[0])
        out[c] = found
    if students["one-stage"] and students["two-stage"]:
        c = "two-stage distillation beats one-stage"
        out[c] = claim(c, "two-stage students", "one-stage students",
                       compare(group(outcomes, students["two-stage"]), group(outcomes, students["one-stage"])))  # fmt: skip
    return out


def speedup(rows: dict, student: str) -> dict | None:
    """The student's latency against the teacher's at batch 1: the ratio of the medians, and the
    range its repeats allow (teacher's quartiles over the student's)."""
    t, s = rows.get("teacher", {}), rows.get(student, {})
    if "latency_ms_b1_iqr" not in t or "latency_ms_b1_iqr" not in s:
        return None
    (t_lo, t_hi), (s_lo, s_hi) = t["latency_ms_b1_iqr"], s["latency_ms_b1_iqr"]
    return {
        "student": student,
        "ratio": t["latency_ms_b1"] / s["latency_ms_b1"],
        "range": [t_lo / s_hi, t_hi / s_lo],
    }
