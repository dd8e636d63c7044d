"""Model names: made from (kind, seed) in one place and read back the same way everywhere."""

import pytest

from lab import cards, config
from lab.core import models, names


def every_name() -> list[str]:
    """Every name the lab gives a model: the run's roles, each student kind over seeds, baselines."""
    fixed = [names.TEACHER, names.ASSISTANT, names.LONGFORMER, names.SCRATCH, names.NGRAM]
    return fixed + [names.student(k, s) for k in names.STUDENT_KINDS for s in (0, 7, 1234, 99999)]


@pytest.mark.parametrize("name", every_name())
def test_every_name_reads_back_to_its_kind_and_seed(name):
    parsed = names.parse(name)
    if parsed.seed is None:
        assert parsed.kind == name and not names.is_student(name)
    else:
        assert names.student(parsed.kind, parsed.seed) == name and names.is_student(name)
        assert parsed.kind in names.STUDENT_KINDS and str(parsed.seed) in name
    assert names.selected(name, [parsed.kind]) and names.selected(name, ["all"])


def test_kinds_titles_and_teachers():
    assert names.kind("one-stage-s1234") == "one-stage"  # not "one": the seed suffix only goes
    assert names.title("one-stage-s1234") == "one-stage student"
    assert names.title("two-stage-s5") == "two-stage student"
    assert names.title("assistant") == "teacher assistant"
    assert (
        names.taught_by("two-stage-s5") == "assistant"
        and names.taught_by("one-stage-s5") == "teacher"
    )
    assert names.parse("my-model-s3") == names.Name("my-model-s3", None)  # not a student kind
    assert not names.selected("two-stage-s1", ["one-stage", "teacher"])
    with pytest.raises(ValueError, match="student kind"):
        names.student("three-stage", 1)


def test_the_one_stage_students_card_calls_it_a_one_stage_student():
    cfg = config.load("distill", run_id="r", profile="smoke")
    model = models.build("L1_H32_A2", 100, seed=0)
    row = {
        "acc": 0.1,
        "ppl": 50.0,
        "agreement": 0.2,
        "latency_vs_teacher": {"ratio": 2.0, "ci95": [1.8, 2.2]},
        "throughput_vs_teacher": {"ratio": 1.5, "ci95": [1.4, 1.6]},
        "params": 1,
        "non_embedding": 1,
    }
    summary = {"steps": 10, "tokens": 1000, "seconds": 6.0}
    card = cards.student(cfg, "one-stage-s1234", model, row, summary, "initialised randomly", "x")
    title = card.split("\n# ", 1)[1].splitlines()[0]
    assert "(one-stage student)" in title and "Distilled from the teacher " in card
    card = cards.student(cfg, "two-stage-s1234", model, row, summary, "initialised randomly", "x")
    assert "(two-stage student)" in card and "Distilled from the teacher assistant " in card
