"""The command line and `python -m lab run` end to end (papermill + nbconvert) on the smoke profile."""

import json
import os
import subprocess
import sys

import pytest

from lab import pipeline, runs


def lab(*args, home, check=True):
    env = {**os.environ, "ZH_MINILAB_HOME": str(home)}
    proc = subprocess.run(
        [sys.executable, "-m", "lab", *args], capture_output=True, text=True, env=env
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """`python -m lab run --profile smoke` through every stage that has a notebook, once."""
    home = tmp_path_factory.mktemp("smoke-home")
    proc = lab("run", "--profile", "smoke", "--run-id", "nb", home=home)
    return home, proc


def manifest(home, stage):
    return json.loads((home / "data" / "runs" / "nb" / stage / "manifest.json").read_text())


@pytest.mark.notebook
def test_smoke_run_writes_reports_and_index(smoke_run):
    home, _ = smoke_run
    out = home / "reports" / "nb"
    status = json.loads((out / "status.json").read_text())
    assert set(status["stages"]) == set(pipeline.available())
    for stage, entry in status["stages"].items():
        assert entry["status"] == "ok", stage
        for name in (entry["notebook"], entry["html"]):
            assert (out / name).exists(), name
        page = (out / entry["html"]).read_text(encoding="utf-8")
        assert "cdnjs.cloudflare.com" not in page and "require.min.js" not in page
        assert "Plotly.newPlot" in page, f"{stage}: figures missing from the HTML"
        nb = json.loads((out / entry["notebook"]).read_text(encoding="utf-8"))
        errors = [
            o for c in nb["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"
        ]
        assert not errors, stage
    index = (out / "index.html").read_text(encoding="utf-8")
    assert "held-out overlap: <b>0</b>" in index


@pytest.mark.notebook
def test_smoke_corpus_manifest(smoke_run):
    m = manifest(smoke_run[0], "corpus")
    assert m["metrics"]["heldout_overlap"] == {
        "sentiment": 0,
        "thucnews": 0,
        "msra_ner": 0,
        "stsb": 0,
    }
    assert m["profile"] == "smoke" and m["params"]["max_docs_per_source"] == 400


@pytest.mark.notebook
def test_smoke_wwm_manifest(smoke_run):
    m = manifest(smoke_run[0], "wwm")["metrics"]
    assert 0.7 < m["segmentation_f1"] < 0.95
    assert abs(m["wwm_mask_rate"] - 0.15) < 0.02
    assert m["builtin_all_or_nothing"] > 0.9 and m["ours_all_or_nothing"] < 0.05
    assert m["segmenter_check_differ"] == 0


@pytest.mark.notebook
def test_rerun_is_cached(smoke_run):
    home, _ = smoke_run
    again = lab("run", "--profile", "smoke", "--run-id", "nb", "--to", "corpus", home=home)
    assert "cached" in again.stdout
    lab("report", "nb", home=home)


@pytest.mark.notebook
def test_failing_notebook_is_reported_and_exits_nonzero(tmp_path):
    proc = lab(
        "run", "--profile", "smoke", "--run-id", "bad", "--to", "corpus",
        "-p", "corpus.sources=[no/such/file.txt]", home=tmp_path, check=False,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "CorpusError" in proc.stderr and "no/such/file.txt" in proc.stderr
    out = tmp_path / "reports" / "bad"
    assert (out / "01_corpus.html").exists()
    assert json.loads((out / "status.json").read_text())["stages"]["corpus"]["status"] == "failed"
    assert "failed" in (out / "index.html").read_text(encoding="utf-8")
    assert runs.read_manifest(tmp_path / "data" / "runs" / "bad" / "corpus") is None


def test_dry_run_validates_and_runs_nothing(tmp_path):
    for profile in ("smoke", "cpu", "gpu"):
        proc = lab("run", "--profile", profile, "--dry-run", home=tmp_path)
        assert "01_corpus.ipynb" in proc.stdout and "nothing was executed" in proc.stdout
    assert not (tmp_path / "data").exists() and not (tmp_path / "reports").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["-p", "corpus.min_chars=abc"], "corpus.min_chars: expected int"),
        (["-p", "min_charz=3"], "did you mean 'min_chars'"),
        (["-p", "nokey"], "write KEY=VALUE"),
        (["--to", "stage9"], "unknown stage 'stage9'"),
        (["--params", "missing.yaml"], "no such file"),
    ],
)
def test_bad_command_line_fails_before_running(tmp_path, args, message):
    proc = lab("run", "--profile", "smoke", "--dry-run", *args, home=tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr


def test_params_file(tmp_path):
    (tmp_path / "p.yaml").write_text("corpus:\n  min_chars: 6\n", encoding="utf-8")
    lab(
        "run",
        "--profile",
        "smoke",
        "--dry-run",
        "--params",
        str(tmp_path / "p.yaml"),
        home=tmp_path,
    )


def test_sources_lists_registry(tmp_path):
    proc = lab("sources", home=tmp_path)
    assert "peoples_daily" in proc.stdout and "licence" in proc.stdout
