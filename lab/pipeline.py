"""`python -m lab run`: execute the stage notebooks with papermill, render HTML, write the index.

reports/<run_id>/NN_stage.ipynb   the executed notebook (partial output kept when a cell fails)
reports/<run_id>/NN_stage.html    its offline HTML (plotly.js embedded, nothing from a CDN)
reports/<run_id>/status.json      per-stage status, duration and error
reports/<run_id>/index.html       stage, status, duration, headline metrics, links
"""

from __future__ import annotations

import html
import json
import os
import shutil
import sys
import time
from pathlib import Path

from lab import codebase, config, contract, corpus, distill, evaluate, longify, pretrain, runs, wwm
from lab.config import STAGES, ConfigError
from lab.core import plan
from lab.core.errors import LabError
from lab.core.files import read_json, sha256_file, write_atomic, write_json
from lab.overrides import split_overrides

CONTRACTS: dict[str, contract.Contract] = {
    m.STAGE.name: m.STAGE for m in (corpus, wwm, pretrain, distill, longify, evaluate)
}


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
    routed = split_overrides(overrides)
    return {
        s: config.load(s, run_id=run_id, profile=profile, overrides=routed.get(s, {}))
        for s in stages
    }


def report_dir(run_id: str) -> Path:
    return runs.reports_dir() / run_id


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
    if dry_run:
        return print_plan(run_id, profile, cfgs)

    out = report_dir(run_id)
    try:
        out.mkdir(parents=True, exist_ok=True)
        runs.run_dir(run_id).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise runs.explain_os_error(err, out) from err
    runs.clean_stale(run_id)
    status = read_status(run_id)
    status.update({"run_id": run_id, "profile": profile, "overrides": overrides})
    status.setdefault("stages", {})
    os.environ["ZH_MINILAB_BATCH"] = "1"
    code = 0
    t_run = time.time()
    for i, stage in enumerate(stages, 1):
        cfg = cfgs[stage]
        notebook = notebooks_dir() / CONTRACTS[stage].notebook
        entry = {
            "notebook": notebook.name,
            "html": notebook.with_suffix(".html").name,
            "params": cfg.params(),
            "notebook_sha256": sha256_file(notebook),
            "lab_code": report_code(stage),
        }
        print(
            f"[{i}/{len(stages)}] {stage}: {notebook.name} -> {out / entry['notebook']}", flush=True
        )
        if _cached(stage, cfg, status, out, entry):
            prev = status["stages"][stage]
            prev["status"] = "cached"
            print(
                f"    cached: parameters and inputs match {runs.stage_dir(run_id, stage)}",
                flush=True,
            )
            write_index(run_id, status)
            continue
        t0 = time.time()
        error = execute(stage, cfg, out / entry["notebook"])
        entry["duration_s"] = round(time.time() - t0, 1)
        render_html(out / entry["notebook"], out / entry["html"])
        if error:
            entry.update(status="failed", error=error)
            status["stages"][stage] = entry
            write_index(run_id, status)
            print(
                f"    FAILED after {entry['duration_s']:.0f}s: {error}", file=sys.stderr, flush=True
            )
            print(f"    see {out / entry['html']}", file=sys.stderr, flush=True)
            code = 1
            break
        entry["status"] = "ok"
        status["stages"][stage] = entry
        write_index(run_id, status)
        print(f"    ok in {entry['duration_s']:.0f}s", flush=True)
    status["wall_s"] = round(time.time() - t_run, 1)
    write_index(run_id, status)
    print(f"index: {out / 'index.html'}", flush=True)
    return code


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


def execute(stage: str, cfg, output: Path) -> str | None:
    """Run one stage notebook with papermill; the failing cell's error, or None."""
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
            stdout_file=sys.stdout,
            stderr_file=sys.stderr,
        )
    except pm.PapermillExecutionError as err:
        return f"{err.ename}: {err.evalue}"
    return None


def render_html(notebook: Path, target: Path) -> None:
    """nbconvert with the lab template minus every CDN script (require.js, MathJax, widgets)."""
    import nbformat
    from nbconvert import HTMLExporter

    if not notebook.exists():
        return
    templates = Path(__file__).parent / "templates"
    exporter = HTMLExporter(extra_template_basedirs=[str(templates)], template_name="zh_minilab")
    body, _ = exporter.from_notebook_node(nbformat.read(str(notebook), as_version=4))
    write_atomic(target, body)


# ---------------------------------------------------------------------------------------------
# status and index


def read_status(run_id: str) -> dict:
    path = report_dir(run_id) / "status.json"
    try:
        return read_json(path)
    except (FileNotFoundError, ValueError):
        return {}


