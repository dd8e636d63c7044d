"""The benches' own arithmetic: what they print must be what they measured."""

import json
import queue
import shutil

import numpy as np
import pytest
from conftest import lab

from lab.bench import finetune, longify
from lab.bench.pretrain import _matmuls_alone
from lab.core import budget, models, stats


@pytest.mark.slow
def test_longify_flops_past_the_counted_length_follow_the_counter(monkeypatch):
    """Above 4,096 tokens the bench extrapolates full attention's a*n + b*n^2 from counts at 2K and
    4K; checked one octave down (counts at 1,024 and 2,048, extrapolated to 4,096) against torch's
    counter. The Longformer is always counted directly."""

    def gflop(kind: str, length: int) -> float:
        q = queue.Queue()
        longify._fwd_bwd_child(kind, length, 256, q)
        return q.get()[3]

    direct = {kind: gflop(kind, 4096) for kind in ("bert", "longformer")}
    monkeypatch.setattr(longify, "COUNTED", 2048)
    assert gflop("bert", 4096) == pytest.approx(direct["bert"], rel=0.02)  # masked counts differ
    assert gflop("longformer", 4096) == pytest.approx(direct["longformer"], rel=1e-9)  # counted


@pytest.mark.slow
def test_a_bench_child_that_dies_is_named_not_waited_for():
    with pytest.raises(
        RuntimeError, match="the bert step at -1 tokens died .exit code 1; its traceback"
    ):
        longify._measure("bert", -1, 256)


def test_the_matmul_ceiling_runs_the_products_the_flop_count_counts():
    """The pretraining bench's ceiling arm multiplies exactly the FLOPs a token costs by
    `budget.flops_per_token` (itself checked against torch's counter in test_budget)."""
    for name, vocab, length in (("L2_H128", 500, 32), ("Mini", 21128, 128)):
        size = models.size(models.config(name, vocab))
        arm, per_token, shapes = _matmuls_alone(size, 4, length, 0.25, repeats=1)
        assert per_token == pytest.approx(budget.flops_per_token(size, length, 0.25), rel=1e-9)
        n, h, f, heads = 4 * length, size.hidden, size.ffn, size.heads
        # the first feed-forward map (x W: n x h by h x f), then dx = dy W^T and dW = x^T dy
        assert shapes[12:15] == [(1, n, h, f), (1, n, f, h), (1, h, n, f)]
        # the scores of the first layer: q k^T per head, then its two backward products
        per_head = (4 * heads, length, h // heads, length)
        assert shapes[6 * 3 * size.layers] == per_head
        if name == "L2_H128":
            assert arm() > 0


def _fits(rng, p_right: float, n_fits: int = 12, n: int = 500) -> list:
    """Per-example test outcomes of fits that are right with probability `p_right`."""
    return [[[float(x)] for x in rng.random(n) < p_right] for _ in range(n_fits)]


def test_the_arms_are_judged_alike_only_when_both_learned():
    """`bench finetune`'s equal-accuracy verdict: equal within the band when the interval lies in
    it, not equal when it lies outside, never judged while an arm is not shown above chance."""
    rng = np.random.default_rng(0)
    chance = 0.5
    arms = {"lab": _fits(rng, 0.70), "same": _fits(rng, 0.70), "worse": _fits(rng, 0.55),
            "at_chance": _fits(rng, 0.50), "also_at_chance": _fits(rng, 0.50)}  # fmt: skip
    floor = {name: finetune._above_chance(name, fits, chance) for name, fits in arms.items()}
    assert floor["same"]["verdict"] == stats.HOLDS and floor["at_chance"]["verdict"] != stats.HOLDS
    same, worse = (
        finetune._alike(arms, "lab", "same", floor),
        finetune._alike(arms, "lab", "worse", floor),
    )
    assert same["verdict"] == stats.HOLDS
    assert -finetune.EQUAL_WITHIN < same["ci95"][0] <= same["difference"] <= same["ci95"][1]
    assert worse["verdict"] == stats.FAILS and worse["ci95"][0] >= finetune.EQUAL_WITHIN
    # one arm learned and the other did not: that they differ is shown all the same
    assert finetune._alike(arms, "lab", "at_chance", floor)["verdict"] == stats.FAILS
    arms["lab"] = arms["at_chance"]  # equal at chance says nothing
    floor["lab"] = floor["at_chance"]
    idle = finetune._alike(arms, "lab", "also_at_chance", floor)
    assert idle["ci95"][0] > -finetune.EQUAL_WITHIN and idle["ci95"][1] < finetune.EQUAL_WITHIN
    assert idle["verdict"] == stats.OPEN and "not shown above chance" in idle["reason"]


@pytest.mark.slow
@pytest.mark.notebook
def test_bench_finetune_fine_tunes_a_model_folder_a_researcher_names(smoke_run, tmp_path):
    """`python -m lab bench finetune --quick --model FOLDER`, as the README gives it, on the smoke
    run's pretrained teacher: every arm fine-tunes that folder with its own tokenizer, and the JSON
    carries each arm's accuracy, the equal-accuracy verdicts with their intervals, and each arm's
    untimed warm-up fit, whose seed is none of the rounds'."""
    folder = smoke_run[0] / "data" / "runs" / "nb" / "pretrain" / "model"
    proc = lab("bench", "finetune", "--quick", "--model", str(folder), home=tmp_path)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["bench"] == "finetune" and out["model"] == str(folder)
    assert out["model_folder"] == str(folder.resolve())
    arms = ("lab", "trainer", "lab_before", "lab_padded", "lab_buckets")
    # the warm-up fits' seeds are none of the rounds'
    assert out["fits"]["seeds"] == {arm: [0, 1, 2, 3] for arm in arms}
    assert set(out["warmup_seconds"]) == set(arms) and min(out["warmup_seconds"].values()) > 0
    assert set(out["test_accuracy"]) == set(arms) and out["ratio_vs_padded"] > 0
    assert (tmp_path / "reports" / "bench" / "finetune-model-quick.json").is_file()
    for a, b in (
        ("lab", "trainer"),
        ("lab", "lab_before"),
        ("lab", "lab_padded"),
        ("lab_buckets", "lab"),
    ):
        f = out["alike"][f"{a} vs {b}"]
        assert f["ci95"][0] <= f["difference"] <= f["ci95"][1]
        learned = all(out["above_chance"][x]["verdict"] == stats.HOLDS for x in (a, b))
        assert learned or f["verdict"] != stats.HOLDS
        assert f"{a} - {b} test accuracy within +-0.03: {f['verdict']}" in proc.stdout


@pytest.mark.slow
@pytest.mark.notebook
def test_bench_model_is_refused_where_it_cannot_be_used(smoke_run, tmp_path):
    """--model names a BERT masked LM to fine-tune: another bench, a Longformer folder or a folder
    without its tokenizer is refused with the fix, before any work."""
    runs = smoke_run[0] / "data" / "runs" / "nb"
    bare = shutil.copytree(runs / "pretrain" / "model", tmp_path / "bare")
    for f in bare.glob("tokenizer*"):
        f.unlink()
    cases = {("all", "x"): "no other bench takes it",
             ("finetune", str(runs / "longify" / "model")): "a longformer (config.json); the bench fine-tunes BERT",
             ("finetune", str(bare)): f"no tokenizer in {bare}; save the model's tokenizer"}  # fmt: skip
    for (bench, model), message in cases.items():
        proc = lab("bench", bench, "--quick", "--model", model, home=tmp_path, check=False)
        assert proc.returncode == 1 and message in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
