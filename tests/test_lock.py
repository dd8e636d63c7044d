"""One run per run id at a time: a second `lab run` or `python -m lab.<stage>` is refused while a
live process holds the run; a killed holder's lock is taken over; the holder's children share it."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest
from conftest import lab

from lab import lock, runs

HOLDER = textwrap.dedent("""
    import sys, time
    from lab import lock
    with lock.hold(sys.argv[1], "a test holder"):
        print("held", flush=True)
        time.sleep(600)
""")


@pytest.fixture
def holder(tmp_path, monkeypatch):
    """A separate process holding run `busy`'s lock (killed with SIGKILL at the end)."""
    monkeypatch.setenv("ZH_MINILAB_HOME", str(tmp_path))
    env = {**os.environ, "ZH_MINILAB_HOME": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, "busy"], env=env, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    yield proc
    proc.kill()
    proc.wait()


@pytest.mark.slow
def test_a_second_run_on_a_busy_run_id_is_refused(holder, tmp_path):
    proc = lab("run", "--profile", "smoke", "--run-id", "busy", "--to", "corpus", home=tmp_path,
               check=False)  # fmt: skip
    assert proc.returncode == 1
    assert f"run 'busy' is in use by process {holder.pid}" in proc.stderr
    assert f"kill {holder.pid}" in proc.stderr and "another --run-id" in proc.stderr
    env = {**os.environ, "ZH_MINILAB_HOME": str(tmp_path)}
    stage = subprocess.run([sys.executable, "-m", "lab.corpus", "--profile", "smoke", "--run-id", "busy"],
                           env=env, capture_output=True, text=True)  # fmt: skip
    assert stage.returncode == 1 and f"process {holder.pid}" in stage.stderr
    assert not runs.stage_dir("busy", "corpus").exists()  # nothing was started, nothing lost
    assert not (tmp_path / "reports" / "busy" / "01_corpus.ipynb").exists()


@pytest.mark.slow
def test_a_killed_holders_lock_is_taken_over(holder):
    assert lock.read("busy")["pid"] == holder.pid
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    with lock.hold("busy", "after the kill"):
        assert lock.read("busy")["pid"] == os.getpid()
    again = subprocess.Popen([sys.executable, "-c", HOLDER, "busy"], env=dict(os.environ),
                             stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:  # and it still protects the run from the next one
        assert again.stdout.readline().strip() == "held"
        with pytest.raises(lock.RunLocked, match="in use by process"), lock.hold("busy", "third"):
            pass
    finally:
        again.kill()
        again.wait()


@pytest.mark.slow
def test_the_holders_children_work_under_its_lock(tmp_path, monkeypatch):
    """The notebook kernels of a batch run (and the ranks of a stage) take no lock of their own."""
    monkeypatch.setenv("ZH_MINILAB_HOME", str(tmp_path))
    child = "from lab import lock\nwith lock.hold('mine', 'child'):\n    print('child ok')"
    with lock.hold("mine", "parent"):
        out = subprocess.run(
            [sys.executable, "-c", child], env=dict(os.environ), capture_output=True, text=True
        )
    assert out.returncode == 0 and "child ok" in out.stdout, out.stderr
    with lock.hold("mine", "again"):  # released when the parent's block ended
        pass
