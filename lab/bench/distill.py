"""bench distill: student tokens per second from cached teacher top-k against a teacher forward every step."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from lab.bench import data
from lab.core import kd, models, train
from lab.core.kdcache import CachedBatches, build_cache
from lab.core.masking import WholeWordMaskCollator
from lab.core.mlm import PackedBatches


def run(*, quick: bool = False) -> dict:
    """Student training tokens/s from cached teacher top-k against online distillation, the same
    Tiny student, the same Mini teacher, the same batches, KD + MLM losses for both."""
    tokenizer = data.full_tokenizer()
    x, w = data.packed(data.texts(3000 if quick else 8000), tokenizer, 128)
    steps, batch = (10, 32) if quick else (80, 32)
    teacher = models.build("Mini", len(tokenizer), seed=0)
    collator = WholeWordMaskCollator(tokenizer, seed=0)
    weights = {"kd": 1.0, "mlm": 1.0}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        meta = build_cache(teacher, x, w, collator, Path(tmp) / "cache", dupe_factor=1,
                                   n_sequences=steps * batch, topk=128, seed=0, teacher_digest="bench")  # fmt: skip
        t_cache = time.perf_counter() - t0
        results = {}
        for mode in ("online", "cached"):
            student = models.build("Tiny", len(tokenizer), seed=1, dropout=0.0)
            module = kd.Distiller(student, teacher if mode == "online" else None, weights=weights,
                                       temperature=8.0, t2=True, layer_map=[1, 3], topk=128)  # fmt: skip
            if mode == "cached":
                batches = CachedBatches(Path(tmp) / "cache", batch, 0)
            else:
                batches = PackedBatches(x, w, collator, batch, 0)
            cfg = train.TrainConfig(
                steps=steps, lr=1e-3, warmup_steps=2, bf16=True, log_every=max(1, steps // 4)
            )
            res = train.train(module, batches, cfg, Path(tmp) / mode, desc=f"distill {mode}")
            results[mode] = res["tokens_per_s"]
    ours, base = results["cached"], results["online"]
    print(f"  online (teacher forward each step) {base:,.0f} tokens/s")
    print(
        f"  from cached top-128 logits         {ours:,.0f} tokens/s (cache built once in {t_cache:.1f} s)"
    )
    return {
        "bench": "distill", "ours": round(ours), "baseline": round(base), "unit": "student tokens/s",
        "ratio": round(ours / base, 2), "target": 1.5, "cache_seconds": round(t_cache, 1),
        "cache_mb_per_million_tokens": round(meta["bytes_per_million_tokens"] / 1e6, 1), "quick": quick,
    }  # fmt: skip
