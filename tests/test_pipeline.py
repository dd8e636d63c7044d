"""The command line and `python -m lab run` end to end (papermill + nbconvert) on the smoke profile."""

import json
import os
import shutil
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


def manifest(home, stage):
    return json.loads((home / "data" / "runs" / "nb" / stage / "manifest.json").read_text())


@pytest.mark.slow
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


@pytest.mark.slow
@pytest.mark.notebook
def test_terminal_says_what_matters(smoke_run):
    """A line per stage start and end with its headline and report; the chatter goes to the logs."""
    home, proc = smoke_run
    lines = (proc.stdout + proc.stderr).splitlines()
    assert len(lines) < 100, f"{len(lines)} lines"
    text = "\n".join(lines)
    for stage in pipeline.available():
        assert f"] {stage}: " in text
    assert text.count("    ok in ") == len(pipeline.available())
    assert "report: " in text and "index: " in text
    for noise in ("IPKernelApp", "LOAD REPORT", "it/s]", "\r"):
        assert noise not in text, noise
    logs = {p.name: p.read_text(encoding="utf-8") for p in (home / "reports" / "nb").glob("*.log")}
    assert len(logs) == len(pipeline.available())
    assert any("IPKernelApp" in t for t in logs.values())  # the kernel's own warning, kept there
    assert "pretrain stage1: 30/30 step in" in logs["03_pretrain.log"]  # a loop's summary line


NOISE = ("LOAD REPORT", "You passed `num_labels", "Initializing global attention",
         "automatically padded", "Building prefix dict")  # fmt: skip


@pytest.mark.slow
@pytest.mark.notebook
def test_reports_hold_no_library_noise(smoke_run):
    """No stderr output, no progress-bar redraws and no library chatter in any executed notebook."""
    out = smoke_run[0] / "reports" / "nb"
    for path in sorted(out.glob("*.ipynb")):
        nb = json.loads(path.read_text(encoding="utf-8"))
        for i, cell in enumerate(nb["cells"]):
            for o in cell.get("outputs", []):
                if o["output_type"] != "stream":
                    continue
                text = "".join(o["text"])
                assert o["name"] == "stdout", f"{path.name} cell {i} wrote to stderr: {text[:300]}"
                assert "\r" not in text and "%|" not in text, f"{path.name} cell {i}: {text[:300]}"
                assert not [n for n in NOISE if n in text], f"{path.name} cell {i}: {text[:300]}"


@pytest.mark.slow
@pytest.mark.notebook
def test_reader_pages_show_tables_figures_and_prose_never_python_reprs(smoke_run):
    """What stays on a reader's page (everything but what cells printed) is formatted: no bare
    repr of a value, no `{'...` dict in any output; a curve with too few points says so."""
    import html
    import re

    out = smoke_run[0] / "reports" / "nb"
    for path in sorted(out.glob("0*.ipynb")):
        nb = json.loads(path.read_text(encoding="utf-8"))
        for i, cell in enumerate(nb["cells"]):
            for o in cell.get("outputs", []):
                if o["output_type"] == "stream":
                    continue  # the reader's page leaves these out (the log keeps them)
                data = o.get("data", {})
                assert set(data) - {"text/plain"}, f"{path.name} cell {i}: a bare repr {data}"
                shown = html.unescape(
                    re.sub(
                        r"<script.*?</script>", "", "".join(data.get("text/html", "")), flags=re.S
                    )
                )
                assert "{'" not in shown, f"{path.name} cell {i}: {shown[:300]}"
        reader = html.unescape((out / path.with_suffix(".html").name).read_text(encoding="utf-8"))
        assert "{'" not in re.sub(r"<script.*?</script>", "", reader, flags=re.S), path.name
    longify = (out / "05_longify.html").read_text(encoding="utf-8")
    assert "too few for a curve" in longify  # smoke: 4 steps of continued pretraining, 1 logged


