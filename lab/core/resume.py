"""Checkpoints with a training run's full state (weights as safetensors, optimizer, scheduler, each
process's RNG, step and tokens), written into a temporary folder and renamed into place, so that a
crash mid-write leaves the previous one intact; the newest complete one is where a run resumes."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint (a folder renamed into place only once fully written)."""
    if not root.exists():
        return None
    done = sorted(p for p in root.glob("step-*") if (p / "state.json").exists())
    return done[-1] if done else None


def save_checkpoint(
    root: Path, step: int, tokens: int, model, optimizer, scheduler, acc, keep: int
) -> Path:
    """Write into a temp folder, then rename: a crash mid-write leaves the previous one intact."""
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}"
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_model(model, str(tmp / "model.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    acc.wait_for_everyone()
    torch.save(torch.get_rng_state(), tmp / f"rng-{acc.process_index}.pt")
    acc.wait_for_everyone()
    if acc.is_main_process:
        (tmp / "state.json").write_text(
            json.dumps({"step": step, "tokens": tokens}), encoding="utf-8"
        )
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in sorted(p for p in root.glob("step-*") if p != final)[: -keep or None]:
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()
    return final


def load_checkpoint(path: Path, model, optimizer, scheduler, rank: int) -> dict:
    """Restore weights, optimizer, scheduler and this process's RNG; returns {"step", "tokens"}."""
    load_model(model, str(path / "model.safetensors"))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng = path / f"rng-{rank}.pt"
    if rng.exists():
        torch.set_rng_state(torch.load(rng, weights_only=True))
    return json.loads((path / "state.json").read_text(encoding="utf-8"))
