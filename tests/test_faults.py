"""Faults survived, nothing lost: kill -9 mid-training and mid-pipeline, caching, tampering."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import lab
from safetensors.torch import load_file

pytestmark = [pytest.mark.notebook, pytest.mark.slow]


def _clone_run(home, src: str, dst: str, stages=("corpus", "wwm")) -> None:
    for stage in stages:
        shutil.copytree(
            home / "data" / "runs" / src / stage,
            home / "data" / "runs" / dst / stage,
            dirs_exist_ok=True,
        )


def _stage_cmd(stage: str, run_id: str, *params: str) -> list[str]:
    cmd = [sys.executable, "-m", f"lab.{stage}", "--profile", "smoke", "--run-id", run_id]
    for p in params:
        cmd += ["-p", p]
    return cmd


def _kill_when(cmd, env, ready, timeout=300):
    """Start `cmd`, wait until `ready()` is true, then SIGKILL its whole process group."""
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + timeout
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"{cmd} finished before it could be killed")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for a checkpoint")
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _same_weights(a, b, atol=0.0):
    x, y = load_file(str(a)), load_file(str(b))
    assert x.keys() == y.keys()
    for k in x:
        assert torch.allclose(x[k].float(), y[k].float(), atol=atol, rtol=0), k


def test_kill_9_during_pretraining_resumes_to_the_same_model(smoke_run):
    home = smoke_run[0]
    env = {**os.environ, "ZH_MINILAB_HOME": str(home), "OMP_NUM_THREADS": "1"}
    params = ("steps=60", "ckpt_every=10", "stage2_steps=4")
    for rid in ("kill", "whole"):
        _clone_run(home, "nb", rid)
    subprocess.run(
        _stage_cmd("pretrain", "whole", *params), env=env, check=True, capture_output=True
    )
    ckpts = home / "data" / "runs" / "kill" / "pretrain.partial" / "stage1" / "checkpoints"
    _kill_when(_stage_cmd("pretrain", "kill", *params), env, lambda: any(ckpts.glob("step-*")))
    assert not (home / "data" / "runs" / "kill" / "pretrain" / "manifest.json").exists()
    out = subprocess.run(
        _stage_cmd("pretrain", "kill", *params), env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "resuming from" in out.stdout + out.stderr
    runs_dir = home / "data" / "runs"
    _same_weights(runs_dir / "kill" / "pretrain" / "model" / "model.safetensors",
                  runs_dir / "whole" / "pretrain" / "model" / "model.safetensors")  # fmt: skip


def test_kill_9_during_distillation_resumes_to_the_same_students(smoke_run):
    home = smoke_run[0]
    env = {**os.environ, "ZH_MINILAB_HOME": str(home), "OMP_NUM_THREADS": "1"}
    params = ("steps=40", "ckpt_every=5", "seeds=1", "assistant_steps=0")
    for rid in ("dkill", "dwhole"):
        _clone_run(home, "nb", rid, stages=("corpus", "wwm", "pretrain"))
    subprocess.run(
        _stage_cmd("distill", "dwhole", *params), env=env, check=True, capture_output=True
    )
    ckpts = (
        home
        / "data"
        / "runs"
        / "dkill"
        / "distill.partial"
        / "students"
        / "one-stage-s1234"
        / "checkpoints"
    )
    _kill_when(_stage_cmd("distill", "dkill", *params), env, lambda: any(ckpts.glob("step-*")))
    out = subprocess.run(
        _stage_cmd("distill", "dkill", *params), env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    runs_dir = home / "data" / "runs"
    _same_weights(runs_dir / "dkill" / "distill" / "models" / "one-stage-s1234" / "model.safetensors",
                  runs_dir / "dwhole" / "distill" / "models" / "one-stage-s1234" / "model.safetensors")  # fmt: skip


def test_kill_9_during_the_pipeline_continues_where_it_stopped(smoke_run):
    """`python -m lab run` killed (with its kernel) while pretraining; the same command again
    skips the finished stages and ends with the same teacher as an uninterrupted run. The run
    starts with corpus and wwm finished (the smoke run's, with their reports), as a run killed
    after them has them."""
    home = smoke_run[0]
    env = {**os.environ, "ZH_MINILAB_HOME": str(home)}
    _clone_run(home, "nb", "pk")
    shutil.copytree(home / "reports" / "nb", home / "reports" / "pk", dirs_exist_ok=True)
    status = json.loads((home / "reports" / "pk" / "status.json").read_text())
    status["run_id"] = "pk"
    status["stages"] = {k: v for k, v in status["stages"].items() if k in ("corpus", "wwm")}
    (home / "reports" / "pk" / "status.json").write_text(json.dumps(status))
    partial = home / "data" / "runs" / "pk" / "pretrain.partial" / "stage1" / "checkpoints"
    cmd = [
        sys.executable,
        "-m",
        "lab",
        "run",
        "--profile",
        "smoke",
        "--run-id",
        "pk",
        "--to",
        "pretrain",
    ]
    _kill_when(cmd, env, lambda: any(partial.glob("step-*")))
    again = lab("run", "--profile", "smoke", "--run-id", "pk", "--to", "pretrain", home=home)
    assert again.stdout.count("cached") >= 2  # corpus and wwm were not redone
    status = json.loads((home / "reports" / "pk" / "status.json").read_text())
    assert status["stages"]["pretrain"]["status"] == "ok"
    runs_dir = home / "data" / "runs"
    _same_weights(runs_dir / "pk" / "pretrain" / "model" / "model.safetensors",
                  runs_dir / "nb" / "pretrain" / "model" / "model.safetensors")  # fmt: skip


def test_changed_parameter_reruns_the_stage_and_everything_downstream(smoke_run):
    home = smoke_run[0]
    for part in ("data/runs", "reports"):
        shutil.copytree(home / part / "nb", home / part / "cc", dirs_exist_ok=True)
    out = lab(
        "run",
        "--profile",
        "smoke",
        "--run-id",
        "cc",
        "--to",
        "distill",
        "-p",
        "pretrain.lr=0.003",
        home=home,
    )
    assert out.stdout.count("    cached · ") == 2, out.stdout  # corpus, wwm
    status = json.loads((home / "reports" / "cc" / "status.json").read_text())["stages"]
    assert status["corpus"]["status"] == "cached" and status["wwm"]["status"] == "cached"
    assert status["pretrain"]["status"] == "ok" and status["distill"]["status"] == "ok"
    m = json.loads((home / "data" / "runs" / "cc" / "pretrain" / "manifest.json").read_text())
    assert m["params"]["lr"] == 0.003


def test_tampered_artifact_is_detected_and_named(smoke_run):
    home = smoke_run[0]
    for part in ("data/runs", "reports"):
        shutil.copytree(home / part / "nb", home / part / "tt", dirs_exist_ok=True)
    stats = home / "data" / "runs" / "tt" / "corpus" / "stats.json"
    stats.write_text(stats.read_text().replace("peoples_daily", "people_daily"))
    out = lab(
        "run",
        "--profile",
        "smoke",
        "--run-id",
        "tt",
        "--from",
        "wwm",
        "--to",
        "wwm",
        home=home,
        check=False,
    )
    assert out.returncode == 1
    assert "stats.json does not match the hash" in out.stderr
