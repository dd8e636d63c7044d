"""The reference recipes' claims, checked on a run's own numbers with their noise.

Every claim reads "A - ratio x B > margin" over the downstream tasks (the mean of the tasks, and
each task): its difference, a 95% interval from a bootstrap over the test examples (paired) and
the runs of each side (fine-tuning seeds, and distillation seeds where a side has several), and a
verdict read from the interval: holds, does not hold, or inconclusive. Ablations compare this run's
teacher with another run's whose parameters differ in exactly that one place, on the same examples.
"""

from __future__ import annotations

import re

from lab import runs
from lab.core.files import read_json
from lab.core.stats import Outcomes, compare
from lab.core.tasks import TASKS

OUTCOMES = (
    "outcomes.json"  # in the evaluate stage's folder: per model and task, each run's outcomes
)

# the ablation claims: (the one parameter that differs, the value the claim favours, claim, margin)
ABLATIONS = (
    ("pretrain.masking", "wwm", "whole-word masking beats token-level masking", 0.0),
    (
        "pretrain.vocab",
        "compact",
        "the compact vocabulary keeps the full vocabulary's score",
        -0.01,
    ),
)
# parameters that do not change the teacher or how it is scored
NOT_THE_TEACHER = {"run_id", "profile", "models", "scratch", "all_seeds", "lm_sequences", "speed_repeats",
                   "probes_file", "seed"}  # fmt: skip


def kind(name: str) -> str:
    """A model's kind, its name without the distillation seed: `two-stage-s1234` -> `two-stage`."""
    return re.sub(r"-s\d+$", "", name)


def group(outcomes: dict, names: list[str], tasks: list[str] | None = None) -> dict[str, Outcomes]:
    """The runs of several models (a student's distillation seeds) pooled, per task."""
    out = {}
    for task in tasks or sorted({t for n in names for t in outcomes.get(n, {})}):
        runs_ = [r for n in names for r in outcomes.get(n, {}).get(task, [])]
        if runs_:
            out[task] = Outcomes.of(TASKS[task].metric, runs_)
    return out


def claim(text: str, a: str, b: str, result: dict) -> dict:
    return {"claim": text, "a": a, "b": b, **result}


def findings(run_id: str, outcomes: dict, rows: dict, params: dict) -> dict:
    """Every claim this run can check. `rows` are the models' measurements (speed), `params` this
    evaluate stage's parameters (its manifest is not written yet)."""
    out = {}
    students = {k: sorted(n for n in outcomes if kind(n) == k) for k in ("one-stage", "two-stage")}
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
        found = claim(c, f"{kind(best[0])} students", "teacher",
                      compare(group(outcomes, best), group(outcomes, ["teacher"]), ratio=0.85))  # fmt: skip
        found["speedup"] = speedup(rows, best[0])
        out[c] = found
    if students["one-stage"] and students["two-stage"]:
        c = "two-stage distillation beats one-stage"
        out[c] = claim(c, "two-stage students", "one-stage students",
                       compare(group(outcomes, students["two-stage"]), group(outcomes, students["one-stage"])))  # fmt: skip
    if "teacher" in outcomes:
        out |= ablations(run_id, outcomes, params)
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


def teacher_params(run_id: str, evaluate_params: dict | None = None) -> dict | None:
    """Everything that shapes a run's teacher and its scores: corpus, wwm, pretrain and evaluate
    parameters (the evaluate ones given, or read from the run's evaluate manifest)."""
    out = {}
    for stage in ("corpus", "wwm", "pretrain", "evaluate"):
        if stage == "evaluate" and evaluate_params is not None:
            params = evaluate_params
        else:
            m = runs.read_manifest(runs.stage_dir(run_id, stage))
            if not m:
                return None
            params = m["params"]
        out.update({f"{stage}.{k}": v for k, v in params.items() if k not in NOT_THE_TEACHER})
    return out


def ablations(run_id: str, outcomes: dict, evaluate_params: dict) -> dict:
    """This run's teacher against every other run's whose parameters differ in exactly one of the
    ABLATIONS (say `python -m lab run --run-id cpu-wwm -p pretrain.masking=wwm`), on the same test
    examples: the favoured side minus the other, with its interval."""
    mine = teacher_params(run_id, evaluate_params)
    root = runs.data_dir() / "runs"
    if mine is None or not root.exists():
        return {}
    out = {}
    for other in sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != run_id):
        theirs = teacher_params(other)
        folder = runs.stage_dir(other, "evaluate")
        if theirs is None or not runs.read_manifest(folder) or not (folder / OUTCOMES).exists():
            continue
        keys = {k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k)}
        for key, favoured, text, margin in ABLATIONS:
            if keys != {key}:
                continue
            sides = {
                mine[key]: (run_id, outcomes),
                theirs[key]: (other, read_json(folder / OUTCOMES)),
            }
            rest = next(v for v in sides if v != favoured)
            a, b = group(sides[favoured][1], ["teacher"]), group(sides[rest][1], ["teacher"])
            if any(a[t].values.shape[1] != b[t].values.shape[1] for t in a.keys() & b.keys()):
                continue  # scored on other examples: no paired comparison
            found = claim(text, f"{favoured} ({sides[favoured][0]})", f"{rest} ({sides[rest][0]})",
                          compare(a, b, margin=margin))  # fmt: skip
            out[text] = found | {"runs_compared": f"{run_id} vs {other}"}
    return out