@pytest.mark.slow
@pytest.mark.notebook
def test_a_sibling_run_made_after_evaluate_is_cached_shows_in_the_index(smoke_run):
    """Comparisons across runs are made when the index is written, from the runs' manifests: a run
    that differs in one ablation parameter, made after this run's evaluate stage was cached, shows
    up in its index, and the evaluate manifest (its declared inputs only) does not change."""
    home = smoke_run[0]
    before = manifest(home, "evaluate")
    sibling = home / "data" / "runs" / "nb-wwm"
    shutil.copytree(home / "data" / "runs" / "nb", sibling)
    try:
        path = sibling / "pretrain" / "manifest.json"
        m = json.loads(path.read_text(encoding="utf-8"))
        assert m["params"]["masking"] == "token"
        path.write_text(
            json.dumps(m | {"params": m["params"] | {"masking": "wwm"}}), encoding="utf-8"
        )
        lab("run", "--profile", "smoke", "--run-id", "nb", home=home)
        status = json.loads((home / "reports" / "nb" / "status.json").read_text())
        assert {e["status"] for e in status["stages"].values()} == {"cached"}
        found = json.loads((home / "reports" / "nb" / "findings.json").read_text())
        claim = found["this whole-word-masked teacher beats this token-masked one"]
        assert claim["runs_compared"] == "nb vs nb-wwm" and claim["a"] == "wwm (nb-wwm)"
        index = (home / "reports" / "nb" / "index.html").read_text(encoding="utf-8")
        assert "this whole-word-masked teacher beats this token-masked one" in index
        assert manifest(home, "evaluate") == before
        assert "whole-word-masked" not in json.dumps(before["metrics"]["findings"])
    finally:
        shutil.rmtree(sibling)
        lab("report", "nb", home=home)


@pytest.mark.slow
@pytest.mark.notebook
def test_report_folder_is_small_and_links_its_pages(smoke_run):
    out = smoke_run[0] / "reports" / "nb"
    status = json.loads((out / "status.json").read_text())
    assert (out / "plotly.min.js").stat().st_size > 1_000_000
    index = (out / "index.html").read_text(encoding="utf-8")
    for entry in status["stages"].values():
        reader = (out / entry["html"]).read_text(encoding="utf-8")
        code = (out / entry["code_html"]).read_text(encoding="utf-8")
        for page in (reader, code):
            assert '<script src="plotly.min.js">' in page and len(page) < 1_500_000
        assert "hl-ipython3" not in reader and "hl-ipython3" in code  # code cells: only in one
        for name in (entry["html"], entry["code_html"], entry["notebook"], entry["log"]):
            assert f'href="{name}"' in index, name
    assert "<h2>Findings</h2>" in index and "95% interval" in index
    size = sum(p.stat().st_size for p in out.iterdir())
    assert size < 25_000_000, f"{size / 1e6:.0f} MB"


