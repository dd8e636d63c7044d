"""bench longify: time and memory of one training step at 512 to 4,096 tokens, the converted Longformer
against the same BERT with full attention, and the FLOPs of each."""

from __future__ import annotations

import time

WINDOW = 256  # the cpu profile's sliding window


def _fwd_bwd_child(kind: str, length: int, window: int, queue) -> None:
    """In a fresh process: one training step as the longify stage takes it (masked-LM loss at 15% of
    the positions, bf16 autocast, forward + backward) at `length`; (seconds, peak MB, growth MB,
    GFLOP). The arithmetic is counted in a second step through SDPA's math backend, which torch's
    FLOP counter sees (its fused CPU kernel it does not)."""
    import resource

    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from lab.core import models, train
    from lab.core.attention import block_attention
    from lab.core.longformer import convert
    from lab.core.mlm import MaskedLM

    torch.manual_seed(0)
    bert = models.build("Mini", 21128, seed=0, dropout=0.0)
    model = convert(bert, max_positions=4096, attention_window=window)
    if kind == "longformer":  # as the lab trains it
        block_attention(model)
    elif kind.startswith("bert"):  # the same BERT, positions tiled out to 4,096, full attention
        model = _full_attention_twin(bert, model, "eager" if kind == "bert-eager" else "sdpa")
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
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        step(length)
    gflop = counter.get_total_flops() / 1e9
    queue.put((seconds, peak / 1024, (peak - before) / 1024, gflop))


def _full_attention_twin(bert, long, attn: str):
    """BertForMaskedLM with 4,096 positions (the Longformer's tiled table) and full attention,
    through SDPA (fused kernel, no stored attention maps) or eager (the maps materialised)."""
    from transformers import BertForMaskedLM

    cfg = bert.config.__class__.from_dict(
        {**bert.config.to_dict(), "max_position_embeddings": 4096}
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


def run(*, quick: bool = False) -> dict:
    import multiprocessing as mp

    window = WINDOW
    lengths = [512, 1024] if quick else [512, 1024, 2048, 4096]
    ctx = mp.get_context("spawn")
    rows = {}
    for length in lengths:
        for kind in ("longformer", "longformer-hf", "bert", "bert-eager"):
            q = ctx.Queue()
            p = ctx.Process(target=_fwd_bwd_child, args=(kind, length, window, q))
            p.start()
            seconds, peak_mb, grew_mb, gflop = q.get()
            p.join()
            rows[(kind, length)] = (seconds, grew_mb, gflop)
            print(
                f"  {kind:13s} {length:5d} tokens: forward+backward {seconds:6.2f} s,"
                f" memory +{grew_mb:7.1f} MB, {gflop:6.1f} GFLOP",
                flush=True,
            )
    top = lengths[-1]
    speed = rows[("bert", top)][0] / rows[("longformer", top)][0]
    memory = rows[("longformer", top)][1] / max(1e-9, rows[("bert", top)][1])
    eager_speed = rows[("bert-eager", top)][0] / rows[("longformer", top)][0]
    eager_memory = rows[("longformer", top)][1] / max(1e-9, rows[("bert-eager", top)][1])
    growth = rows[("longformer", top)][0] / rows[("longformer", 1024)][0]
    hf_speed = rows[("bert", top)][0] / rows[("longformer-hf", top)][0]
    # what a sliding window can save at most here: full attention's arithmetic over the Longformer's
    arithmetic = rows[("bert", top)][2] / rows[("longformer", top)][2]
    print(
        f"  at {top} tokens full attention does {arithmetic:.2f}x the Longformer's arithmetic: the most a"
        " sliding window can save when both run at the same FLOP/s"
    )
    return {
        "bench": "longify", "ours": round(rows[("longformer", top)][0], 3), "baseline": round(rows[("bert", top)][0], 3),
        "unit": f"s per forward+backward at {top} tokens (lower is better)", "ratio": round(speed, 2),
        "target": 8.0, "memory_ratio": round(memory, 3), "memory_target": 0.25,
        "ratio_vs_eager": round(eager_speed, 2), "memory_ratio_vs_eager": round(eager_memory, 3),
        "time_growth_1024_to_top": round(growth, 2), "linear_growth_would_be": top / 1024,
        "ratio_transformers_longformer": round(hf_speed, 2), "arithmetic_ratio": round(arithmetic, 2),
        "gflop": {f"{k}@{n}": round(v[2], 1) for (k, n), v in rows.items()},
        "step": "masked-LM loss at 15% of positions, bf16 autocast, forward + backward, batch 1",
        "window": window, "model": "Mini", "lengths": lengths,
        "seconds": {f"{k}@{n}": round(v[0], 3) for (k, n), v in rows.items()},
        "memory_mb": {f"{k}@{n}": round(v[1], 1) for (k, n), v in rows.items()}, "quick": quick,
    }  # fmt: skip
