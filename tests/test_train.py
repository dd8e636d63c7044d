"""The training loop: learning, exact resume, the non-finite guard, data parallel on CPU."""

import copy
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lab.core import hardware, lookup, models, train
from lab.core.attention import UNCOMPILED_PADDED, locality_bias
from lab.core.mlm import LocalityWarmup, MaskedLM

ROOT = Path(__file__).resolve().parents[1]
needs_compiler = pytest.mark.skipif(bool(hardware.compiler()), reason=str(hardware.compiler()))


class Synthetic:
    """Batches of a toy task: each sequence repeats one token; predict it at the masked half."""

    def __init__(self, batch_size=8, length=16, vocab=50, seed=0):
        self.b, self.t, self.v, self.seed = batch_size, length, vocab, seed

    def __call__(self, index, rank=0, world=1):
        first = (
            index * world + rank
        ) * self.b  # example positions: the same data for any world size
        rows = []
        for p in range(first, first + self.b):
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + p)
            rows.append(torch.randint(5, self.v, (1,), generator=g).repeat(self.t))
        x = torch.stack(rows)
        labels = torch.full_like(x, -100)
        labels[:, 1::2] = x[:, 1::2]
        inputs = x.clone()
        inputs[:, 1::2] = 4  # [MASK]
        return {"input_ids": inputs, "attention_mask": torch.ones_like(x), "labels": labels}


def tiny(seed=0, dropout=0.1):
    return models.build("L2_H32_A2", 50, max_positions=32, dropout=dropout, seed=seed)


def weights(path):
    return load_file(str(path))


def test_loss_goes_down_and_logs(tmp_path):
    cfg = train.TrainConfig(steps=120, lr=1e-2, warmup_steps=5, log_every=10, bf16=False)
    res = train.train(MaskedLM(tiny()), Synthetic(), cfg, tmp_path)
    log = train.read_log(tmp_path / "metrics.jsonl")
    assert log[0]["loss"] > log[-1]["loss"] + 0.5
    assert res["steps"] == 120 and res["tokens"] == 120 * 8 * 16
    assert train.latest_checkpoint(tmp_path / "checkpoints").name == "step-00000120"


def events(folder):
    """TensorBoard's own reader over the event files of a training folder: {tag: [(step, value)]}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder / "tensorboard"))
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def test_tensorboard_events_carry_the_logged_metrics(tmp_path):
    cfg = train.TrainConfig(
        steps=12, lr=1e-2, warmup_steps=2, log_every=4, eval_every=6, bf16=False
    )
    train.train(MaskedLM(tiny()), Synthetic(), cfg, tmp_path, evaluate=lambda m: {"acc": 0.25})
    tags = events(tmp_path)
    assert {"train/loss", "train/lr", "train/tok_per_s", "eval/acc"} <= tags.keys()
    assert [s for s, _ in tags["train/loss"]] == [4, 8, 12]
    log = [r for r in train.read_log(tmp_path / "metrics.jsonl") if "loss" in r]
    assert [v for _, v in tags["train/loss"]] == pytest.approx([r["loss"] for r in log], rel=1e-6)
    assert tags["eval/acc"] == [(6, 0.25), (12, 0.25)]


def test_resume_ends_with_the_same_model(tmp_path):
    """Stopped after 7 steps and run again, training ends bit-identical to an uninterrupted run."""
    cfg = train.TrainConfig(steps=20, lr=2e-3, warmup_steps=3, ckpt_every=5, log_every=1, bf16=True)
    train.train(MaskedLM(tiny()), Synthetic(), cfg, tmp_path / "a")
    first = train.train(MaskedLM(tiny()), Synthetic(), cfg, tmp_path / "b", stop_after=7)
    assert first["steps"] == 7
    again = train.train(
        MaskedLM(tiny()), Synthetic(), cfg, tmp_path / "b"
    )  # a fresh model: weights come from the checkpoint
    assert again["resumed_from"] == 5
    a = weights(tmp_path / "a" / "checkpoints" / "step-00000020" / "model.safetensors")
    b = weights(tmp_path / "b" / "checkpoints" / "step-00000020" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    steps = [r["step"] for r in train.read_log(tmp_path / "b" / "metrics.jsonl")]
    assert steps == list(range(1, 21))  # the log was cut back to the checkpoint, not duplicated
    assert [s for s, _ in events(tmp_path / "b")["train/loss"]] == steps  # and so were the events


def test_a_loop_that_probes_the_peak_trains_as_the_same_loop_run_after_it(tmp_path):
    """The first loop in a process probes the matmul peak after seeding; the probe must not move the
    dropout masks, or a fine-tuning's result depends on what its worker ran before it."""
    cfg = train.TrainConfig(steps=6, lr=2e-3, warmup_steps=1, bf16=True, checkpoints=False,
                            flops_per_token=1e6)  # fmt: skip
    hardware.matmul_peak.cache_clear()  # as in a fresh process
    runs = []
    for name in ("first", "second"):
        module = MaskedLM(tiny(dropout=0.1))
        train.train(module, Synthetic(), cfg, tmp_path / name)
        runs.append(module.model.state_dict())
    for k in runs[0]:
        assert torch.equal(runs[0][k], runs[1][k]), k