def write_index(run_id: str, status: dict) -> None:
    out = report_dir(run_id)
    write_json(out / "status.json", status)
    rows = []
    for stage in STAGES:
        entry = status.get("stages", {}).get(stage)
        if not entry:
            continue
        manifest = runs.read_manifest(runs.stage_dir(run_id, stage))
        headline = {}
        if manifest and entry["status"] in ("ok", "cached"):
            try:
                headline = CONTRACTS[stage].headline(manifest)
            except Exception as err:  # a report must render even if one summary cannot
                headline = {"headline unavailable": f"{type(err).__name__}: {err}"}
        rows.append((stage, entry, headline, manifest))
    write_atomic(out / "index.html", index_html(run_id, status, rows))


def index_html(run_id: str, status: dict, rows: list) -> str:
    e = html.escape
    body = []
    for stage, entry, headline, manifest in rows:
        metrics = "".join(f"<li>{e(k)}: <b>{e(str(v))}</b></li>" for k, v in headline.items())
        if entry.get("error"):
            metrics += f'<li class="err">{e(entry["error"])}</li>'
        duration = entry.get("duration_s")
        work = manifest.get("duration_s") if manifest else None
        body.append(
            f'<tr class="{e(entry["status"])}"><td>{CONTRACTS[stage].notebook[:2]}</td><td>{e(stage)}</td>'
            f'<td class="status">{e(entry["status"])}</td>'
            f"<td>{'' if duration is None else f'{duration:,.0f} s'}"
            f"{'' if work is None else f' <small>(stage work {work:,.0f} s)</small>'}</td>"
            f"<td><ul>{metrics}</ul></td>"
            f'<td><a href="{e(entry["html"])}">report</a> · <a href="{e(entry["notebook"])}">notebook</a></td></tr>'
        )
    overrides = ", ".join(f"{k}={v}" for k, v in status.get("overrides", {}).items()) or "none"
    wall = status.get("wall_s")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>zh-minilab run {e(run_id)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; }} td, th {{ border-bottom: 1px solid #ddd; padding: 6px 10px; vertical-align: top; text-align: left; }}
td ul {{ margin: 0; padding-left: 1.1em; }} .status {{ font-weight: bold; }}
tr.ok .status, tr.cached .status {{ color: #1a7f37; }} tr.failed .status, .err {{ color: #c62828; }}
small {{ color: #666; }}
</style></head><body>
<h1>zh-minilab · run <code>{e(run_id)}</code></h1>
<p>profile <b>{e(str(status.get("profile")))}</b> · overrides: {e(overrides)}
{"" if wall is None else f" · last invocation {wall:,.0f} s"}</p>
<table><thead><tr><th>#</th><th>stage</th><th>status</th><th>duration</th><th>headline metrics</th><th>links</th></tr></thead>
<tbody>{"".join(body)}</tbody></table>
<p><small>Artifacts and manifests: data/runs/{e(run_id)}/&lt;stage&gt;/manifest.json</small></p>
</body></html>
"""


def report(run_id: str) -> int:
    """Re-render every executed notebook's HTML and the index of an existing run."""
    out = report_dir(run_id)
    status = read_status(run_id)
    if not status:
        raise PipelineError(f"no run {run_id!r} in {runs.reports_dir()} (no status.json)")
    for entry in status.get("stages", {}).values():
        render_html(out / entry["notebook"], out / entry["html"])
    write_index(run_id, status)
    print(f"index: {out / 'index.html'}")
    return 0


def plan_context(run_id: str, profile: str, cfgs: dict[str, config.StageConfig]) -> dict:
    """What the stages' plans share: every stage's parameters, the corpus's training tokens (estimated
    from its sources, or read from a finished corpus stage), the free disk."""
    every = {s: cfgs.get(s) or config.load(s, run_id=run_id, profile=profile) for s in STAGES}
    chars = None
    done = runs.read_manifest(runs.stage_dir(run_id, "corpus"))
    if "corpus" not in cfgs and done:
        chars = done["metrics"]["chars"]["train"]
    elif (estimate := corpus.estimate_chars(every["corpus"])) is not None:
        chars = round(estimate * (1 - every["corpus"].valid_frac - every["corpus"].test_frac))
    folder = runs.data_dir()
    while not folder.exists():
        folder = folder.parent
    return {
        "configs": every,
        "corpus_tokens": round(chars * plan.TOKENS_PER_CHAR) if chars else None,
        "compact_vocab": every["corpus"].compact_vocab_size,
        "free_disk": shutil.disk_usage(folder).free,
    }


def print_plan(run_id: str, profile: str, cfgs: dict[str, config.StageConfig]) -> int:
    """Every stage's plan; 2 (and the reasons) if a stage cannot run as planned."""
    context = plan_context(run_id, profile, cfgs)
    refused = []
    for stage, cfg in cfgs.items():
        print(f"{CONTRACTS[stage].notebook}  [{stage}]")
        for key, value in CONTRACTS[stage].describe(cfg, context).items():
            if key == "refused":
                refused += value
            else:
                print(f"    {key}: {value}")
    if refused:
        print("dry run: the plan cannot run as it stands:", file=sys.stderr)
        for reason in refused:
            print(f"  refused: {reason}", file=sys.stderr)
        return 2
    print("dry run: parameters valid; nothing was executed.")
    return 0
