"""bench gpu: every stage on one CUDA device (the `gpu-check` profile: bf16, fused attention,
compile), each manifest checked, and per training stage its MFU against the device's probed bf16
peak and its peak memory; the pretraining loop's tokens/s against the careful `Trainer` arm on the
same device. Without CUDA it says so and exits 0. Nothing touches the network once the sources
cache is warm (`python -m lab sources --fetch`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

STAGES = ("corpus", "wwm", "pretrain", "distill", "longify", "evaluate")


def run(*, quick: bool = False) -> dict:
    if not torch.cuda.is_available():
        why = f"no CUDA device here (torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'})"
        print(
            f"bench gpu: skipped: {why}; run it on a machine with one: python -m lab bench gpu",
            flush=True,
        )
        return {"bench": "gpu", "skipped": why, "ours": None, "baseline": None, "unit": "real tokens/s",
                "ratio": None, "target": 1.5, "quick": quick}  # fmt: skip
    from lab.bench import pretrain
    from lab.core import hardware

    home = Path(tempfile.mkdtemp(prefix="lab-gpu-check-"))
    env = {**os.environ, "ZH_MINILAB_HOME": str(home)}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "lab", "run", "--profile", "gpu-check", "--run-id", "gpu-check"],
                          env=env, text=True)  # fmt: skip
    minutes = (time.perf_counter() - t0) / 60
    peak = hardware.matmul_peak("cuda", "bfloat16")
    rows, missing = {}, []
    for stage in STAGES:
        path = home / "data" / "runs" / "gpu-check" / stage / "manifest.json"
        if not path.exists():
            missing.append(stage)
            continue
        m = json.loads(path.read_text(encoding="utf-8"))
        trains = _summaries(m["metrics"].get("train", {}))
        rows[stage] = {name: {k: s.get(k) for k in ("tokens_per_s", "mfu", "peak_memory_gb", "compiled")}
                       for name, s in trains.items()}  # fmt: skip
    for stage, trains in rows.items():
        for name, s in trains.items():
            print(f"  {stage:9s} {name:18s} {s['tokens_per_s'] or 0:12,.0f} tokens/s  MFU {s['mfu'] or 0:.0%}  "
                  f"peak {s['peak_memory_gb'] or 0:.1f} GB  compiled {s['compiled']}")  # fmt: skip
    ratio = None
    if not quick:
        careful = pretrain.pretrain(quick=True)
        ratio = careful["ratio"]
    ok = proc.returncode == 0 and not missing
    print(f"bench gpu: {'every manifest written' if ok else f'FAILED (exit {proc.returncode}, missing {missing})'} "
          f"in {minutes:.1f} min; probed bf16 peak {peak / 1e12:.0f} TFLOP/s", flush=True)  # fmt: skip
    return {"bench": "gpu", "ours": rows.get("pretrain"), "baseline": "Trainer, bf16, grouped blocks, SDPA",
            "unit": "real tokens/s", "ratio": ratio, "target": 1.5, "ok": ok, "minutes": round(minutes, 1),
            "minutes_target": 8.0, "stages": rows, "peak_tflops": round(peak / 1e12, 1),
            "device": torch.cuda.get_device_name(0), "quick": quick}  # fmt: skip


def _summaries(train: dict) -> dict:
    """A manifest's training summaries: one loop's ({"steps", ...}) or a stage's by name."""
    if "tokens_per_s" in train:
        return {"train": train}
    return {k: v for k, v in train.items() if isinstance(v, dict) and "tokens_per_s" in v}
