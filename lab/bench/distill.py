"""bench distill: student tokens per second from cached teacher top-k against a teacher forward every
step, the arms interleaved in rounds (`lab.bench.rounds`)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from lab.bench import data, rounds
from lab.core import kd, models, train
from lab.core.kdcache import CachedBatches, build_cache
from lab.core.masking import WholeWordMaskCollator
from lab.core.mlm import PackedBatches


def run(*, quick: bool = False) -> dict:
    """Student training tokens/s from cached teacher top-k against online distillation: the same
    Tiny student, the same Mini teacher, the same batches, KD + MLM losses for both; in each round
    each arm trains `steps` steps of its own student, one arm after the other."""
    load_start = rounds.loadavg()
    tokenizer = data.full_tokenizer()
    x, w = data.packed(data.texts(3000 if quick else 8000), tokenizer, 128)
    n_rounds, steps, batch = (3, 6, 32) if quick else (5, 20, 32)
    teacher = models.build("Mini", len(tokenizer), seed=0)
    collator = WholeWordMaskCollator(tokenizer, seed=0)
    weights = {"kd": 1.0, "mlm": 1.0}
    tmp = Path(tempfile.mkdtemp(prefix="bench-distill-"))
    t0 = time.perf_counter()
    meta = build_cache(teacher, x, w, collator, tmp / "cache", dupe_factor=1, n_sequences=n_rounds * steps * batch,
                       topk=128, seed=0, teacher_digest="bench")  # fmt: skip
    t_cache = time.perf_counter() - t0
    done = {"online": 0, "cached": 0}

    def arm(mode: str):
        student = models.build("Tiny", len(tokenizer), seed=1, dropout=0.0)
        module = kd.Distiller(student, teacher if mode == "online" else None, weights=weights, temperature=8.0,
                              t2=True, layer_map=[1, 3], topk=128)  # fmt: skip

        def one_round() -> float:
            start = done[mode]
            source = (
                CachedBatches(tmp / "cache", batch, 0)
                if mode == "cached"
                else PackedBatches(x, w, collator, batch, 0)
            )

            def batches(i, rank=0, world=1):  # this round's steps of the arm's own stream
                return source(start + i, rank, world)

            cfg = train.TrainConfig(steps=steps, lr=1e-3, warmup_steps=2, bf16=True, checkpoints=False,
                                    tensorboard=False, log_every=steps, leave=False)  # fmt: skip
            res = train.train(module, batches, cfg, tmp / f"{mode}-{start}", desc=f"distill {mode}")
            done[mode] += steps
            return res["tokens_per_s"]

        return one_round

    rates = rounds.interleaved({"cached": arm("cached"), "online": arm("online")}, n_rounds)
    ours, base = rounds.median(rates["cached"]), rounds.median(rates["online"])
    print(f"  online (teacher forward each step) {base:,.0f} tokens/s")
    print(
        f"  from cached top-128 logits         {ours:,.0f} tokens/s (cache built once in {t_cache:.1f} s)"
    )
    return {
        "bench": "distill", "ours": round(ours), "baseline": round(base), "unit": "student tokens/s",
        **rounds.paired_ratio(rates["cached"], rates["online"]), "target": 1.5,
        "cache_seconds": round(t_cache, 1), "rounds": n_rounds, "steps_per_round": steps,
        "rates_by_round": {k: [round(v) for v in r] for k, r in rates.items()},
        "cache_mb_per_million_tokens": round(meta["bytes_per_million_tokens"] / 1e6, 1),
        "loadavg": {"start": load_start, "end": rounds.loadavg()}, "quick": quick,
    }  # fmt: skip