def test_the_summary_gives_mfu_over_the_loop_and_over_its_training_steps(tmp_path, monkeypatch):
    """Evaluations and checkpoints are not training steps: `step_mfu` leaves their time out, `mfu`
    keeps it in, and both count the same tokens against the same peak."""
    import time

    monkeypatch.setattr(hardware, "matmul_peak", lambda *_: 1e9)

    def slow_eval(module):
        time.sleep(0.5)
        return {"acc": 0.0}

    class SlowBatches(Synthetic):  # each step takes 0.2 s more
        def __call__(self, *args):
            time.sleep(0.2)
            return super().__call__(*args)

    cfg = train.TrainConfig(steps=4, lr=1e-3, warmup_steps=1, eval_every=2, bf16=False,
                            checkpoints=False, flops_per_token=1e3)  # fmt: skip
    res = train.train(MaskedLM(tiny()), SlowBatches(), cfg, tmp_path, evaluate=slow_eval)
    assert res["step_seconds"] >= 0.8  # four steps
    assert 1.0 <= res["seconds"] - res["step_seconds"] < 1.4  # two evaluations of 0.5 s
    assert res["mfu"] == pytest.approx(1e3 * res["tokens"] / res["seconds"] / 1e9)
    assert res["step_mfu"] == pytest.approx(1e3 * res["tokens"] / res["step_seconds"] / 1e9)


class Exploding(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))
        self.calls = 0

    def forward(self, **batch):
        self.calls += 1
        loss = (self.w * 2).sum()
        return {"loss": loss * float("nan") if self.calls == 6 else loss}


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    cfg = train.TrainConfig(steps=10, lr=1e-3, warmup_steps=1, ckpt_every=2, bf16=False)
    with pytest.raises(
        train.TrainingError, match=r"loss became nan between steps 5 and 6.*step-00000004"
    ):
        train.train(Exploding(), Synthetic(), cfg, tmp_path)
    assert train.latest_checkpoint(tmp_path / "checkpoints").name == "step-00000004"


def test_crash_while_writing_a_checkpoint_keeps_the_previous(tmp_path, monkeypatch):
    cfg = train.TrainConfig(steps=4, lr=1e-3, warmup_steps=1, ckpt_every=2, bf16=False)
    from lab.core import resume

    real = resume.save_model
    calls = {"n": 0}

    def flaky(model, path):
        calls["n"] += 1
        if calls["n"] == 2:
            real(model, path)
            raise OSError(28, "No space left on device")
        real(model, path)

    monkeypatch.setattr(resume, "save_model", flaky)
    with pytest.raises(OSError):
        train.train(MaskedLM(tiny()), Synthetic(), cfg, tmp_path)
    latest = train.latest_checkpoint(tmp_path / "checkpoints")
    assert latest.name == "step-00000002"  # the half-written step 4 is not taken for complete
    assert json.loads((latest / "state.json").read_text())["step"] == 2


FAULTS_SCRIPT = r"""
import ctypes, resource, sys, torch
sys.path.insert(0, {root!r})
from lab.core import hardware
ctypes.CDLL(None).prctl(41, 1, 0, 0, 0)  # PR_SET_THP_DISABLE: count 4 KiB pages on any host
what = hardware.retain_freed_memory() if sys.argv[1] == "retain" else "default"
def step(mib):  # a step's activations, all freed at its end: 20 blocks, larger each step
    blocks = [torch.ones(mib << 18) for _ in range(20)]
    del blocks
step(2)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for mib in range(3, 10):
    step(mib)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, what)
"""
ALLOCATOR = ("GLIBC_TUNABLES", "LD_PRELOAD", *hardware.USER_SETTINGS)


