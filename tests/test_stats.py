"""Verdicts with intervals: the estimator's coverage checked by simulation (a probit model of
examples, recipes and training runs), and its arithmetic on outcomes made to a known truth."""

import math

import numpy as np
import pytest
from scipy.stats import norm, spearmanr

from lab.core import stats
from lab.core.stats import Arm, Outcomes

N_EXAMPLES = 1000
DIFFICULTY = 1.0  # SD of the examples' shared difficulty (probit scale)


def run_sd_for(points: float, mu: float) -> float:
    """The SD of run effects (probit scale) that spreads runs' expected accuracy by `points` / 100."""
    if points == 0:
        return 0.0
    scale = math.sqrt(1 + DIFFICULTY**2)
    return points / 100 * scale / norm.pdf(mu / scale)


def true_accuracy(mu: float, run_sd: float) -> float:
    """E over runs and examples of P(correct) = Phi(mu + u + d): Phi(mu / sqrt(1 + var u + var d))."""
    return float(norm.cdf(mu / math.sqrt(1 + run_sd**2 + DIFFICULTY**2)))


def simulate(
    rng, mus: tuple[float, float], run_sd: float, runs: int, tasks: int = 1
) -> tuple[Arm, Arm]:
    """Two recipes' runs on the same examples: shared difficulty per example, an effect per run that
    is the same on every task (a good run is good everywhere), Bernoulli outcomes."""
    difficulty = rng.normal(0, DIFFICULTY, (tasks, N_EXAMPLES))
    arms = []
    for side, mu in enumerate(mus):
        units = []
        for _ in range(runs):
            u = rng.normal(0, run_sd)
            p = norm.cdf(mu + u + difficulty)  # (tasks, examples)
            right = (rng.random(p.shape) < p).astype(float)
            units.append(
                {
                    f"t{k}": Outcomes.of("accuracy", [right[k][:, None].tolist()])
                    for k in range(tasks)
                }
            )
        arms.append(Arm("ab"[side], units, level="training run"))
    return arms[0], arms[1]


def coverage(
    points: float, runs: int, *, reps: int, delta: float, seed: int, tasks: int = 1
) -> dict:
    """Share of replications whose interval holds the true difference, and share with a verdict."""
    rng = np.random.default_rng(seed)
    mu_b = 0.4
    run_sd = run_sd_for(points, mu_b)
    mu_a = mu_b + delta
    truth = true_accuracy(mu_a, run_sd) - true_accuracy(mu_b, run_sd)
    covered = verdicts = 0
    for i in range(reps):
        a, b = simulate(rng, (mu_a, mu_b), run_sd, runs, tasks)
        r = stats.compare(a, b, n_boot=300, seed=i)
        lo, hi = r["ci95"]
        covered += lo <= truth <= hi
        verdicts += r["verdict"] != stats.OPEN
    return {"coverage": covered / reps, "verdicts": verdicts / reps, "truth": truth}


SCENARIOS = [(points, runs) for points in (0, 1, 3) for runs in (3, 5)]


@pytest.mark.parametrize(
    "points, runs", SCENARIOS, ids=[f"spread{p}-runs{r}" for p, r in SCENARIOS]
)
def test_coverage_and_false_verdicts_under_between_run_spread(points, runs):
    """Equal recipes: at most 7% of replications get a verdict; a real difference (0.2 on the probit
    scale, about 6 points): the interval covers it in 92-98% of replications."""
    null = coverage(points, runs, reps=300, delta=0.0, seed=1)
    assert null["verdicts"] <= 0.07, null
    assert 0.92 <= null["coverage"] <= 0.98, null
    real = coverage(points, runs, reps=300, delta=0.2, seed=2)
    assert 0.92 <= real["coverage"] <= 0.98, real


def test_a_good_run_counts_once_across_tasks():
    """Four tasks that share each run's effect: the interval of the task mean is as wide as the
    run spread demands, not four independent draws' worth narrower."""
    r = coverage(3, 3, reps=200, delta=0.0, seed=3, tasks=4)
    assert r["verdicts"] <= 0.07 and r["coverage"] >= 0.92, r


