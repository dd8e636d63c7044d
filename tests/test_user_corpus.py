"""A researcher's own corpus: read in parts without holding it in memory, small corpora refused or
balanced, a user file alone through every stage, and a gpu plan that a dry run checks."""

import json

import numpy as np
import pytest
from conftest import lab
from datasets import Dataset, load_from_disk

from lab import config, corpus, runs
from lab.core import documents, sources
from lab.core.build import MIN_DOCUMENTS
from lab.core.documents import CorpusError


def news_lines(n: int, seed: int = 0) -> list[str]:
    """`n` new documents of 2-4 People's Daily paragraphs each (no task evaluation text)."""
    paras = ["".join(w for w, _ in p) for p in sources.load("peoples_daily")]
    rng = np.random.default_rng(seed)
    return [
        "".join(paras[i] for i in rng.integers(0, len(paras), size=rng.integers(2, 5)))
        for _ in range(n)
    ]


# --- reading in parts ------------------------------------------------------------------------------


def test_parts_read_every_line_once_with_their_line_numbers(tmp_path, monkeypatch):
    monkeypatch.setattr(documents, "MIN_PART_BYTES", 2_000)
    lines = news_lines(300)
    path = tmp_path / "c.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    parts = documents.parts_of(str(path), parts=8)
    assert len(parts) > 4
    got = [text for p in parts for _, text, _ in documents.read(p)]
    assert got == lines
    data = path.read_bytes()
    assert [p.first_line for p in parts] == [data[: p.start].count(b"\n") + 1 for p in parts]


def test_paragraph_mode_and_jsonl_errors_in_a_later_part(tmp_path, monkeypatch):
    monkeypatch.setattr(documents, "MIN_PART_BYTES", 2_000)
    paras = [p for p in news_lines(150) if len(p) > 41][:120]  # two lines each
    path = tmp_path / "p.txt"
    path.write_text("\n\n".join(f"{p[:40]}\n{p[40:]}" for p in paras) + "\n", encoding="utf-8")
    parts = documents.parts_of(str(path), parts=6)
    assert len(parts) > 2 and all(p.paragraphs for p in parts)
    assert [t for p in parts for _, t, _ in documents.read(p)] == [
        f"{p[:40]} {p[40:]}" for p in paras
    ]
    rows = [json.dumps({"text": t}, ensure_ascii=False) for t in news_lines(200)]
    rows[150] = '{"body": "no text here"}'
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    parts = documents.parts_of(str(path), parts=6)
    assert len(parts) > 2
    with pytest.raises(CorpusError, match='line 151 has no "text" field'):
        [t for p in parts for _, t, _ in documents.read(p)]


def test_utf16_and_saved_datasets_sources(tmp_path):
    lines = news_lines(40)
    path = tmp_path / "u16.txt"
    path.write_text("\n".join(lines), encoding="utf-16")
    assert documents.read_user_source(str(path), "utf-16") == lines
    Dataset.from_dict({"text": lines}).save_to_disk(str(tmp_path / "ds"))
    parts = documents.parts_of(str(tmp_path / "ds"), parts=4)
    assert len(parts) == 4 and [t for p in parts for _, t, _ in documents.read(p)] == lines


@pytest.mark.slow
def test_capped_sources_read_their_first_documents_only(lab_home, tmp_path):
    path = tmp_path / "big.txt"
    path.write_text("\n".join(news_lines(400)) + "\n", encoding="utf-8")
    cfg = config.load("corpus", run_id="capped", profile="smoke",
                      overrides={"sources": [str(path)], "max_docs_per_source": 120})  # fmt: skip
    m = corpus.run(cfg)
    stats = json.loads((m["dir"] / "stats.json").read_text(encoding="utf-8"))
    assert stats["documents_read"] == {str(path): 120}


# --- small corpora -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_tiny_corpus_is_refused_with_its_counts_and_nothing_written_is_lost(
    lab_home, smoke_corpus, tmp_path
):
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("今天天气很好。\n今天天气很好。\n我们去公园散步吧。\n", encoding="utf-8")
    before = runs.read_manifest(smoke_corpus["dir"])
    cfg = config.load(
        "corpus", run_id="t-smoke", profile="smoke", overrides={"sources": [str(tiny)]}
    )
    with pytest.raises(CorpusError) as err:
        corpus.run(cfg)
    message = str(err.value)
    assert "2 documents after cleaning and deduplication (3 read" in message
    assert "1 duplicates" in message and f"at least {MIN_DOCUMENTS}" in message
    assert (
        runs.read_manifest(smoke_corpus["dir"])["key"] == before["key"]
    )  # the last good corpus stays


@pytest.mark.slow
def test_a_small_corpus_gets_valid_and_test_documents(lab_home, tmp_path):
    path = tmp_path / "small.txt"
    path.write_text("\n".join(news_lines(MIN_DOCUMENTS + 5)) + "\n", encoding="utf-8")
    cfg = config.load("corpus", run_id="small", profile="smoke",
                      overrides={"sources": [str(path)], "valid_frac": 0.001, "test_frac": 0.001})  # fmt: skip
    m = corpus.run(cfg)
    docs = m["metrics"]["documents"]
    assert docs["valid"] >= 1 and docs["test"] >= 1 and sum(docs.values()) == MIN_DOCUMENTS + 5
    texts = {s: list(load_from_disk(str(m["dir"] / "corpus"))[s]["text"]) for s in docs}
    assert not set(texts["valid"]) & set(texts["train"]) and not set(texts["test"]) & set(
        texts["train"]
    )


