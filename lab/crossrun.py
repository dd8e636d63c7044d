"""Comparisons across runs, made when a run's index and notebook 06 are rendered (never stored in a
stage's manifest, whose content depends on its declared inputs only).

Ablations compare this run's teacher with another run's whose parameters differ in exactly one of
the ABLATIONS, on the same test examples; `compare_runs` lays the headline numbers of several runs
side by side with the parameters in which they differ. Both read the runs' manifests and outcomes.
"""

from __future__ import annotations

import json

from lab import runs
from lab.core import names
from lab.core.files import read_json
from lab.core.stats import compare
from lab.findings import OUTCOMES, arm, claim

# the ablation claims: (the one parameter that differs, the value the claim favours, the recipe's
# claim, the claim for the two teachers at hand, margin)
ABLATIONS = (
    ("pretrain.masking", "wwm", "whole-word masking beats token-level masking",
     "this whole-word-masked teacher beats this token-masked one", 0.0),
    ("pretrain.vocab", "compact", "the compact vocabulary keeps the full vocabulary's score",
     "this compact-vocabulary teacher keeps this full-vocabulary teacher's score", -0.01),
)  # fmt: skip
# parameters that do not change the teacher or how it is scored
NOT_THE_TEACHER = {"run_id", "profile", "models", "scratch", "all_seeds", "lm_sequences", "speed_repeats",
                   "probes_file", "seed", "task_models", "workers", "curve_sizes", "curve_tasks",
                   "student_seeds", "compare"}  # fmt: skip
# what a parameter's value was, in effect, in runs made before it existed (their manifests lack it)
BEFORE_IT_EXISTED = {
    "evaluate.length_buckets": True,  # fine-tuning sorted pools of 50 batches by length
}


def _params(stage: str, manifest: dict) -> dict:
    """A stage's parameters as `stage.key`, with the values older runs ran with but did not record."""
    older = {k: v for k, v in BEFORE_IT_EXISTED.items() if k.startswith(f"{stage}.")}
    return older | {f"{stage}.{k}": v for k, v in manifest["params"].items()}


def run_ids() -> list[str]:
    root = runs.data_dir() / "runs"
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.exists() else []


def teacher_params(run_id: str) -> dict | None:
    """Everything that shapes a run's teacher and its scores: its corpus, wwm, pretrain and evaluate
    parameters; None unless all four stages are complete."""
    out = {}
    for stage in ("corpus", "wwm", "pretrain", "evaluate"):
        m = runs.read_manifest(runs.stage_dir(run_id, stage))
        if not m:
            return None
        kept = {
            k: v for k, v in _params(stage, m).items() if k.split(".", 1)[1] not in NOT_THE_TEACHER
        }
        out.update(kept)
    return out


def _outcomes(run_id: str) -> dict | None:
    path = runs.stage_dir(run_id, "evaluate") / OUTCOMES
    return read_json(path) if path.exists() else None


def ablations(run_id: str) -> dict:
    """This run's teacher against every other run's whose parameters differ in exactly one of the
    ABLATIONS (say `python -m lab run --run-id cpu-wwm -p pretrain.masking=wwm`), on the same test
    examples: the favoured side minus the other, with its interval."""
    mine = teacher_params(run_id)
    outcomes = _outcomes(run_id)
    if mine is None or not outcomes or names.TEACHER not in outcomes:
        return {}
    out = {}
    for other in (r for r in run_ids() if r != run_id):
        theirs = teacher_params(other)
        if theirs is None or (their_outcomes := _outcomes(other)) is None:
            continue
        keys = {k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k)}
        for key, favoured, recipe, networks, margin in ABLATIONS:
            if keys != {key}:
                continue
            sides = {mine[key]: (run_id, outcomes), theirs[key]: (other, their_outcomes)}
            rest = next(v for v in sides if v != favoured)
            a = arm(
                sides[favoured][1], [names.TEACHER], f"{favoured} ({sides[favoured][0]})", recipe=""
            )
            b = arm(sides[rest][1], [names.TEACHER], f"{rest} ({sides[rest][0]})", recipe="")
            try:
                result = compare(a, b, margin=margin)
            except ValueError:  # scored on other examples: no paired comparison
                continue
            found = claim(recipe, networks, a, b, result, recipe_runs=False,
                          fixed=[f"one pretraining run a side ({run_id}, {other})"])  # fmt: skip
            out[found["claim"]] = found | {"runs_compared": f"{run_id} vs {other}"}
    return out


def compare_runs(ids: list[str] | None = None) -> list[dict]:
    """Headline metrics of several runs side by side, with the parameters in which they differ."""
    rows, params = [], {}
    for rid in ids or run_ids():
        row: dict = {"run": rid}
        for stage in ("pretrain", "distill", "longify", "evaluate"):
            m = runs.read_manifest(runs.stage_dir(rid, stage))
            if not m:
                continue
            params[rid] = params.get(rid, {}) | _params(stage, m)
            mm = m["metrics"]
            if stage == "pretrain":
                row["teacher acc"] = mm["masked_token_accuracy"]
                row["teacher ppl"] = mm["perplexity"]
            elif stage == "distill":
                for student, s in mm["summary"].items():
                    row[f"{student} acc"] = s["acc_mean"]
            elif stage == "longify":
                row["BPC after"] = mm["bpc"].get("longformer_after")
            else:
                row |= {f"avg {k}": v for k, v in mm["average"].items()
                        if k in (names.TEACHER, names.SCRATCH)}  # fmt: skip
        if len(row) > 1:
            rows.append(row)
    keys = sorted({k for p in params.values() for k in p})
    differing = [
        k for k in keys if len({json.dumps(p.get(k), sort_keys=True) for p in params.values()}) > 1
    ]
    for row in rows:
        row["differs in"] = ", ".join(f"{k}={params[row['run']].get(k)}" for k in differing[:6])
    return rows
