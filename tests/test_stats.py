"""Verdicts with intervals: the bootstrap over examples and runs, on outcomes made to a known truth."""

import numpy as np
import pytest
from scipy.stats import spearmanr

from lab.core import stats
from lab.core.stats import Outcomes


def correct(p: float, runs: int = 3, n: int = 1000, seed: int = 0) -> Outcomes:
    rng = np.random.default_rng(seed)
    return Outcomes.of("accuracy", (rng.random((runs, n)) < p).astype(float).tolist())


def test_a_clear_difference_holds_and_its_reverse_does_not():
    a, b = {"t": correct(0.9)}, {"t": correct(0.6, seed=1)}
    up = stats.compare(a, b, n_boot=500)
    assert up["verdict"] == stats.HOLDS and up["ci95"][0] > 0.2
    assert stats.compare(b, a, n_boot=500)["verdict"] == stats.FAILS


def test_noise_alone_is_inconclusive():
    same = stats.compare({"t": correct(0.7)}, {"t": correct(0.7, seed=5)}, n_boot=500)
    assert same["verdict"] == stats.OPEN and same["ci95"][0] < 0 < same["ci95"][1]


def test_margin_and_ratio():
    a, b = {"t": correct(0.80)}, {"t": correct(0.90, seed=2)}
    keeps = stats.compare(a, b, ratio=0.85, n_boot=500)  # 0.80 - 0.85 x 0.90 = 0.035
    assert keeps["difference"] == pytest.approx(0.035, abs=0.03) and keeps["verdict"] != stats.FAILS
    assert stats.compare(a, b, margin=-0.2, n_boot=500)["verdict"] == stats.HOLDS


def test_entity_f1_and_spearman_from_per_example_outcomes():
    counts = Outcomes.of("entity_f1", [[[2, 0, 0], [1, 1, 1], [0, 0, 2]]])  # tp, fp, fn
    assert stats.scores(counts)[0] == pytest.approx(2 * 3 / (2 * 3 + 1 + 3))
    rng = np.random.default_rng(0)
    gold = rng.integers(0, 6, 200).astype(float)
    pred = gold + rng.normal(0, 2, 200)
    pairs = Outcomes.of("spearman", [np.stack([pred, gold], 1).tolist()])
    assert stats.scores(pairs)[0] == pytest.approx(spearmanr(pred, gold).statistic)


def test_sides_scored_on_different_examples_are_refused():
    with pytest.raises(ValueError, match="different examples"):
        stats.compare({"t": correct(0.5, n=10)}, {"t": correct(0.5, n=11)})


def test_paired_differences():
    a = np.linspace(1, 2, 50)
    assert stats.paired(a, a - 0.5, n_boot=300)["verdict"] == stats.HOLDS
    assert stats.paired(a, a, n_boot=300)["verdict"] == stats.OPEN
