import copy
import logging

import pytest
import torch
import torch.nn.functional as F

from lab.core import dropout, models

N = 1 << 20


def test_the_mask_keeps_each_element_with_the_stated_probability_independently():
    torch.manual_seed(0)
    y = dropout.dropout(torch.ones(N), 0.1)
    cut = round(0.1 * dropout.LEVELS)
    keep = 1 - cut / dropout.LEVELS
    scale = dropout.LEVELS / (dropout.LEVELS - cut)
    values = torch.unique(y).tolist()
    assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(scale)
    kept = (y != 0).float()
    sigma = (keep * (1 - keep) / N) ** 0.5
    assert abs(kept.mean().item() - keep) < 5 * sigma
    # run eagerly, four neighbours share one 64-bit draw (the compiled layout is tested below): each
    # of the four lanes keeps at the same rate, and elements that share a draw are uncorrelated
    lanes = kept.view(-1, 4).mean(0)
    assert (lanes - keep).abs().max().item() < 5 * 2 * sigma
    for lag in (1, 2, 3, N // 2):
        a, b = kept[:-lag], kept[lag:]
        assert abs(((a - keep) * (b - keep)).mean().item() / (keep * (1 - keep))) < 5 / N**0.5
    assert y.mean().item() == pytest.approx(1.0, abs=5 * sigma * scale)  # the expectation is kept


def test_the_keep_rate_and_values_are_torchs_within_sampling_noise():
    """Against `F.dropout` at several rates: a two-proportion test on a million elements each, and
    the kept values scaled as torch scales them."""
    torch.manual_seed(1)
    for p in (0.05, 0.1, 0.3, 0.5):
        ours, theirs = dropout.dropout(torch.ones(N), p), F.dropout(torch.ones(N), p)
        sigma = (2 * p * (1 - p) / N) ** 0.5
        assert (
            abs((ours != 0).float().mean().item() - (theirs != 0).float().mean().item()) < 5 * sigma
        )
        assert ours[ours != 0].unique().tolist() == pytest.approx([theirs.max().item()], rel=1e-4)


def test_every_16_bit_value_drawn_once_keeps_exactly_65536_minus_cut(monkeypatch):
    """Draws that hold each 16-bit value once: each layout keeps exactly LEVELS - cut elements (so
    the comparison is `>=` at the right offset), and eagerly element i reads the i-th field."""
    values = torch.arange(-(dropout.LEVELS // 2), dropout.LEVELS // 2, dtype=torch.int16)
    monkeypatch.setattr(dropout, "_draws", lambda x: values.view(torch.int64).clone())
    for p in (0.1, 0.5):
        cut = round(p * dropout.LEVELS)
        for masked in (dropout._Masked, dropout._EagerMasked):
            kept = masked.apply(torch.ones(dropout.LEVELS), cut) != 0
            assert int(kept.sum()) == dropout.LEVELS - cut, masked
        assert torch.equal(dropout.dropout(torch.ones(dropout.LEVELS), p) != 0,
                           values >= cut - dropout.LEVELS // 2)  # fmt: skip


def test_each_call_draws_a_new_mask_and_rates_out_of_range_are_refused():
    torch.manual_seed(2)
    a, b = dropout.dropout(torch.ones(4096), 0.5), dropout.dropout(torch.ones(4096), 0.5)
    assert 0.4 < ((a != 0) != (b != 0)).float().mean().item() < 0.6  # independent: half differ
    for n in (0, 1, 2, 3, 5):
        assert dropout.dropout(torch.ones(n), 0.5).shape == (n,)
    for masked in (dropout._Masked, dropout._EagerMasked):  # the compiled layout, and the eager
        odd = masked.apply(torch.ones(3, 1365), dropout.LEVELS // 2).flatten()  # 4,095 elements:
        first, second = (odd[:2048] != 0).float(), (odd[2048:] != 0).float()  # compiled halves
        assert 0.4 < first.mean().item() < 0.6 and 0.4 < second.mean().item() < 0.6
        assert abs(((first[:2047] - 0.5) * (second - 0.5)).mean().item()) < 0.25 * 5 / 2047**0.5
    assert not dropout.dropout(torch.ones(64), 0.999995).any()  # rounds to 1: all dropped
    assert not dropout.dropout(torch.ones(64), 1.0).any()
    for p in (-0.1, 1.5):
        with pytest.raises(ValueError, match="between 0 and 1"):
            dropout.dropout(torch.ones(4), p)


def test_seeds_repeat_it_and_eval_or_zero_rate_pass_through():
    x = torch.randn(1000, 33, dtype=torch.bfloat16)
    torch.manual_seed(3)
    a = dropout.dropout(x, 0.2)
    torch.manual_seed(3)
    assert torch.equal(a, dropout.dropout(x, 0.2))
    assert a.dtype == torch.bfloat16 and a.shape == x.shape
    assert dropout.dropout(x, 0.2, training=False) is x and dropout.dropout(x, 0.0) is x
    assert not dropout.dropout(x, 1.0).any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_gradient_is_the_mask_scaled(dtype):
    torch.manual_seed(4)
    x = torch.randn(5000, dtype=dtype).abs().add(0.1).requires_grad_()
    y = dropout.dropout(x, 0.25)
    y.sum().backward()
    scale = dropout.LEVELS / (dropout.LEVELS - round(0.25 * dropout.LEVELS))
    assert x.grad.dtype == dtype
    torch.testing.assert_close(x.grad, (y != 0).to(dtype) * scale)


def test_compiled_it_keeps_the_rate_the_values_and_the_gradient():
    """Inductor draws its own random numbers and fuses the mask into the kernels around it; the mask
    it makes must be the same Bernoulli mask, and backward must use the mask forward used."""
    torch.manual_seed(5)
    x = torch.ones(N, requires_grad=True)
    y = torch.compile(lambda x: dropout.dropout(x, 0.1) * 3.0, fullgraph=True)(x)
    y.sum().backward()
    cut = round(0.1 * dropout.LEVELS)
    keep, scale = 1 - cut / dropout.LEVELS, dropout.LEVELS / (dropout.LEVELS - cut)
    kept = (y != 0).float()
    assert abs(kept.mean().item() - keep) < 5 * (keep * (1 - keep) / N) ** 0.5
    for a, b in ((kept[:-1], kept[1:]), (kept[: N // 2], kept[N // 2 :])):  # neighbours, halves
        assert abs(((a - keep) * (b - keep)).mean().item() / (keep * (1 - keep))) < 5 / N**0.5
    assert torch.unique(y).tolist() == pytest.approx([0.0, 3.0 * scale])
    torch.testing.assert_close(x.grad, kept * 3.0 * scale)


def test_install_keeps_the_model_and_its_eager_attention():
    """Installed into a BERT: the same state dict; in eval mode the same outputs; the registered
    attention is transformers' eager attention at dropout 0 (values and gradients)."""
    from transformers.models.bert.modeling_bert import eager_attention_forward

    model = models.build("L2_H64", 1000, seed=0, dropout=0.1)
    model.set_attn_implementation("eager")
    plain = copy.deepcopy(model)
    assert dropout.install(model) > 0
    assert model.config._attn_implementation == dropout.NAME
    assert all(type(m) is not torch.nn.Dropout for m in model.modules())
    assert model.state_dict().keys() == plain.state_dict().keys()
    x = torch.randint(5, 1000, (2, 17))
    mask = torch.ones_like(x)
    mask[1, 12:] = 0
    model.eval(), plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            model(input_ids=x, attention_mask=mask).logits,
            plain(input_ids=x, attention_mask=mask).logits,
            atol=0,
            rtol=0,
        )
    q, k, v = (torch.randn(2, 4, 9, 16, requires_grad=True) for _ in range(3))
    bias = torch.zeros(2, 1, 9, 9).masked_fill(torch.rand(2, 1, 9, 9) < 0.2, -1e9)
    layer = torch.nn.Module()
    outs = []
    for fn in (dropout.eager_attention, eager_attention_forward):
        out, weights = fn(layer, q, k, v, bias, scaling=0.25, dropout=0.0)
        (grads := torch.autograd.grad(out.square().sum(), (q, k, v)))
        outs.append((out, weights, grads))
    torch.testing.assert_close(outs[0][0], outs[1][0], atol=0, rtol=0)
    torch.testing.assert_close(outs[0][1], outs[1][1], atol=0, rtol=0)
    for a, b in zip(outs[0][2], outs[1][2]):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    layer.train()  # in training it drops attention weights: half of them at 0.5, the rest doubled
    _, weights = dropout.eager_attention(layer, q, k, v, None, scaling=0.25, dropout=0.5)
    _, plain = eager_attention_forward(layer, q, k, v, None, scaling=0.25, dropout=0.0)
    assert 0.4 < (weights == 0).float().mean().item() < 0.6
    torch.testing.assert_close(weights[weights != 0], 2 * plain[weights != 0])


def test_training_installs_it_unless_asked_not_to(tmp_path):
    from lab.core import train

    class Loss(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
            return {"loss": logits.float().square().mean()}

    def batches(i, rank=0, world=1):
        return {
            "input_ids": torch.randint(5, 1000, (2, 9)),
            "attention_mask": torch.ones(2, 9, dtype=torch.long),
        }

    for fast in (True, False):
        model = models.build("L2_H64", 1000, seed=0, dropout=0.1)
        model.set_attn_implementation("eager")
        cfg = train.TrainConfig(steps=2, lr=1e-3, warmup_steps=1, checkpoints=False,
                                tensorboard=False, fast_dropout=fast)  # fmt: skip
        train.train(Loss(model), batches, cfg, tmp_path / str(fast), desc="t")
        swapped = any(isinstance(m, dropout.Dropout) for m in model.modules())
        assert swapped is fast
        assert (model.config._attn_implementation == dropout.NAME) is fast


def test_a_longformer_keeps_its_own_attention():
    """transformers' Longformer does not take a registered attention: its dropout layers are
    swapped, its attention is left as it is, without a warning."""
    from lab.core.longformer import convert

    long = convert(models.build("L2_H64", 1000, seed=0, dropout=0.1), attention_window=64)
    before = long.config._attn_implementation
    said = []
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())
    logging.getLogger("transformers").addHandler(handler)
    try:
        assert dropout.install(long) > 0
    finally:
        logging.getLogger("transformers").removeHandler(handler)
    assert long.config._attn_implementation == before != dropout.NAME
    assert not [m for m in said if "attention" in m.lower()], said
