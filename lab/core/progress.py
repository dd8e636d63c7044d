"""Progress and messages: widget bars live in JupyterLab, quiet bars in batch runs.

Under papermill no frontend keeps widget state, and a text bar's redraws would fill the report with
fragments. Batch runs (ZH_MINILAB_BATCH set by `python -m lab run`) therefore get bars that draw
nothing: each publishes its state to the file named by ZH_MINILAB_PROGRESS (the pipeline turns it
into one live line in the terminal) and prints a single summary line when it closes (none for a bar
made with leave=False, whose caller reports the outcome itself).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

from tqdm import tqdm as _text_tqdm
from tqdm.auto import tqdm as _auto_tqdm

from lab.core.files import write_atomic

PROGRESS_FILE = "ZH_MINILAB_PROGRESS"


def tqdm(*args, **kwargs):
    if os.environ.get("ZH_MINILAB_BATCH"):
        return QuietBar(*args, **kwargs)
    kwargs.setdefault("mininterval", 1)
    return _auto_tqdm(*args, **kwargs)


def echo(*args) -> None:
    """print() that reaches the terminal promptly under papermill and pipes."""
    print(*args, flush=True, file=sys.stdout)


class _Nowhere:
    def write(self, _: str) -> None:
        pass

    def flush(self) -> None:
        pass


_open: list[QuietBar] = []  # this process's open bars, outermost first


class QuietBar(_text_tqdm):
    """A bar that never draws: its state goes to the progress file, its summary to stdout."""

    def __init__(self, *args, **kwargs):
        kwargs["file"] = _Nowhere()
        kwargs.setdefault("mininterval", 2)
        super().__init__(*args, **kwargs)
        if not self.disable:
            _open.append(self)
            _publish()

    def display(self, msg=None, pos=None) -> bool:
        _publish()
        return True

    def close(self) -> None:
        if self.disable:
            return
        line = self.summary() if self.leave else None
        super().close()
        if self in _open:
            _open.remove(self)
        _publish()
        if line:
            echo(line)

    def state(self) -> dict:
        d = self.format_dict
        return {"desc": d["prefix"] or "", "n": d["n"], "total": d["total"], "unit": d["unit"],
                "elapsed": d["elapsed"], "postfix": d["postfix"] or ""}  # fmt: skip

    def summary(self) -> str:
        """`desc: 30/30 step in 00:42 (0.71 step/s), loss=2.1, tok_s=1,234`."""
        s = self.state()
        rate = s["n"] / s["elapsed"] if s["elapsed"] else 0.0
        total = f"/{s['total']:,}" if s["total"] else ""
        text = f"{s['desc']}: {s['n']:,}{total} {s['unit']} in {self.format_interval(s['elapsed'])} ({rate:.3g} {s['unit']}/s)"
        return text + (f", {s['postfix']}" if s["postfix"] else "")


def _publish() -> None:
    """Write the open bars' states where the pipeline reads them (atomically: it may read any time)."""
    path = os.environ.get(PROGRESS_FILE)
    if not path:
        return
    with contextlib.suppress(OSError):  # progress is a courtesy: never fail the work for it
        write_atomic(Path(path), json.dumps([b.state() for b in _open], ensure_ascii=False))


def read_progress(path: str | os.PathLike) -> list[dict]:
    """The bars a stage has open, as it last published them ([] if none or unreadable)."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return []


def progress_line(bars: list[dict], width: int = 100) -> str:
    """One terminal line for the open bars: each `desc n/total [elapsed<remaining, postfix]`."""
    parts = [
        _text_tqdm.format_meter(
            b["n"],
            b["total"],
            b["elapsed"],
            prefix=b["desc"],
            unit=b["unit"],
            postfix=b["postfix"] or None,
            ncols=0,
        )  # fmt: skip
        for b in bars
    ]
    text = " | ".join(p.replace("  ", " ") for p in parts)
    return text if len(text) <= width else text[: width - 1] + "…"