def _faults(tmp_path, how: str) -> tuple[int, str]:
    script = tmp_path / "faults.py"
    script.write_text(FAULTS_SCRIPT.format(root=str(ROOT)))
    env = {k: v for k, v in os.environ.items() if k not in ALLOCATOR}
    out = subprocess.run(
        [sys.executable, str(script), how], env=env, capture_output=True, text=True, check=True
    )
    faults, what = out.stdout.strip().split(" ", 1)
    return int(faults), what


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator")
def test_freed_memory_stays_with_the_process_unless_the_user_chose_an_allocator(
    tmp_path, monkeypatch
):
    """Steps that free what they allocated fault their pages in again by default (glibc maps each
    block larger than any it freed before afresh: 215,180 faults here); once the training loop's
    allocator setting is made, only the heap's growth faults (45-48 K). A user's settings win."""
    default, _ = _faults(tmp_path, "default")
    retained, what = _faults(tmp_path, "retain")
    assert what == hardware.RETAINED
    assert default > 100_000 and retained < default / 3, (default, retained)
    for name, value in (
        ("MALLOC_TRIM_THRESHOLD_", "1000000"),
        ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1"),
    ):
        with monkeypatch.context() as m:
            m.setenv(name, value)
            assert hardware.retain_freed_memory.__wrapped__() == f"left as the user set it ({name})"


@pytest.mark.skipif(torch.cuda.is_available(), reason="the setting is for CPU training")
def test_the_training_loop_keeps_freed_memory_on_a_cpu(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(hardware, "retain_freed_memory", lambda: calls.append("retain"))
    cfg = train.TrainConfig(
        steps=1, lr=1e-3, warmup_steps=1, bf16=False, checkpoints=False, tensorboard=False
    )
    train.train(MaskedLM(tiny()), Synthetic(), cfg, tmp_path)
    assert calls == ["retain"]


DDP_SCRIPT = r"""
import json, sys, torch
sys.path.insert(0, {root!r})
sys.path.insert(0, {tests!r})
from lab.core import train
from lab.core.mlm import MaskedLM
from test_train import Synthetic, tiny
b = int(sys.argv[2])
cfg = train.TrainConfig(steps=8, lr=3e-3, warmup_steps=2, bf16=False, log_every=1)
res = train.train(MaskedLM(tiny(dropout=0.0)), Synthetic(batch_size=b), cfg, sys.argv[1])
if train.accelerator().is_main_process:
    json.dump({{"world": res["world_size"], "steps": res["steps"]}}, open(sys.argv[1] + "/result.json", "w"))
"""


@pytest.mark.slow
def test_data_parallel_on_cpu_with_gloo(tmp_path):
    """Two processes under torchrun (gloo) train like one process with the two batches together."""
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT.format(root=str(ROOT), tests=str(ROOT / "tests")))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29517",
        str(script),
    ]
    subprocess.run(
        [*cmd, str(tmp_path / "ddp"), "4"], check=True, env=env, capture_output=True, timeout=300
    )
    subprocess.run(
        [sys.executable, str(script), str(tmp_path / "one"), "8"],
        check=True,
        env=env,
        capture_output=True,
        timeout=300,
    )
    assert json.loads((tmp_path / "ddp" / "result.json").read_text()) == {"world": 2, "steps": 8}
    a = weights(tmp_path / "ddp" / "checkpoints" / "step-00000008" / "model.safetensors")
    b = weights(tmp_path / "one" / "checkpoints" / "step-00000008" / "model.safetensors")
    for k in a:
        np.testing.assert_allclose(a[k].numpy(), b[k].numpy(), atol=2e-5, err_msg=k)


