"""Shared fixtures: an isolated lab home per session, and the smoke corpus built once."""

from __future__ import annotations

import os
import subprocess
import sys
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


def lab(*args, home, check=True, env_extra=None):
    """`python -m lab ...` in a subprocess with ZH_MINILAB_HOME=home."""
    env = {**os.environ, "ZH_MINILAB_HOME": str(home), **(env_extra or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "lab", *args], capture_output=True, text=True, env=env
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """`python -m lab run --profile smoke` through every stage that has a notebook, once."""
    home = tmp_path_factory.mktemp("smoke-home")
    proc = lab("run", "--profile", "smoke", "--run-id", "nb", home=home)
    return home, proc
