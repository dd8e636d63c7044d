"""bench longify: time and memory of one training step at 512 to 16,384 tokens, the converted
Longformer against the same BERT with full attention, and the FLOPs of each."""

from __future__ import annotations

import queue
import signal
import time

import numpy as np

from lab.bench import rounds

WINDOW = 256  # the sliding window (tokens, both sides together) of the arms
# full attention's FLOPs are counted up to this length; past it, from the counts at 2K and 4K
COUNTED = 4096


def _fwd_bwd_child(kind: str, length: int, window: int, queue) -> None:
    """In a fresh process: one training step as the longify stage takes it (masked-LM loss at 15% of
    the positions, bf16 autocast, forward + backward) at `length`; (seconds, peak MB, growth MB,
    GFLOP). The arithmetic is counted in further steps through SDPA's math backend, which torch's
    FLOP counter sees (its fused CPU kernel it does not): at `length`, or for full attention past
    `COUNTED` tokens at 2K and 4K, extrapolated."""
    import resource

    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from lab.core import models, train
    from lab.core.attention import block_attention
    from lab.core.longformer import convert
    from lab.core.mlm import MaskedLM

    torch.manual_seed(0)
    positions = max(4096, length)  # the table tiled out as far as this step reads
    bert = models.build("Mini", 21128, seed=0, dropout=0.0)
    model = convert(bert, max_positions=positions, attention_window=window)
    if kind == "longformer":  # as the lab trains it
        block_attention(model)
    elif kind.startswith("bert"):  # the same BERT, positions tiled out as far, full attention
        model = _full_attention_twin(
            bert, model, "eager" if kind == "bert-eager" else "sdpa", positions
        )
    module = MaskedLM(model)

    def step(n: int) -> float:
        g = torch.Generator().manual_seed(n)
        x = torch.randint(5, 21128, (1, n), generator=g)
        batch = {
            "input_ids": x,
            "labels": torch.where(torch.rand(1, n, generator=g) < 0.15, x, -100),
        }
        if kind.startswith("longformer"):
            batch["global_attention_mask"] = (torch.arange(n) == 0).long()[None]
        t0 = time.perf_counter()
        with train.autocast(torch.device("cpu"), True):
            loss = module(**batch)["loss"]
        loss.backward()
        module.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    step(2 * window)  # warm-up on a short input, so the peak below belongs to `length`
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    seconds = step(length)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def counted(n: int) -> float:
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            step(n)
        return counter.get_total_flops() / 1e9

    if length <= COUNTED or not kind.startswith("bert"):
        gflop = counted(length)
    else:  # full attention's maps would outgrow the machine: its FLOPs are a*n + b*n^2
        half, full = counted(COUNTED // 2), counted(COUNTED)
        n0 = COUNTED // 2
        b = (full - 2 * half) / (2 * n0 * n0)
        gflop = (half - b * n0 * n0) / n0 * length + b * length * length
    queue.put((seconds, peak / 1024, (peak - before) / 1024, gflop))


def _full_attention_twin(bert, long, attn: str, positions: int):
    """BertForMaskedLM with the Longformer's tiled position table and full attention, through SDPA
    (fused kernel, no stored attention maps) or eager (the maps materialised)."""
    from transformers import BertForMaskedLM

    cfg = bert.config.__class__.from_dict(
        {**bert.config.to_dict(), "max_position_embeddings": positions}
    )
    cfg._attn_implementation = attn
    twin = BertForMaskedLM(cfg)
    state = bert.state_dict()
    offset = bert.config.pad_token_id + 1
    state["bert.embeddings.position_embeddings.weight"] = (
        long.longformer.embeddings.position_embeddings.weight[offset:].detach().clone()
    )
    twin.load_state_dict(state, strict=False)
    return twin


def _measure(kind: str, length: int, window: int) -> tuple[float, float, float]:
    """One arm at one length in a fresh process (its peak memory is its own)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_fwd_bwd_child, args=(kind, length, window, q))
    p.start()
    while True:  # a child the kernel kills for memory sends nothing: say so instead of waiting
        try:
            seconds, _, grew_mb, gflop = q.get(timeout=5)
            break
        except queue.Empty:
            if p.is_alive():
                continue
            try:  # it may have sent its result just before it exited
                seconds, _, grew_mb, gflop = q.get(timeout=1)
                break
            except queue.Empty:
                killed = p.exitcode == -signal.SIGKILL
                raise RuntimeError(
                    f"bench longify: the {kind} step at {length:,} tokens died (exit code {p.exitcode}"
                    + ("; killed, most likely for memory: run fewer tokens or on a larger machine)"
                       if killed else "; its traceback is above)")
                ) from None  # fmt: skip
    p.join()
    return seconds, grew_mb, gflop


def run(*, quick: bool = False) -> dict:
    """Time and memory of one training step at 512 to 16,384 tokens: the Longformer as the lab trains
    it against the same BERT with full attention (SDPA), transformers' Longformer attention, and eager
    full attention (up to 4,096 tokens: its maps outgrow the machine after). Every measurement runs in
    a fresh process; the arms alternate within each round, and the ratios are the rounds' medians."""
    load_start = rounds.loadavg()
    window = WINDOW
    lengths = [512, 1024] if quick else [512, 1024, 2048, 4096, 16384]
    n_rounds = 1 if quick else 2
    arms = ("longformer", "longformer-hf", "bert", "bert-eager")
    rows: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
    for r in range(n_rounds):
        for length in lengths:
            for kind in arms:
                if kind == "bert-eager" and length > 4096:
                    continue
                seconds, grew_mb, gflop = _measure(kind, length, window)
                rows.setdefault((kind, length), []).append((seconds, grew_mb, gflop))
                print(f"  round {r + 1} {kind:13s} {length:6,d} tokens: forward+backward {seconds:6.2f} s, "
                      f"memory +{grew_mb:7.1f} MB, {gflop:7.1f} GFLOP", flush=True)  # fmt: skip
    med = {
        k: tuple(float(np.median([v[i] for v in vals])) for i in range(3))
        for k, vals in rows.items()
    }

    def ratios(top: int) -> dict:
        speed = rounds.paired_ratio(
            [v[0] for v in rows[("bert", top)]], [v[0] for v in rows[("longformer", top)]]
        )
        return {"speed": speed["ratio"], "speed_iqr": speed["ratio_iqr"],
                "memory": round(med[("longformer", top)][1] / max(1e-9, med[("bert", top)][1]), 3),
                "arithmetic": round(med[("bert", top)][2] / med[("longformer", top)][2], 2),
                "vs_transformers_longformer": round(med[("longformer-hf", top)][0] / med[("longformer", top)][0], 2)}  # fmt: skip

    at = {n: ratios(n) for n in lengths if n >= 1024}
    top = 4096 if 4096 in lengths else lengths[-1]
    for n, r in at.items():
        print(f"  at {n:,} tokens: {r['speed']}x full attention's speed (arithmetic bound {r['arithmetic']}x), "
              f"{r['memory']}x its memory")  # fmt: skip
    return {
        "bench": "longify", "ours": round(med[("longformer", top)][0], 3), "baseline": round(med[("bert", top)][0], 3),
        "unit": f"s per forward+backward at {top} tokens (lower is better)", "ratio": at[top]["speed"],
        "target": 2.1, "ratio_of_bound": round(at[top]["speed"] / at[top]["arithmetic"], 2),
        "memory_ratio": at[top]["memory"], "memory_target": 1.0, "at": {str(n): r for n, r in at.items()},
        "ratio_16384_target": 5.0, "ratio_transformers_longformer": at[top]["vs_transformers_longformer"],
        "arithmetic_ratio": at[top]["arithmetic"],
        "gflop": {f"{k}@{n}": round(v[2], 1) for (k, n), v in med.items()},
        "step": "masked-LM loss at 15% of positions, bf16 autocast, forward + backward, batch 1",
        "window": window, "model": "Mini", "lengths": lengths, "rounds": n_rounds,
        "seconds": {f"{k}@{n}": round(v[0], 3) for (k, n), v in med.items()},
        "memory_mb": {f"{k}@{n}": round(v[1], 1) for (k, n), v in med.items()},
        "loadavg": {"start": load_start, "end": rounds.loadavg()}, "quick": quick,
    }  # fmt: skip
