"""Progress and messages: widget bars live in JupyterLab, plain text bars in batch runs and terminals.

Under papermill no frontend keeps widget state, so `tqdm.auto`'s widget bar would reach the report
as a dead `HBox(...)`; batch runs (ZH_MINILAB_BATCH set by `python -m lab run`) get text bars that
update at most every few seconds.
"""

from __future__ import annotations

import os
import sys

from tqdm import tqdm as _text_tqdm
from tqdm.auto import tqdm as _auto_tqdm


def tqdm(*args, **kwargs):
    if os.environ.get("ZH_MINILAB_BATCH"):
        kwargs.setdefault("mininterval", 10)
        return _text_tqdm(*args, **kwargs)
    kwargs.setdefault("mininterval", 1)
    return _auto_tqdm(*args, **kwargs)


def echo(*args) -> None:
    """print() that reaches the terminal promptly under papermill and pipes."""
    print(*args, flush=True, file=sys.stdout)
