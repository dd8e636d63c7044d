"""The arithmetic of a training budget: FLOPs against torch's own FLOP counter on a real training
step, the rest on numbers worked out by hand."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from lab.core import budget, models
from lab.core.masking import WholeWordMaskCollator
from lab.core.mlm import MaskedLM

TINY = budget.Size(
    layers=2, hidden=64, heads=1, params=1_000_000, non_embedding=100_000, vocab=8000
)


def test_tokens_count_every_factor():
    assert (
        budget.tokens(steps=10, batch=4, seq_len=128, grad_accum=2, processes=8)
        == 10 * 4 * 128 * 2 * 8
    )


class _Tok:
    """What the collator needs of a tokenizer."""

    mask_token_id, pad_token_id, all_special_ids = 3, 0, [0, 1, 2, 3]

    def __len__(self):
        return 2000


@pytest.mark.parametrize("name, seq_len", [("L2_H64", 128), ("L4_H256", 128), ("L2_H128", 512)])
def test_train_flops_match_torchs_flop_counter(name, seq_len):
    """A real step (forward + backward, the MLM head at masked positions only) counted by torch's
    FlopCounterMode, against the formula."""
    conf = models.config(
        name, 2000, max_positions=seq_len, attn_implementation="eager", dropout=0.0
    )
    model = MaskedLM(models.build(name, 2000, max_positions=seq_len, attn_implementation="eager"))
    collator = WholeWordMaskCollator(_Tok(), seed=0, whole_word=False)
    ids = torch.randint(4, 2000, (2, seq_len))
    batch = collator([{"input_ids": x, "word_ids": torch.arange(seq_len)} for x in ids.numpy()])
    share = float((batch["labels"] != -100).float().mean())
    with FlopCounterMode(display=False) as counter:
        model(**batch)["loss"].backward()
    counted = counter.get_total_flops()
    expected = budget.train_flops(models.size(conf), 2 * seq_len, seq_len, share)
    assert counted == pytest.approx(expected, rel=0.01), (counted, expected)


def test_forward_flops_are_a_third_of_training_without_the_head():
    assert budget.forward_flops(TINY, 1, seq_len=128) * 3 == pytest.approx(
        budget.train_flops(TINY, 1, seq_len=128, mask_share=0.0)
    )


def test_time_memory_and_disk():
    # 312 TFLOP/s x 40% x 8 processes for one hour
    assert budget.hours(312e12 * 0.4 * 8 * 3600, 8, "A100") == pytest.approx(1.0)
    state = 16 * TINY.params
    act = 2 * (128 * 4 * 64 * (34 + 5 * 1 * 128 / 64))
    assert budget.memory(TINY, batch=4, seq_len=128, mask_share=0.0) == pytest.approx(state + act)
    windowed = budget.memory(TINY, batch=4, seq_len=128, mask_share=0.0, window=64)
    assert windowed < budget.memory(TINY, batch=4, seq_len=128, mask_share=0.0)
    assert budget.cache_disk(10, 100, 0.15, 8) == 10 * (800 + 15 * 8 * 6)
    assert budget.fits(100e9) == "H200" and budget.fits(200e9).startswith("none")


def test_epochs_and_their_warning():
    line, many = budget.epochs_line(4_100, 100)
    assert line.startswith("41.0 epochs") and many
    assert budget.epochs_line(100, None) == (
        "epochs unknown (the corpus size is not known before it is read)",
        False,
    )


def test_a_model_shape_matches_the_parameter_count():
    conf = models.config("Mini", 8000)
    s = models.size(conf)
    assert (s.layers, s.hidden, s.heads, s.vocab) == (4, 256, 4, 8000)
    assert s.params == models.count(conf)["total"] and s.non_embedding == 3_224_832
