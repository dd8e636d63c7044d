"""The benches' own arithmetic: what they print must be what they measured."""

import queue

import pytest

from lab.bench import longify
from lab.bench.pretrain import _matmuls_alone
from lab.core import budget, models


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
