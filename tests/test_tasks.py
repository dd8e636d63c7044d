import shutil

import numpy as np
import pytest
from datasets import Dataset

from lab.core import models, sources, tasks, vocab
from lab.core.metrics import fill_mask, speed, spread
from lab.evaluate import relative_scores


@pytest.fixture(scope="module")
def tok():
    return vocab.make_tokenizer(sources.load("bert_vocab"))


def test_entities_and_ner_f1():
    assert tasks.entities(["B-PER", "I-PER", "O", "B-LOC", "I-ORG"]) == {
        (0, 2, "PER"),
        (3, 4, "LOC"),
        (4, 5, "ORG"),
    }
    t = tasks.TASKS["msra_ner"]
    gold = [{"labels": [-100, 1, 2, 0, 3, -100]}]
    assert tasks.score(t, gold, [[1, 2, 0, 3]])["entity_f1"] == 1.0
    assert tasks.score(t, gold, [[1, 0, 0, 3]])["entity_f1"] == pytest.approx(0.5)


def test_encode_every_kind(tok):
    cls = tasks.encode(
        tasks.TASKS["sentiment"],
        Dataset.from_dict({"text": ["很好", "不好"], "label": [1, 0]}),
        tok,
        16,
    )
    assert cls[0]["labels"] == 1 and cls[0]["input_ids"][0] == tok.cls_token_id
    sts = tasks.encode(
        tasks.TASKS["stsb"],
        Dataset.from_dict({"sentence1": ["a"], "sentence2": ["b"], "score": [4]}),
        tok,
        16,
    )
    assert sts[0]["labels"] == 4.0 and 1 in sts[0]["token_type_ids"]
    ner = tasks.encode(
        tasks.TASKS["msra_ner"],
        Dataset.from_dict({"tokens": [["北", "京"]], "ner_tags": [["B-LOC", "I-LOC"]]}),
        tok,
        16,
    )
    assert ner[0]["labels"] == [-100, 3, 4, -100] and len(ner[0]["input_ids"]) == 4
    batch = tasks.collate(cls, tok.pad_token_id)
    assert batch["labels"].tolist() == [1, 0]


def test_ngram_baseline_learns_something():
    train = Dataset.from_dict(
        {"text": ["很好很好", "非常好", "太差了", "很差"] * 10, "label": [1, 1, 0, 0] * 10}
    )
    assert tasks.ngram_baseline(tasks.TASKS["sentiment"], train, train)["accuracy"] == 1.0


def test_fill_mask_decodes_several_masks_left_to_right(tok):
    model = models.build("L2_H64", len(tok), seed=0)
    out = fill_mask(model, tok, "[MASK][MASK]是中国的首都。", k=3)
    assert len(out["slots"]) == 2 and len(out["answer"]) >= 2
    assert all(len(s) == 3 for s in out["slots"])


def test_speed_and_relative_scores(tok):
    s = speed(models.build("L2_H64", len(tok), seed=0), repeats=1)
    assert s["latency_ms_b1"] > 0 and s["throughput_seq_s_b32"] > 0
    scores = {"teacher": {"a": {"mean": 0.8}}, "student": {"a": {"mean": 0.6}}}
    assert relative_scores(scores)["student"]["a"] == pytest.approx(0.75)


def test_lm_sequences_are_spread_over_the_split():
    ids = np.arange(1000)[:, None] * np.ones((1, 4), int)
    picked, wids = spread(ids, ids + 1, 5)
    assert picked[:, 0].tolist() == [0, 250, 500, 749, 999]
    assert (wids == picked + 1).all()
    assert len(spread(ids, ids, 5000)[0]) == 1000


def test_ablation_findings_compare_runs_differing_in_one_parameter(tmp_path, monkeypatch):
    """A run whose teacher differs only in the masking (or only in the vocab) is an ablation of
    this one; a run that differs in two parameters is not."""
    from lab import runs
    from lab.core.files import write_json
    from lab.evaluate import ablation_findings

    monkeypatch.setenv("ZH_MINILAB_HOME", str(tmp_path))
    base = {"pretrain": {"masking": "token", "vocab": "compact", "steps": 10}, "corpus": {},
            "wwm": {}, "evaluate": {"lrs": [5e-4], "scratch": True}}  # fmt: skip

    def make_run(run_id, avg, **changes):
        for stage, params in base.items():
            params = {**params, **changes.get(stage, {}), "run_id": run_id}
            folder = runs.stage_dir(run_id, stage)
            folder.mkdir(parents=True)
            metrics = {"average": {"teacher": avg}} if stage == "evaluate" else {}
            write_json(folder / "manifest.json",
                            {"complete": True, "params": params, "metrics": metrics})  # fmt: skip

    make_run("base", 0.50)
    make_run("wwm", 0.55, pretrain={"masking": "wwm"}, evaluate={"scratch": False})
    make_run("full", 0.52, pretrain={"vocab": "full"})
    make_run("two-changes", 0.90, pretrain={"masking": "wwm", "steps": 20})
    # the run being evaluated has no evaluate manifest yet: its evaluate parameters come from it
    shutil.rmtree(runs.stage_dir("base", "evaluate"))
    found = ablation_findings("base", 0.50, base["evaluate"])
    assert set(found) == {
        "whole-word masking beats token-level masking",
        "the compact vocabulary keeps the full vocabulary's score",
    }
    wwm = found["whole-word masking beats token-level masking"]
    assert wwm["holds"] and wwm["wwm"] == 0.55 and wwm["token"] == 0.50
    assert wwm["runs"] == "base vs wwm"
    vocab = found["the compact vocabulary keeps the full vocabulary's score"]
    assert not vocab["holds"] and vocab["full"] == 0.52  # 0.02 lost: more than the 0.01 allowed
    assert ablation_findings("wwm", 0.55, base["evaluate"]) == {}  # "base" is not evaluated now
    make_run("base2", 0.50)
    claim = "whole-word masking beats token-level masking"
    assert ablation_findings("wwm", 0.55, {"lrs": [5e-4], "scratch": False})[claim]["holds"]
    assert ablation_findings("wwm", 0.55, {"lrs": [1e-3]}) == {}  # scored differently