@pytest.mark.slow
def test_evaluation_texts_inside_user_documents_are_removed(lab_home, tmp_path):
    from lab.core.taskdata import eval_texts, prepare_tasks

    raw = {n: sources.load(n) for n in ("reviews", "thucnews", "msra_ner", "stsb")}
    tasks, _ = prepare_tasks(raw, eval_frac=0.1, max_train=200, max_eval=100)
    held = [t for t in eval_texts(tasks)["thucnews"] if len(t) >= 8][:5]
    lines = news_lines(200)
    lines[10] += held[0]  # a headline of the test split inside a longer document
    lines[20] = held[1]  # and one alone
    path = tmp_path / "leaky.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    cfg = config.load("corpus", run_id="leaky", profile="smoke", overrides={"sources": [str(path)]})
    m = corpus.run(cfg)
    assert m["metrics"]["heldout_overlap"]["thucnews"] == 0
    assert m["metrics"]["docs_dropped_for_eval_texts"] >= 2
    text = "\n".join(
        t
        for s in ("train", "valid", "test")
        for t in load_from_disk(str(m["dir"] / "corpus"))[s]["text"]
    )
    assert held[0] not in text and held[1] not in text


# --- a user file alone, every stage -------------------------------------------------------------------


@pytest.mark.notebook
@pytest.mark.slow
def test_a_user_file_alone_runs_every_stage(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("\n".join(news_lines(500, seed=3)) + "\n", encoding="utf-8")
    proc = lab(
        "run",
        "--profile",
        "smoke",
        "--run-id",
        "mine",
        "-p",
        f"corpus.sources=[{path}]",
        home=tmp_path,
    )
    status = json.loads((tmp_path / "reports" / "mine" / "status.json").read_text())
    assert all(e["status"] == "ok" for e in status["stages"].values()), proc.stdout[-2000:]
    assert set(status["stages"]) == set(config.STAGES)
    m = json.loads((tmp_path / "data" / "runs" / "mine" / "corpus" / "manifest.json").read_text())
    assert set(m["metrics"]["chars_per_source"]) == {str(path)}
    wwm = json.loads((tmp_path / "data" / "runs" / "mine" / "wwm" / "manifest.json").read_text())
    assert (
        0.5 < wwm["metrics"]["segmentation_f1"] < 1
    )  # scored on People's Daily's gold all the same
    ev = json.loads(
        (tmp_path / "data" / "runs" / "mine" / "evaluate" / "manifest.json").read_text()
    )
    assert set(ev["metrics"]["tasks"]["teacher"]) == {"sentiment", "thucnews", "msra_ner", "stsb"}


# --- the gpu recipe, checked by a dry run --------------------------------------------------------------


def _corpus_file(tmp_path, size: int):
    """A file of `size` bytes whose first megabytes are real text and the rest a sparse hole: the
    dry run reads a file's size and a sample of its start, nothing more."""
    path = tmp_path / "big.txt"
    head = ("\n".join(news_lines(2000)) + "\n").encode("utf-8")
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(size)
    return path


@pytest.mark.slow
def test_gpu_dry_run_on_the_offline_corpus_warns_of_thousands_of_epochs(tmp_path):
    proc = lab("run", "--profile", "gpu", "--dry-run", home=tmp_path)
    assert (
        "stage 1: 1,000,000 steps x 64 sequences x 128 tokens x 1 accumulation x 8 process(es) = 65,536,000,000 tokens"
        in proc.stdout
    )
    assert "stage 1 WARNING: it reads its corpus more than 40 times" in proc.stdout
    assert "H100" in proc.stdout and "per process (fits" in proc.stdout


@pytest.mark.slow
def test_gpu_dry_run_for_a_14_gb_corpus(tmp_path):
    path = _corpus_file(tmp_path, 14 * 10**9)
    proc = lab(
        "run", "--profile", "gpu", "--dry-run", "-p", f"corpus.sources=[{path}]", home=tmp_path
    )
    line = next(x for x in proc.stdout.splitlines() if x.strip().startswith("stage 1:"))
    epochs = float(line.split("tokens; ")[1].split(" epochs")[0].replace(",", ""))
    assert 5 < epochs < 25, line  # UER's 1M steps read CLUECorpusSmall about 13 times
    assert "stage 1 WARNING" not in proc.stdout


@pytest.mark.slow
def test_a_cached_distillation_that_cannot_fit_the_disk_is_refused(tmp_path):
    path = _corpus_file(tmp_path, 14 * 10**9)
    proc = lab("run", "--profile", "gpu", "--dry-run", "-p", f"corpus.sources=[{path}]",
               "-p", "distill.mode=cached", home=tmp_path, check=False)  # fmt: skip
    assert proc.returncode == 2, proc.stdout[-1500:]
    assert (
        "refused: distill: the teacher cache needs" in proc.stderr
        and "distill.mode=online" in proc.stderr
    )


@pytest.mark.slow
def test_a_batch_no_accelerator_holds_is_refused(tmp_path):
    proc = lab("run", "--profile", "gpu", "--dry-run", "--to", "pretrain", "-p", "pretrain.batch_size=8192",
               home=tmp_path, check=False)  # fmt: skip
    assert proc.returncode == 2 and "fits no named accelerator" in proc.stderr