class Pairs:
    """Random tokens in pairs (a a b b ...), the second of each pair masked: only the left
    neighbour says what it is, so the model must learn where its neighbours are."""

    def __init__(self, batch_size=16, length=32, vocab=50, seed=0):
        self.b, self.t, self.v, self.seed = batch_size, length, vocab, seed

    def __call__(self, index, rank=0, world=1):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index * world + rank)
        x = torch.randint(5, self.v, (self.b, self.t // 2), generator=g).repeat_interleave(2, 1)
        labels = torch.full_like(x, -100)
        labels[:, 1::2] = x[:, 1::2]
        inputs = x.clone()
        inputs[:, 1::2] = 4  # [MASK]
        return {"input_ids": inputs, "attention_mask": torch.ones_like(x), "labels": labels}

    def epochs(self, steps, world=1):
        return 0.0


def test_locality_bias_values():
    bias = locality_bias(5, heads=3, slope=2.0)
    assert bias.shape == (1, 3, 5, 5)
    assert torch.equal(bias[0, :, 2, 2], torch.zeros(3))
    assert bias[0, 0, 2, 3] == bias[0, 0, 2, 1] == -2.0
    assert bias[0, 1, 0, 4] == -4.0 and bias[0, 2, 0, 4] == -2.0  # slope / 2^h * distance


def test_locality_warmup_anneals_to_plain_batches():
    w = LocalityWarmup(Pairs(), heads=2, slope=1.0, steps=10, grad_accum=2)
    assert w.scale(0) == 1.0 and w.scale(1) == 1.0  # micro-batches of optimizer step 0
    assert w.scale(10) == 0.5 and w.scale(20) == 0.0
    assert torch.equal(w(10)["attention_bias"], locality_bias(32, 2, 0.5))
    assert "attention_bias" not in w(20)
    assert torch.equal(w(3)["input_ids"], Pairs()(3)["input_ids"])


def test_attention_bias_reaches_attention():
    """A steep bias lets each position see only itself: changing another token changes nothing."""
    module = MaskedLM(tiny(dropout=0.0)).eval()
    batch = Pairs(batch_size=2)(0)
    other = batch["input_ids"].clone()
    other[:, 0] = 7 if int(other[0, 0]) != 7 else 8
    steep = locality_bias(32, 2, 1e4)

    def masked_hidden(ids, bias):
        out = module.encoder()(input_ids=ids, attention_mask=bias)[0]
        return out[:, 5]

    assert torch.allclose(masked_hidden(batch["input_ids"], steep), masked_hidden(other, steep))
    assert not torch.allclose(masked_hidden(batch["input_ids"], None), masked_hidden(other, None))
    with torch.no_grad():
        biased = module(**batch, attention_bias=steep)["loss"]
        plain = module(**batch)["loss"]
    assert not torch.isclose(biased, plain)


def test_a_held_warmup_ends_in_a_bias_of_zeros_the_model_does_not_see():
    """With `hold` the batches after the warm-up carry a bias of the warm-up's shape, all zeros
    (a compiled model keeps its graph); the model's outputs are those without a bias."""
    held = LocalityWarmup(Pairs(batch_size=2), heads=2, slope=1.0, steps=10, hold=True)
    zeros = held(10)["attention_bias"]
    assert zeros.shape == held(0)["attention_bias"].shape == (1, 2, 32, 32)
    assert not zeros.any()
    module = MaskedLM(tiny(dropout=0.0)).eval()
    with torch.no_grad():
        assert torch.allclose(module(**held(10))["loss"], module(**Pairs(batch_size=2)(10))["loss"])


@needs_compiler
def test_a_compiled_encoder_runs_its_first_padded_batches_uncompiled():
    """A packed source's one short row an epoch does not compile a second graph for one step: the
    padded batch runs uncompiled, with the uncompiled model's loss (to the compiled loss function's
    rounding); the ninth padded batch compiles."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()  # no graph from an earlier test serves these batches
    model = tiny(dropout=0.0)
    plain = MaskedLM(copy.deepcopy(model))
    module = MaskedLM(model)
    assert train.compile_encoders(module).startswith("compiled")
    padded = Pairs()(1)
    padded["attention_mask"][0, -8:] = 0
    with torch.no_grad():
        module(**Pairs()(0))  # the graph for packed batches
        graphs = counters["stats"]["unique_graphs"]
        for _ in range(UNCOMPILED_PADDED):
            assert torch.allclose(module(**padded)["loss"], plain(**padded)["loss"], rtol=1e-5)
        assert counters["stats"]["unique_graphs"] == graphs
        module(**padded)
    assert counters["stats"]["unique_graphs"] > graphs


@pytest.mark.slow
def test_locality_warmup_gets_off_the_plateau(tmp_path):
    """The toy version of the unigram plateau: after 400 steps a model trained with the warm-up
    (bias gone for the last 200) finds its neighbour through its own weights; one without has not."""

    def accuracy(slope, folder):
        model = models.build("L2_H32_A2", 50, max_positions=32, dropout=0.0, seed=0)
        batches = Pairs()
        if slope:
            batches = LocalityWarmup(batches, heads=2, slope=slope, steps=200)
        cfg = train.TrainConfig(
            steps=400, lr=3e-3, warmup_steps=10, log_every=1000, bf16=False, checkpoints=False
        )
        train.train(MaskedLM(model), batches, cfg, folder)
        with torch.no_grad():
            return float(MaskedLM(model)(**Pairs(batch_size=64, seed=99)(0))["acc"])

    warm, plain = accuracy(1.0, tmp_path / "warm"), accuracy(0.0, tmp_path / "plain")
    assert warm > 0.8, (warm, plain)
    assert plain < warm - 0.3, (warm, plain)


@pytest.mark.parametrize("fused", [False, True], ids=["chunks", "compiled"])
def test_masked_cross_entropy_is_pytorchs_in_value_gradient_and_accuracy(fused):
    """The float32 loss of the MLM head, a chunk of rows at a time or compiled, against
    `F.cross_entropy` on a float32 copy; 150 rows cross two chunks' edges."""
    import torch.nn.functional as F

    from lab.core.mlm import MaskedCE

    if fused and hardware.compiler():
        pytest.skip(hardware.compiler())
    torch.manual_seed(0)
    logits = (3 * torch.randn(150, 1000)).to(torch.bfloat16).requires_grad_()
    target = torch.randint(0, 1000, (150,))
    target[:20] = logits.detach().float()[:20].argmax(-1)  # some rows right
    loss, acc, _ = MaskedCE.apply(logits, target, fused)
    (2.5 * loss).backward()  # the loop scales the loss (gradient accumulation)
    ours = logits.grad.clone()
    logits.grad = None
    theirs = F.cross_entropy(logits.float(), target)
    (2.5 * theirs).backward()
    assert float(loss.detach()) == pytest.approx(float(theirs.detach()), rel=1e-6)
    assert torch.allclose(ours.float(), logits.grad.float(), atol=1e-6)
    assert float(acc) == pytest.approx(float((logits.float().argmax(-1) == target).float().mean()))


@pytest.mark.parametrize("fused", [False, True], ids=["chunks", "compiled"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_masked_cross_entropy_columns_are_a_gather_in_value_and_gradient(fused, dtype):
    """With `columns`, MaskedCE also returns those logits in float32, and its gradient is the
    cross-entropy's plus theirs, summed in float32 and rounded once to the logits' dtype: checked
    against the exact sum in float64, to float32's precision or to one bfloat16 rounding."""
    import torch.nn.functional as F

    from lab.core.mlm import MaskedCE

    if fused and hardware.compiler():
        pytest.skip(hardware.compiler())
    torch.manual_seed(0)
    n, v, k = 150, 1000, 16
    logits = (3 * torch.randn(n, v)).to(dtype).requires_grad_()
    target = torch.randint(0, v, (n,))
    columns = torch.stack([torch.randperm(v)[:k] for _ in range(n)])
    weights = torch.randn(n, k)  # a made-up loss of the gathered logits: its gradient

    loss, acc, picked = MaskedCE.apply(logits, target, fused, columns)
    (2.5 * loss + (weights * picked).sum()).backward()

    z = logits.detach().double()
    exact = (z.softmax(-1) - F.one_hot(target, v)) * 2.5 / n
    exact.scatter_add_(1, columns, weights.double())
    assert picked.dtype == torch.float32 and torch.equal(picked, z.gather(1, columns).float())
    assert float(loss.detach()) == pytest.approx(float(F.cross_entropy(z, target)), rel=1e-6)
    ours = logits.grad.double()
    if dtype == torch.float32:
        assert torch.allclose(ours, exact, rtol=1e-5, atol=1e-12)
    else:  # one rounding to 8 significant bits: within half a unit in the last place
        assert ((ours - exact).abs() <= 2**-8 * 1.001 * exact.abs()).all()


def _step_grads(module, ids, labels, pad) -> dict:
    module.zero_grad(set_to_none=True)
    module(input_ids=ids, attention_mask=(ids != pad).long(), labels=labels)["loss"].backward()
    return {n: p.grad for n, p in module.named_parameters() if p.grad is not None}


def _lookup_pair(compiled: bool):
    """One MaskedLM step's gradients, the model's own embeddings against `lookup.Lookup` installed
    (compiled or not), on a batch with padding and repeated positions and token types."""
    torch.manual_seed(0)
    plain = MaskedLM(models.build("L2_H128", 300, seed=0, dropout=0.0))
    ours = copy.deepcopy(plain)
    pad = plain.model.config.pad_token_id
    ids = torch.randint(5, 300, (4, 24))
    ids[0, -4:] = pad
    ids[1, :6] = 7  # one row looked up six times in one sequence
    labels = torch.full_like(ids, -100)
    labels[:, 1::4] = ids[:, 1::4]
    if compiled:
        assert train.compile_encoders(ours).startswith("compiled")
    else:
        assert lookup.install(ours) == 3  # words, positions, token types
    assert type(ours.model.bert.embeddings.position_embeddings) is lookup.Lookup
    with train.autocast(torch.device("cpu"), compiled):  # bf16, as the loop trains
        return _step_grads(ours, ids, labels, pad), _step_grads(plain, ids, labels, pad)


def test_embedding_lookups_with_row_grads_give_the_embeddings_gradients():
    """`lookup.Lookup`'s backward (`index_add_` through one opaque operator) gives every parameter
    the gradient `nn.Embedding` gives it: the padding row none, repeated rows summed."""
    ours, theirs = _lookup_pair(compiled=False)
    assert ours.keys() == theirs.keys()
    for name, g in ours.items():
        torch.testing.assert_close(g, theirs[name], rtol=1e-5, atol=1e-7, msg=name)
    table = torch.nn.Embedding(10, 4, padding_idx=2)
    lookup.install(table)
    table(torch.tensor([[2, 3, 3], [2, 9, 0]])).sum().backward()
    assert table.weight.grad[:, 0].tolist() == [1, 0, 0, 2, 0, 0, 0, 0, 0, 1]  # no padding row


@pytest.mark.slow
@needs_compiler
def test_embedding_lookups_in_a_compiled_encoder_give_the_embeddings_gradients():
    ours, theirs = _lookup_pair(compiled=True)
    assert ours.keys() == theirs.keys()
    for name, g in ours.items():
        torch.testing.assert_close(g, theirs[name], rtol=0.02, atol=2e-4, msg=name)


def test_the_row_gradient_operator_is_declared_as_it_runs():
    """torch's own checks of a custom operator: schema, fake (meta) kernel, registration."""
    grad, ids = torch.randn(2, 3, 4), torch.randint(0, 5, (2, 3))
    torch.library.opcheck(torch.ops.lab.row_grads.default, (grad, ids, 5, 1))
    assert lookup.row_grads(grad, ids, 5, -1).shape == (5, 4)


@pytest.mark.slow
@needs_compiler
def test_a_compiled_model_evaluates_without_compiling_again(tmp_path):
    """Held-out evaluation inside the loop runs the compiled encoder uncompiled (`train.eager`):
    no graph compiled for it, and the result is that of a never-compiled copy of the model."""
    from torch._dynamo.utils import counters

    if not hasattr(torch.compiler, "set_stance"):
        pytest.skip("a torch before 2.6 compiles evaluation as well")
    batches, seen = Synthetic(), []

    def held_out(model) -> dict:
        before = counters["frames"]["ok"]
        loss = model(**batches(1_000))["loss"]
        seen.append(counters["frames"]["ok"] - before)
        return {"loss": float(loss)}

    cfg = train.TrainConfig(steps=4, lr=1e-3, warmup_steps=1, eval_every=2, compile=True,
                            checkpoints=False, tensorboard=False)  # fmt: skip
    module = MaskedLM(tiny(dropout=0.0))
    res = train.train(module, batches, cfg, tmp_path, evaluate=held_out)
    assert res["compiled"] and seen == [0, 0]
    plain = MaskedLM(tiny(dropout=0.0))  # never compiled, the trained weights
    plain.model.load_state_dict(module.model.state_dict())
    plain.eval()
    with torch.no_grad(), train.autocast(torch.device("cpu"), True):
        assert float(plain(**batches(1_000))["loss"]) == res["eval"]["loss"]


@needs_compiler
def test_compile_encoders_names_what_it_compiled():
    """A second stage wraps an encoder compiled by the first: only its loss is new."""
    model = tiny(dropout=0.0)
    assert train.compile_encoders(MaskedLM(model)) == "compiled BertModel and the masked-LM loss"
    assert train.compile_encoders(MaskedLM(model)) == "compiled the masked-LM loss"
    assert train.compile_encoders(model) == "nothing to compile"
