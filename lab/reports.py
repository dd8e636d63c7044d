"""A run's reports: what `python -m lab run` leaves in reports/<run_id>/ for a person to read.

reports/<run_id>/index.html         every stage: status, time, headline metrics, links; the findings
reports/<run_id>/NN_stage.html      the reader's page: prose, tables and figures, no code
reports/<run_id>/NN_stage.code.html the same page with its code cells
reports/<run_id>/NN_stage.ipynb     the executed notebook (partial output kept when a cell fails)
reports/<run_id>/NN_stage.log       everything the stage printed, with library and kernel chatter
reports/<run_id>/plotly.min.js      plotly.js, once for every page (they refer to it relatively)
reports/<run_id>/status.json        per-stage status, duration and error
reports/<run_id>/findings.json      every finding the index shows, the comparisons with other runs too

Pages fetch nothing from the network: they open offline, from a copied folder too.
"""

from __future__ import annotations

import html
from pathlib import Path

from lab import crossrun, runs, tables
from lab.core.files import read_json, write_atomic, write_json

PLOTLY_JS = "plotly.min.js"
TEMPLATES = Path(__file__).parent / "templates"


def report_dir(run_id: str) -> Path:
    return runs.reports_dir() / run_id


def pages(notebook_name: str) -> dict[str, str]:
    """The files of one stage's report, by role."""
    stem = Path(notebook_name).stem
    return {"notebook": f"{stem}.ipynb", "html": f"{stem}.html", "code_html": f"{stem}.code.html",
            "log": f"{stem}.log"}  # fmt: skip


def render(notebook: Path) -> None:
    """The reader's page and the page with code of an executed notebook, beside it."""
    import nbformat
    from nbconvert import HTMLExporter

    if not notebook.exists():
        return
    names = pages(notebook.name)
    node = nbformat.read(str(notebook), as_version=4)
    for key, reader in (("html", True), ("code_html", False)):
        exporter = HTMLExporter(
            extra_template_basedirs=[str(TEMPLATES)], template_name="zh_minilab",
            exclude_input=reader, exclude_input_prompt=reader, exclude_output_prompt=reader,
        )  # fmt: skip
        body, _ = exporter.from_notebook_node(without_streams(node) if reader else node)
        write_atomic(notebook.with_name(names[key]), body)
    write_plotly(notebook.parent)


def without_streams(node):
    """A notebook without what its cells printed (progress summaries, the stage's messages): the
    reader's page shows tables, figures and prose; the log and the page with code keep the rest."""
    import copy

    node = copy.deepcopy(node)
    for cell in node.cells:
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if o.output_type != "stream"]
    return node


def write_plotly(folder: Path) -> None:
    """plotly.js of the installed plotly, once per report folder."""
    from plotly.offline import get_plotlyjs

    path = folder / PLOTLY_JS
    js = get_plotlyjs()
    if not path.exists() or path.stat().st_size != len(js.encode()):
        write_atomic(path, js)


# ---------------------------------------------------------------------------------------------
# status and index


def read_status(run_id: str) -> dict:
    try:
        return read_json(report_dir(run_id) / "status.json")
    except (FileNotFoundError, ValueError):
        return {}


def write_index(run_id: str, status: dict, contracts: dict) -> None:
    """status.json and index.html; `contracts` are the stages' (for their headlines)."""
    out = report_dir(run_id)
    write_json(out / "status.json", status)
    rows, findings = [], {}
    for stage, contract in contracts.items():
        entry = status.get("stages", {}).get(stage)
        if not entry:
            continue
        manifest = runs.read_manifest(runs.stage_dir(run_id, stage))
        headline = {}
        if manifest and entry["status"] in ("ok", "cached"):
            try:
                headline = contract.headline(manifest)
            except Exception as err:  # a report must render even if one summary cannot
                headline = {"headline unavailable": f"{type(err).__name__}: {err}"}
            findings |= manifest["metrics"].get("findings", {})
        rows.append((contract, entry, headline, manifest))
    try:  # other runs may have been made since this one; a broken one must not break the index
        findings |= crossrun.ablations(run_id)
    except Exception as err:
        findings["comparisons with other runs"] = {"claim": "comparisons with other runs", "verdict": "not computed",
                                                   "difference": None, "reason": f"{type(err).__name__}: {err}"}  # fmt: skip
    write_json(out / "findings.json", findings)
    write_atomic(out / "index.html", index_html(run_id, status, rows, findings))


