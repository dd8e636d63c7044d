"""The reference recipes' claims, checked on a run's own numbers with every source of their noise.

Every claim reads "A - ratio x B > margin" over the downstream tasks' mean (retention: the scores
above each task's chance level), with its difference, 95% interval (`lab.core.stats.compare`) and
verdict: holds, does not hold, or inconclusive. Each finding states its scope: which sources of
variation its interval covers (test examples, fine-tuning seeds, distillation runs), with their
counts, and what stays fixed (this run's one pretraining run). A claim about a recipe is worded as
one only when each arm has at least MIN_RUNS independently trained runs of it; with fewer it is
worded for the networks at hand. Per-task rows carry their difference and an unadjusted interval,
and no verdict: the claim's verdict is its task mean. Claims that compare two runs (the ablations)
are the report layer's (`lab.crossrun`).
"""

from __future__ import annotations

from lab.core import names
from lab.core.stats import OPEN, Arm, Outcomes, above_chance, compare
from lab.core.tasks import TASKS

OUTCOMES = (
    "outcomes.json"  # in the evaluate stage's folder: per model and task, each seed's outcomes
)
# units that are one seed's run each, and the variation their spread is
ONE_SEED = {"fine-tuning run": "fine-tuning seeds", "probe run": "probe seeds"}
MIN_RUNS = 3  # independently trained runs per arm before a claim speaks for a recipe
RETENTION = (
    0.85  # MiniRBT's relative-score table: its small students keep about 85-90% (above chance)
)


def seeds_of(
    outcomes: dict, model: str, tasks: list[str] | None = None
) -> list[dict[str, Outcomes]]:
    """One model's fine-tuning runs as units: per seed, task -> Outcomes of that seed alone."""
    per_task = {t: v for t, v in outcomes.get(model, {}).items() if tasks is None or t in tasks}
    n = min((len(v) for v in per_task.values()), default=0)
    return [
        {t: Outcomes.of(TASKS[t].metric, [v[i]]) for t, v in per_task.items()} for i in range(n)
    ]


def runs_of(
    outcomes: dict, models: list[str], tasks: list[str] | None = None
) -> list[dict[str, Outcomes]]:
    """Several models (one kind's distillation runs) as units: per model, task -> all its seeds."""
    out = []
    for m in models:
        per_task = {t: v for t, v in outcomes.get(m, {}).items() if tasks is None or t in tasks}
        if per_task:
            out.append({t: Outcomes.of(TASKS[t].metric, v) for t, v in per_task.items()})
    return out


def arm(
    outcomes: dict, models: list[str], label: str, *, recipe: str, tasks: list[str] | None = None
) -> Arm:
    """An arm for a recipe: its models as units when there are several independent runs of it
    (distillation seeds); a single model's fine-tuning runs otherwise."""
    if len(models) > 1:
        return Arm(label, runs_of(outcomes, models, tasks), level=recipe)
    if models and models[0] == names.NGRAM:
        return Arm(
            label, runs_of(outcomes, models, tasks), level="deterministic", deterministic=True
        )
    return Arm(
        label, seeds_of(outcomes, models[0], tasks) if models else [], level="fine-tuning run"
    )


def scope(a: Arm, b: Arm, result: dict, fixed: list[str]) -> dict:
    """Which sources of variation the interval covers, with their counts, and what stays fixed."""
    sides = {}
    for side, x in (("a", a), ("b", b)):
        seeds = x.seeds() if x.units else 0
        sides[side] = (f"{len(x.units)} {x.level}{'s' * (len(x.units) != 1)}"
                       + (f" x {seeds} fine-tuning seed{'s' * (seeds != 1)}" if x.level not in ONE_SEED
                          and not x.deterministic else ""))  # fmt: skip
    levels = {x.level for x in (a, b) if not x.deterministic}
    covers = ["test examples", *sorted({ONE_SEED.get(lv, "fine-tuning seeds") for lv in levels})]
    covers += sorted(f"{lv}s" for lv in levels if lv not in ONE_SEED)
    return {"a": sides["a"], "b": sides["b"], "examples": result.get("examples", {}), "covers": covers,
            "fixed": fixed}  # fmt: skip


def claim(recipe_text: str, networks_text: str, a: Arm, b: Arm, result: dict, *, recipe_runs: bool,
          fixed: list[str]) -> dict:  # fmt: skip
    """A finding: the recipe's wording when `recipe_runs` (each arm has MIN_RUNS runs of the recipe),
    else the networks' at hand; its numbers, scope and sides."""
    text = recipe_text if recipe_runs else networks_text
    return {"claim": text, "recipe_claim": recipe_text, "speaks_for": "recipe" if recipe_runs else "networks",
            "a": a.name, "b": b.name, **result, "scope": scope(a, b, result, fixed)}  # fmt: skip


