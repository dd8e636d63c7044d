"""`python -m lab run`: execute the stage notebooks with papermill, render the reports, write the index.

Per stage the terminal gets a line when it starts, a live progress line, and a line when it ends
with its headline metrics and the path of its report; the report folder's layout is `lab.reports`.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from lab import codebase, config, dryrun, lock, reports, runs
from lab.config import CONTRACTS, STAGES, ConfigError
from lab.core.errors import LabError
from lab.core.files import sha256_file
from lab.overrides import split_overrides
from lab.terminal import Console


class PipelineError(LabError, RuntimeError):
    """The run cannot start or a stage failed; the message says which and why."""


def notebooks_dir() -> Path:
    """The stage notebooks of this checkout (or $ZH_MINILAB_NOTEBOOKS)."""
    if env := os.environ.get("ZH_MINILAB_NOTEBOOKS"):
        return Path(env)
    return Path(__file__).resolve().parents[1] / "notebooks"


def available() -> list[str]:
    """Stages whose notebook exists, in pipeline order."""
    return [s for s in STAGES if (notebooks_dir() / CONTRACTS[s].notebook).exists()]


def stage_name(text: str) -> str:
    """`pretrain`, `03` or `3` -> `pretrain`."""
    if text in STAGES:
        return text
    if text.isdigit() and 1 <= int(text) <= len(STAGES):
        return STAGES[int(text) - 1]
    raise ConfigError(f"unknown stage {text!r}; stages are {', '.join(STAGES)} (or 01-06)")


def select(start: str | None, stop: str | None) -> list[str]:
    have = available()
    if not have:
        raise PipelineError(
            f"no stage notebooks found in {notebooks_dir()}: install the lab from its source "
            "checkout (pip install -e .) or point ZH_MINILAB_NOTEBOOKS at its notebooks/ folder"
        )
    first = STAGES.index(stage_name(start)) if start else 0
    last = STAGES.index(stage_name(stop)) if stop else len(STAGES) - 1
    if first > last:
        raise ConfigError(f"--from {start} comes after --to {stop}")
    chosen = [s for s in STAGES[first : last + 1] if s in have]
    missing = [s for s in STAGES[first : last + 1] if s not in have]
    if missing:
        raise PipelineError(f"stages {missing} have no notebook in {notebooks_dir()} yet")
    return chosen


def resolve(
    run_id: str, profile: str, stages: list[str], overrides: dict
) -> dict[str, config.StageConfig]:
    """Validated configs of `stages`; every problem is raised here, before anything runs."""
    routed = split_overrides(overrides, config.FIELDS)
    return {
        s: config.load(s, run_id=run_id, profile=profile, overrides=routed.get(s, {}))
        for s in stages
    }


def run(
    run_id: str,
    profile: str,
    stages: list[str],
    overrides: dict,
    *,
    dry_run: bool = False,
) -> int:
    cfgs = resolve(run_id, profile, stages, overrides)
    for s in stages:  # upstream stages must be in this run's plan or already complete on disk
        for up in CONTRACTS[s].upstream:
            if up not in stages and runs.read_manifest(runs.stage_dir(run_id, up)) is None:
                raise PipelineError(
                    f"stage {s} needs stage {up}, which is neither in this plan nor complete in "
                    f"{runs.stage_dir(run_id, up)}. Run it: python -m lab run --run-id {run_id} --to {up}"
                )
    problems = dryrun.input_problems(cfgs)
    if dry_run:
        return dryrun.print_plan(cfgs, {s: CONTRACTS[s].notebook for s in cfgs}, problems)
    if problems:
        raise PipelineError(
            "the plan cannot run as it stands (nothing was run):\n  " + "\n  ".join(problems)
        )
    out = reports.report_dir(run_id)
    try:
        out.mkdir(parents=True, exist_ok=True)
        runs.run_dir(run_id).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise runs.explain_os_error(err, out) from err
    with lock.hold(run_id, "python -m lab run"):
        return Batch(run_id, profile, cfgs, overrides).run()


class Batch:
    """One invocation of `python -m lab run`: its stages in order, its status and its terminal."""

    def __init__(self, run_id: str, profile: str, cfgs: dict, overrides: dict):
        self.run_id, self.cfgs = run_id, cfgs
        self.out = reports.report_dir(run_id)
        self.status = reports.read_status(run_id)
        self.status.update({"run_id": run_id, "profile": profile, "overrides": overrides})
        self.status.setdefault("stages", {})
        self.console = Console()

    def run(self) -> int:
        runs.clean_stale(self.run_id)
        os.environ.update(BATCH_ENV)
        t_run, code = time.time(), 0
        for i, stage in enumerate(self.cfgs, 1):
            if not self.stage(i, stage):
                code = 1
                break
        self.status["wall_s"] = round(time.time() - t_run, 1)
        self.write_index()
        self.console.say(f"index: {self.out / 'index.html'}")
        return code

    def stage(self, i: int, stage: str) -> bool:
        """Run (or find cached) one stage; False if it failed."""
        cfg, c = self.cfgs[stage], CONTRACTS[stage]
        notebook = notebooks_dir() / c.notebook
        entry = {
            **reports.pages(c.notebook),
            "params": cfg.params(),
            "notebook_sha256": sha256_file(notebook),
            "lab_code": report_code(stage),
        }
        self.console.say(f"[{i}/{len(self.cfgs)}] {stage}: {c.description}")
        if _cached(stage, cfg, self.status, self.out, entry):
            self.status["stages"][stage]["status"] = "cached"
            self.write_index()
            self.done(stage, "cached")
            return True
        t0 = time.time()
        with self.console.captured(self.out / entry["log"], self.out / ".progress.json") as log:
            error = execute(stage, cfg, self.out / entry["notebook"], log)
            reports.render(self.out / entry["notebook"])
        entry["duration_s"] = round(time.time() - t0, 1)
        entry |= {"status": "failed", "error": error} if error else {"status": "ok"}
        self.status["stages"][stage] = entry
        self.write_index()
        if error:
            self.console.say(f"    FAILED after {entry['duration_s']:.0f} s: {error}", error=True)
            self.console.say(f"    report: {self.out / entry['html']}", error=True)
            self.console.say(f"    log: {self.out / entry['log']}", error=True)
            return False
        self.done(stage, f"ok in {entry['duration_s']:.0f} s")
        return True

    def done(self, stage: str, what: str) -> None:
        manifest = runs.read_manifest(runs.stage_dir(self.run_id, stage))
        try:
            headline = list(CONTRACTS[stage].headline(manifest).items())[:3] if manifest else []
        except Exception:  # the index says why; the terminal line goes without
            headline = []
        parts = [what, *(f"{k} {v}" for k, v in headline)]
        self.console.say("    " + " · ".join(parts))
        self.console.say(f"    report: {self.out / self.status['stages'][stage]['html']}")

    def write_index(self) -> None:
        reports.write_index(self.run_id, self.status, CONTRACTS)


# library progress bars and redraws stay out of batch reports (the lab's own bars summarise)
BATCH_ENV = {"ZH_MINILAB_BATCH": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
             "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}  # fmt: skip


def report_code(stage: str) -> str:
    """Digest of the code behind a stage's report: its driver and every `lab` module its notebook
    imports (figures, widgets), with what they import."""
    nb = json.loads((notebooks_dir() / CONTRACTS[stage].notebook).read_text(encoding="utf-8"))
    source = "\n".join(
        "".join(line for line in c["source"] if not line.lstrip().startswith(("%", "!")))
        for c in nb["cells"]
        if c["cell_type"] == "code"
    )
    return codebase.digest(CONTRACTS[stage].module, *sorted(codebase.imports_in(source)))


def _cached(stage: str, cfg, status: dict, out: Path, entry: dict) -> bool:
    """The stage's manifest matches and its report came from the same notebook and lab code."""
    prev = status["stages"].get(stage)
    if not prev or prev.get("status") not in ("ok", "cached") or not (out / prev["html"]).exists():
        return False
    if any(prev.get(k) != entry[k] for k in ("notebook_sha256", "lab_code")):
        return False
    try:
        return CONTRACTS[stage].stage(cfg).cached
    except LabError:  # an upstream that changed or vanished: run the stage and let it explain
        return False


def execute(stage: str, cfg, output: Path, log) -> str | None:
    """Run one stage notebook with papermill, its printed output to `log`; the failing cell's
    error, or None."""
    import papermill as pm

    params = {"run_id": cfg.run_id, "profile": cfg.profile, "lab_resolved": True, **cfg.params()}
    try:
        pm.execute_notebook(
            str(notebooks_dir() / CONTRACTS[stage].notebook),
            str(output),
            parameters=params,
            kernel_name="python3",
            cwd=os.getcwd(),
            progress_bar=False,
            log_output=False,
            stdout_file=log,
            stderr_file=log,
        )
    except pm.PapermillExecutionError as err:
        return f"{err.ename}: {err.evalue}"
    return None


def report(run_id: str) -> int:
    """Re-render every executed notebook's pages and the index of an existing run."""
    out = reports.report_dir(run_id)
    status = reports.read_status(run_id)
    if not status:
        raise PipelineError(f"no run {run_id!r} in {runs.reports_dir()} (no status.json)")
    for entry in status.get("stages", {}).values():
        entry |= reports.pages(entry["notebook"])
        reports.render(out / entry["notebook"])
    reports.write_index(run_id, status, CONTRACTS)
    print(f"index: {out / 'index.html'}")
    return 0
