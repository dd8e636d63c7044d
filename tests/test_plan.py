"""The arithmetic of a training plan, on numbers worked out by hand."""

import pytest

from lab.core import models, plan

TINY = plan.Shape(layers=2, hidden=64, heads=1, params=1_000_000, non_embedding=100_000, vocab=8000)


def test_tokens_count_every_factor():
    assert (
        plan.tokens(steps=10, batch=4, seq_len=128, grad_accum=2, processes=8)
        == 10 * 4 * 128 * 2 * 8
    )


def test_flops_of_a_trained_token():
    # 6 N + 12 L H T + 6 H V m = 600,000 + 196,608 + 460,800
    assert plan.train_flops(TINY, 1, seq_len=128, mask_share=0.15) == pytest.approx(1_257_408)
    assert plan.forward_flops(TINY, 1, seq_len=128) == 2 * 100_000 + 4 * 2 * 64 * 128


def test_time_memory_and_disk():
    # 312 TFLOP/s x 40% x 8 processes for one hour
    assert plan.hours(312e12 * 0.4 * 8 * 3600, 8, "A100") == pytest.approx(1.0)
    state = 16 * TINY.params
    act = 2 * (128 * 4 * 64 * (34 + 5 * 1 * 128 / 64))
    assert plan.memory(TINY, batch=4, seq_len=128, mask_share=0.0) == pytest.approx(state + act)
    windowed = plan.memory(TINY, batch=4, seq_len=128, mask_share=0.0, window=64)
    assert windowed < plan.memory(TINY, batch=4, seq_len=128, mask_share=0.0)
    assert plan.cache_disk(10, 100, 0.15, 8) == 10 * (800 + 15 * 8 * 6)
    assert plan.fits(100e9) == "H200" and plan.fits(200e9).startswith("none")


def test_epochs_and_their_warning():
    line, many = plan.epochs_line(4_100, 100)
    assert line.startswith("41.0 epochs") and many
    assert plan.epochs_line(100, None) == (
        "epochs unknown (the corpus size is not known before it is read)",
        False,
    )


def test_a_model_shape_matches_the_parameter_count():
    conf = models.config("Mini", 8000)
    s = models.shape(conf)
    assert (s.layers, s.hidden, s.heads, s.vocab) == (4, 256, 4, 8000)
    assert s.params == models.count(conf)["total"] and s.non_embedding == 3_224_832
