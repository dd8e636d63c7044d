"""Shared fixtures: an isolated lab home per session, and the smoke corpus built once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def lab_home(tmp_path_factory) -> Path:
    """A fresh ZH_MINILAB_HOME for the whole session (data/ and reports/ live there)."""
    home = tmp_path_factory.mktemp("home")
    old = os.environ.get("ZH_MINILAB_HOME")
    os.environ["ZH_MINILAB_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("ZH_MINILAB_HOME", None)
    else:
        os.environ["ZH_MINILAB_HOME"] = old


@pytest.fixture(scope="session")
def smoke_corpus(lab_home) -> dict:
    """The corpus stage on the smoke profile, run once (run id `t-smoke`)."""
    from lab import config, corpus

    cfg = config.load("corpus", run_id="t-smoke", profile="smoke")
    return corpus.run(cfg)
