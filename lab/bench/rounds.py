"""Arms measured in interleaved rounds, so that a busy minute slows every arm alike.

One arm after another takes the load of whichever minute it ran in: on this kind of machine a
ratio of 3.07 on an idle machine came out 0.75 with a second process busy. Here each round runs
every arm once (A, B, C, A, B, C, ...); a ratio is taken within each round (the same minute for
both arms) and reported as the median over rounds with the range its middle half spans. The load
average at the start and at the end goes with the result.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np


def loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:  # not on every platform
        return None


def interleaved(arms: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Call every arm once per round, in the same order; each returns its measurement of that round
    (a rate: higher is better). Returns each arm's measurements by round."""
    out: dict[str, list[float]] = {name: [] for name in arms}
    for r in range(rounds):
        for name, arm in arms.items():
            out[name].append(float(arm()))
            print(f"  round {r + 1}/{rounds} {name}: {out[name][-1]:,.1f}", flush=True)
    return out


def paired_ratio(ours: list[float], base: list[float]) -> dict:
    """The ratio of two arms' rates within each round: median and the quartiles over rounds."""
    per_round = np.asarray(ours) / np.asarray(base)
    lo, mid, hi = np.percentile(per_round, [25, 50, 75])
    return {"ratio": round(float(mid), 2), "ratio_iqr": [round(float(lo), 2), round(float(hi), 2)],
            "ratios_by_round": [round(float(x), 3) for x in per_round]}  # fmt: skip


def median(values: list[float]) -> float:
    return float(np.median(values))