def findings(outcomes: dict, rows: dict, chance: dict[str, float]) -> dict:
    """Every claim this run's evaluate stage can check. `rows` are the models' measurements (speed),
    `chance` each task's chance level (the majority class; 0 for entity F1 and Spearman)."""
    out = {}
    kinds = {k: sorted(n for n in outcomes if names.kind(n) == k) for k in names.STUDENT_KINDS}
    one_pretraining = [f"the pretraining run (1: {names.TEACHER})"]
    have = set(outcomes)
    if {names.TEACHER, names.SCRATCH} <= have:
        a = arm(outcomes, [names.TEACHER], "teacher", recipe="pretraining run")
        b = arm(outcomes, [names.SCRATCH], "scratch", recipe="run from scratch")
        found = claim("pretraining beats training from scratch", "this pretrained teacher beats training from scratch",
                      a, b, compare(a, b), recipe_runs=False, fixed=one_pretraining)  # fmt: skip
        out[found["claim"]] = found
    if {names.TEACHER, names.NGRAM} <= have:
        tasks = sorted(outcomes[names.NGRAM])  # the classification tasks
        a = arm(outcomes, [names.TEACHER], "teacher", recipe="pretraining run", tasks=tasks)
        b = arm(outcomes, [names.NGRAM], names.NGRAM, recipe="", tasks=tasks)
        found = claim("pretraining beats a character n-gram baseline",
                      "this pretrained teacher beats the character n-gram baseline",
                      a, b, compare(a, b), recipe_runs=False, fixed=one_pretraining)  # fmt: skip
        out[found["claim"]] = found
    best = max(
        (k for k in names.STUDENT_KINDS if kinds[k]), key=lambda k: (len(kinds[k]), k), default=None
    )
    if names.TEACHER in have and best:
        a = arm(outcomes, kinds[best], f"{best} students", recipe="distillation run")
        b = arm(outcomes, [names.TEACHER], "teacher", recipe="pretraining run")
        pct = f"{RETENTION:.0%}"
        result = compare(a, b, ratio=RETENTION, chance=chance)
        floor = above_chance(b, chance)
        if floor["verdict"] != "holds" and result.get("difference") is not None:
            result |= {
                "verdict": OPEN,
                "reason": "the teacher is not above chance: there is nothing to keep",
            }
        found = claim(f"the distilled students keep {pct} of the teacher's score above chance",
                      f"these {best} students keep {pct} of this teacher's score above chance",
                      a, b, result, recipe_runs=len(kinds[best]) >= MIN_RUNS, fixed=one_pretraining)  # fmt: skip
        found["teacher_above_chance"] = floor
        found["speedup"] = speedup(rows, kinds[best])
        out[found["claim"]] = found
    if kinds["one-stage"] and kinds["two-stage"]:
        a = arm(outcomes, kinds["two-stage"], "two-stage students", recipe="distillation run")
        b = arm(outcomes, kinds["one-stage"], "one-stage students", recipe="distillation run")
        enough = min(len(kinds["one-stage"]), len(kinds["two-stage"])) >= MIN_RUNS
        found = claim("two-stage distillation beats one-stage", "these two-stage students beat these one-stage students",
                      a, b, compare(a, b), recipe_runs=enough, fixed=one_pretraining)  # fmt: skip
        out[found["claim"]] = found
    return out


def relative(scores: dict, chance: dict[str, float]) -> dict:
    """Each model's task scores above chance as a share of the teacher's (MiniRBT's relative table,
    with guessing taken out): (model - chance) / (teacher - chance), per task and their mean."""
    teacher = scores.get(names.TEACHER)
    if not teacher:
        return {}
    out = {}
    for name, t in scores.items():
        row = {task: (v["mean"] - chance.get(task, 0.0)) / gain
               for task, v in t.items()
               if task in teacher and (gain := teacher[task]["mean"] - chance.get(task, 0.0)) > 0}  # fmt: skip
        if row:
            out[name] = row | {"average": sum(row.values()) / len(row)}
    return out


def speedup(rows: dict, students: list[str]) -> dict | None:
    """The students' batch-1 latency and batch-32 throughput against the teacher's, from the one
    speed measurement (`lab.core.metrics.speeds`), each ratio with its interval over the repeats."""
    s = next((rows[n] for n in students if n in rows and "latency_vs_teacher" in rows[n]), None)
    if s is None:
        return None
    return {"student": next(n for n in students if n in rows), "latency": s["latency_vs_teacher"],
            "throughput": s["throughput_vs_teacher"]}  # fmt: skip


def named(comparisons: list[str], outcomes: dict) -> dict:
    """The comparisons a user names ("A vs B": a model, or a kind whose distillation runs form the
    arm), under the built-in claims' interval and verdict rules: "A beats B"."""
    out = {}
    for text in comparisons:
        sides = [s.strip() for s in text.split(" vs ")]
        members = [sorted(n for n in outcomes if n == s or names.kind(n) == s) for s in sides]
        for side, m in zip(sides, members):
            if not m:
                raise ValueError(
                    f"evaluate.compare: {side!r} is no model with task scores ({', '.join(outcomes)})"
                )
        a, b = (arm(outcomes, m, s, recipe="distillation run") for s, m in zip(sides, members))
        recipe_runs = all(len(m) >= MIN_RUNS for m in members)
        found = claim(f"{sides[0]} beats {sides[1]}", f"this {sides[0]} beats this {sides[1]}", a, b,
                      compare(a, b), recipe_runs=recipe_runs, fixed=["the models named"])  # fmt: skip
        out[found["claim"]] = found | {"named_by": "evaluate.compare"}
    return out