def correct(p: float, runs: int = 3, n: int = 1000, seed: int = 0) -> Arm:
    rng = np.random.default_rng(seed)
    units = [
        {"t": Outcomes.of("accuracy", [(rng.random((n, 1)) < p).astype(float).tolist()])}
        for _ in range(runs)
    ]
    return Arm("x", units, level="fine-tuning run")


def test_a_clear_difference_holds_and_its_reverse_does_not():
    a, b = correct(0.9), correct(0.6, seed=1)
    up = stats.compare(a, b, n_boot=500)
    assert up["verdict"] == stats.HOLDS and up["ci95"][0] > 0.2
    assert stats.compare(b, a, n_boot=500)["verdict"] == stats.FAILS


def test_chance_floor_retention_is_inconclusive_at_chance():
    """Two models at the majority class: raw retention 0.5 - 0.85 x 0.5 > 0 would 'hold'; above chance
    it is 0 - 0.85 x 0 and cannot."""
    a, b = correct(0.5, seed=4), correct(0.5, seed=5)
    raw = stats.compare(a, b, ratio=0.85, n_boot=300)
    assert raw["verdict"] == stats.HOLDS  # the chance floor alone makes the raw claim hold
    floored = stats.compare(a, b, ratio=0.85, chance={"t": 0.5}, n_boot=300)
    assert floored["verdict"] == stats.OPEN and abs(floored["difference"]) < 0.03


def test_a_deterministic_arm_adds_no_unit_variance():
    a, base = correct(0.8), correct(0.7, runs=1, seed=9)
    det = Arm("ngram", base.units, level="deterministic", deterministic=True)
    r = stats.compare(a, det, n_boot=300)
    unit_scores = [stats.scores(u["t"]).mean() for u in a.units]
    assert r["units"] == {"a": 3, "b": 1}
    assert r["se_units"] ** 2 == pytest.approx(np.var(unit_scores, ddof=1) / 3)  # a's runs only


def test_entity_f1_and_spearman_from_per_example_outcomes():
    counts = Outcomes.of("entity_f1", [[[2, 0, 0], [1, 1, 1], [0, 0, 2]]])  # tp, fp, fn
    assert stats.scores(counts)[0] == pytest.approx(2 * 3 / (2 * 3 + 1 + 3))
    rng = np.random.default_rng(0)
    gold = rng.integers(0, 6, 200).astype(float)
    pred = gold + rng.normal(0, 2, 200)
    pairs = Outcomes.of("spearman", [np.stack([pred, gold], 1).tolist()])
    assert stats.scores(pairs)[0] == pytest.approx(spearmanr(pred, gold).statistic)
    # the bootstrap's draws of each metric: a draw of every example once is the score itself
    once = np.ones((1, 3))
    assert stats._boot_scores(counts, once)[0] == pytest.approx(stats.scores(counts)[0])
    assert stats._boot_scores(pairs, np.ones((1, 200)))[0] == pytest.approx(stats.scores(pairs)[0])
    twice_first = np.array([[2.0, 1.0, 0.0]])  # example 1 twice, example 3 left out
    assert stats._boot_scores(counts, twice_first)[0] == pytest.approx(2 * 5 / (2 * 5 + 1 + 1))


def test_sides_scored_on_different_examples_are_refused():
    with pytest.raises(ValueError, match="different examples"):
        stats.compare(correct(0.5, n=10), correct(0.5, n=11))


def test_paired_differences_and_their_resolution():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, 40)
    assert stats.paired(a, a - 1.0)["verdict"] == stats.HOLDS
    assert stats.paired(a, a + rng.normal(0, 0.5, 40))["verdict"] == stats.OPEN
    # a true gain of the minimum detectable size is found in about 80% of replications
    mde = stats.minimum_detectable(0.5, 40)
    found = np.mean([stats.paired(rng.normal(mde, 0.5, 40), np.zeros(40))["verdict"] == stats.HOLDS
                     for _ in range(600)])  # fmt: skip
    assert 0.75 <= found <= 0.85, found