@pytest.mark.slow
@pytest.mark.notebook
def test_training_writes_tensorboard_events(smoke_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = smoke_run[0] / "data" / "runs" / "nb"
    folders = sorted(p.parent for p in run.rglob("events.out.tfevents.*"))
    rel = {str(f.relative_to(run)) for f in folders}
    assert {"pretrain/stage1/tensorboard", "pretrain/stage2/tensorboard",
            "longify/continued/tensorboard"} <= rel, rel  # fmt: skip
    assert any(r.startswith("distill/") for r in rel)
    acc = EventAccumulator(str(run / "pretrain" / "stage1" / "tensorboard"))
    acc.Reload()
    assert {"train/loss", "train/lr", "train/tok_per_s", "eval/acc"} <= set(acc.Tags()["scalars"])


@pytest.mark.slow
@pytest.mark.notebook
def test_a_notebook_with_its_defaults_continues_the_batch_run(smoke_run, tmp_path, monkeypatch):
    """A batch run's corpus under the profile's name (the run id `lab run --profile smoke` gives
    it: `test_a_run_without_a_run_id_is_named_after_its_profile`; here the smoke run's corpus,
    copied): notebook 01 opened with only its profile set to smoke finds it and reports it cached."""
    import nbformat
    from nbclient import NotebookClient

    shutil.copytree(smoke_run[0] / "data" / "runs" / "nb" / "corpus",
                    tmp_path / "data" / "runs" / "smoke" / "corpus")  # fmt: skip
    nb = nbformat.read(str(pipeline.notebooks_dir() / "01_corpus.ipynb"), as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    assert 'run_id = ""' in params.source
    params.source = params.source.replace('profile = "cpu"', 'profile = "smoke"')
    monkeypatch.setenv("ZH_MINILAB_HOME", str(tmp_path))
    monkeypatch.delenv("ZH_MINILAB_BATCH", raising=False)
    NotebookClient(nb, timeout=600, kernel_name="python3").execute()
    printed = "".join(
        "".join(o.get("text", "")) for c in nb.cells if c.cell_type == "code" for o in c.outputs
    )
    assert f"corpus: cached ({tmp_path / 'data' / 'runs' / 'smoke' / 'corpus'})" in printed


@pytest.mark.slow
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


@pytest.mark.slow
@pytest.mark.notebook
def test_smoke_wwm_manifest(smoke_run):
    m = manifest(smoke_run[0], "wwm")["metrics"]
    assert 0.7 < m["segmentation_f1"] < 0.95
    assert abs(m["wwm_mask_rate"] - 0.15) < 0.02
    assert m["builtin_all_or_nothing"] > 0.9 and m["ours_all_or_nothing"] < 0.05
    assert m["segmenter_check_differ"] == 0


@pytest.mark.slow
@pytest.mark.notebook
def test_smoke_pretrain_model_loads_with_plain_transformers(smoke_run):
    from transformers import AutoModelForMaskedLM, pipeline

    home = smoke_run[0]
    m = manifest(home, "pretrain")
    acc, vocab_size = m["metrics"]["masked_token_accuracy"], m["metrics"]["vocab_size"]
    assert m["metrics"]["params"] > 0 and acc == m["metrics"]["heldout"]["valid"]["acc"]
    assert 10 / vocab_size < acc < 1  # at least the unigram learned: chance is 1 / vocabulary
    assert set(m["metrics"]["train"]) == {"stage1", "stage2"}
    folder = home / "data" / "runs" / "nb" / "pretrain" / "model"
    assert (folder / "model.safetensors").exists() and (folder / "README.md").exists()
    card = (folder / "README.md").read_text(encoding="utf-8")
    assert card.startswith("---\nlanguage: zh") and "widget:" in card and "non-embedding" in card
    AutoModelForMaskedLM.from_pretrained(str(folder))
    out = pipeline("fill-mask", model=str(folder))("中国的首都是[MASK]京。")
    assert len(out) == 5 and all("token_str" in r for r in out)


@pytest.mark.slow
@pytest.mark.notebook
def test_smoke_distill_manifest(smoke_run):
    m = manifest(smoke_run[0], "distill")["metrics"]
    assert {
        "teacher",
        "assistant",
        "one-stage-s1234",
        "one-stage-s1235",
        "two-stage-s1234",
        "two-stage-s1235",
    } <= set(m["models"])
    assert (
        set(m["summary"]) == {"one-stage", "two-stage"} and m["summary"]["one-stage"]["seeds"] == 2
    )
    mass = m["caches"]["teacher"]["truncation_mass"]
    assert 0 < mass["8"] <= mass["16"] <= 1
    assert m["plan"]["assistant_init"] and m["plan"]["student_map"]


@pytest.mark.slow
@pytest.mark.notebook
def test_smoke_longify_manifest(smoke_run):
    from transformers import AutoModelForMaskedLM

    home = smoke_run[0]
    m = manifest(home, "longify")["metrics"]
    assert m["equivalence_max_abs_diff"] < 1e-4
    assert set(m["bpc"]) == {
        "bert_512_windows", "bert_continued_512", "longformer_before", "longformer_after"
    }  # fmt: skip
    model = AutoModelForMaskedLM.from_pretrained(
        str(home / "data" / "runs" / "nb" / "longify" / "model")
    )
    assert model.config.model_type == "longformer"


@pytest.mark.slow
@pytest.mark.notebook
def test_smoke_evaluate_manifest(smoke_run):
    m = manifest(smoke_run[0], "evaluate")["metrics"]
    assert {"teacher", "longformer", "scratch", "char n-gram LR"} <= set(m["tasks"])
    assert set(m["tasks"]["teacher"]) == {"sentiment", "thucnews", "msra_ner", "stsb"}
    found = m["findings"]["this pretrained teacher beats training from scratch"]
    for f in m["findings"].values():  # each with its difference, interval and verdict
        assert f["verdict"] in ("holds", "does not hold", "inconclusive")
        lo, hi = f["ci95"]
        assert lo <= hi and f["verdict"] == (
            "holds" if lo > 0 else "does not hold" if hi < 0 else "inconclusive"
        )
    assert found["units"] == {"a": 2, "b": 2} and found["examples"]["sentiment"] == 48
    assert found["speaks_for"] == "networks"  # one pretraining run: worded for this teacher
    assert m["models"]["teacher"]["latency_ms_b1"] > 0
    ld = m["longdoc"]  # the cpu profile's way: the probe on the frozen encoders
    assert ld["method"] == "probe" and ld["examples"] == 24 and ld["length"] == 1002
    for reader in ("teacher", "longformer"):
        assert ld["results"][reader]["longdoc"]["examples"] == 24
        assert sum(b["examples"] for b in ld["by_position"][reader]) == 24
    assert ld["finding"]["claim"].endswith("(a linear token probe)")
    assert ld["finding"]["scope"]["a"] == "2 probe runs"


@pytest.mark.slow
def test_the_long_document_task_fine_tuned_as_the_gpu_profile_runs_it(smoke_run, tmp_path):
    """`evaluate.longdoc_method = finetune` on the smoke run's teacher and Longformer: both readers
    fine-tuned (BERT on its first 512 tokens), scored by needle position, the finding past 512."""
    from lab import config
    from lab.core import names, vocab
    from lab.longdoc import long_document_task

    home = smoke_run[0]
    cfg = config.load(
        "evaluate", run_id="nb", profile="smoke", overrides={"longdoc_method": "finetune"}
    )
    folders = {names.TEACHER: ("pretrain", "model"), names.LONGFORMER: ("longify", "model")}
    run_dir = home / "data" / "runs" / "nb"
    wanted = {m: {"dir": run_dir / s / f} for m, (s, f) in folders.items()}
    corpus_m = manifest(home, "corpus") | {"dir": run_dir / "corpus"}
    tokenizers = {m: vocab.load(w["dir"]) for m, w in wanted.items()}
    out = long_document_task(cfg, wanted, tokenizers, corpus_m, tmp_path)
    assert out["method"] == "finetune" and out["reach"] == 512
    for reader in ("teacher", "longformer"):
        assert len(out["results"][reader]["longdoc"]["runs"]) == cfg.seeds
    assert not out["finding"]["claim"].endswith("probe)")
    assert out["finding"]["scope"]["a"] == f"{cfg.seeds} fine-tuning runs"


@pytest.mark.notebook
@pytest.mark.slow
def test_pretraining_runs_data_parallel_under_torchrun(smoke_run, tmp_path):
    """`torchrun --nproc_per_node 2 -m lab.pretrain` (gloo on CPU) on the smoke run's data."""
    home = smoke_run[0]
    runs_dir = home / "data" / "runs"
    for stage in ("corpus", "wwm"):
        shutil.copytree(runs_dir / "nb" / stage, runs_dir / "ddp" / stage, dirs_exist_ok=True)
    env = {**os.environ, "ZH_MINILAB_HOME": str(home), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
           "-m", "lab.pretrain", "--profile", "smoke", "--run-id", "ddp"]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = manifest_of(home, "ddp", "pretrain")
    assert m["metrics"]["train"]["stage1"]["world_size"] == 2


def manifest_of(home, run_id, stage):
    return json.loads((home / "data" / "runs" / run_id / stage / "manifest.json").read_text())


@pytest.mark.slow
@pytest.mark.notebook
def test_rerun_is_cached(smoke_run):
    home, _ = smoke_run
    again = lab("run", "--profile", "smoke", "--run-id", "nb", "--to", "corpus", home=home)
    assert "cached" in again.stdout
    lab("report", "nb", home=home)


@pytest.mark.slow
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


@pytest.mark.slow
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
def test_bad_command_line_fails_before_running(tmp_path, monkeypatch, capsys, args, message):
    """In process: `cli.main` is what `python -m lab` runs (its subprocess twin is the dry run)."""
    from lab import cli

    monkeypatch.setenv("ZH_MINILAB_HOME", str(tmp_path))
    assert cli.main(["run", "--profile", "smoke", "--dry-run", *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


def test_a_run_without_a_run_id_is_named_after_its_profile(monkeypatch):
    from lab import cli

    got = {}
    monkeypatch.setattr(
        pipeline, "run", lambda run_id, profile, *a, **k: got.update(run_id=run_id) or 0
    )
    assert cli.main(["run", "--profile", "smoke", "--to", "corpus"]) == 0
    assert got == {"run_id": "smoke"}


@pytest.mark.slow
def test_params_file(tmp_path):
    """--params is applied: the dry run's plan shows the file's value, not the profile's."""
    (tmp_path / "p.yaml").write_text("corpus:\n  max_docs_per_source: 123\n", encoding="utf-8")
    plain = lab("run", "--profile", "smoke", "--dry-run", home=tmp_path).stdout
    given = lab("run", "--profile", "smoke", "--dry-run", "--params", str(tmp_path / "p.yaml"),
                home=tmp_path).stdout  # fmt: skip
    assert "documents per source: 400" in plain
    assert "documents per source: 123" in given and "documents per source: 400" not in given


@pytest.mark.slow
def test_sources_lists_registry(tmp_path):
    proc = lab("sources", home=tmp_path)
    assert "peoples_daily" in proc.stdout and "licence" in proc.stdout