def index_html(run_id: str, status: dict, rows: list, findings: dict) -> str:
    e = html.escape
    body = []
    for contract, entry, headline, manifest in rows:
        metrics = "".join(f"<li>{e(k)}: <b>{e(str(v))}</b></li>" for k, v in headline.items())
        if entry.get("error"):
            metrics += f'<li class="err">{e(entry["error"])}</li>'
        duration = entry.get("duration_s")
        work = manifest.get("duration_s") if manifest else None
        names = pages(entry["notebook"])
        links = [("report", names["html"]), ("with code", names["code_html"]),
                 ("notebook", names["notebook"]), ("log", names["log"])]  # fmt: skip
        have = " · ".join(
            f'<a href="{e(href)}">{label}</a>'
            for label, href in links
            if (report_dir(run_id) / href).exists()
        )
        body.append(
            f'<tr class="{e(entry["status"])}"><td>{contract.notebook[:2]}</td><td>{e(contract.name)}</td>'
            f'<td class="status">{e(entry["status"])}</td>'
            f"<td>{'' if duration is None else f'{duration:,.0f} s'}"
            f"{'' if work is None else f' <small>(stage work {work:,.0f} s)</small>'}</td>"
            f"<td><ul>{metrics}</ul></td><td>{have}</td></tr>"
        )
    overrides = ", ".join(f"{k}={v}" for k, v in status.get("overrides", {}).items()) or "none"
    wall = status.get("wall_s")
    found = (
        "<h2>Findings</h2>"
        + tables.html_table(tables.findings_rows(findings), tables.FINDINGS_TITLE)
        + "<p><small>holds: the whole 95% interval is above 0 · does not hold: below 0 · "
        "inconclusive: the interval contains 0 (more runs or examples would narrow it). Each interval covers "
        "the sources of variation its row names, and no others: a claim is worded for a recipe only when each "
        "side has at least three independently trained runs of it, otherwise for the networks at hand. Each "
        "claim is one test at 5%; the task rows (·) carry no verdict.</small></p>"
        if findings
        else ""
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>zh-minilab run {e(run_id)}</title>
<style>
body {{ font-family: system-ui, "Noto Sans CJK SC", sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; }} td, th {{ border-bottom: 1px solid #ddd; padding: 6px 10px; vertical-align: top; text-align: left; }}
td ul {{ margin: 0; padding-left: 1.1em; }} .status {{ font-weight: bold; }}
tr.ok .status, tr.cached .status {{ color: #1a7f37; }} tr.failed .status, .err {{ color: #c62828; }}
small {{ color: #666; }} caption {{ text-align: left; padding: 4px 0; color: #444; }}
</style></head><body>
<h1>zh-minilab · run <code>{e(run_id)}</code></h1>
<p>profile <b>{e(str(status.get("profile")))}</b> · overrides: {e(overrides)}
{"" if wall is None else f" · last invocation {wall:,.0f} s"}</p>
<table><thead><tr><th>#</th><th>stage</th><th>status</th><th>duration</th><th>headline metrics</th><th>links</th></tr></thead>
<tbody>{"".join(body)}</tbody></table>
{found}
<p><small>Artifacts and manifests: data/runs/{e(run_id)}/&lt;stage&gt;/manifest.json · training curves:
<code>tensorboard --logdir data/runs/{e(run_id)}</code></small></p>
</body></html>
"""
