"""One run per run id at a time: a lock file in the run folder, naming its holder.

`python -m lab run`, `python -m lab.<stage>` and the stage cell of each notebook hold the lock of
their run id while they work. The processes they start (the notebook kernels of a batch run, the
ranks of a data-parallel stage) inherit the holder's id through the environment and work under it. A
lock whose holder is gone (killed, crashed, the machine restarted) is taken over.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from lab import runs
from lab.core.errors import LabError

LOCK = ".lock"
OWNER = "ZH_MINILAB_LOCK_OWNER"  # the holder's PID, inherited by the processes it starts


class RunLocked(LabError, RuntimeError):
    """Another live process is working on this run id."""


@contextlib.contextmanager
def hold(run_id: str, what: str):
    """Hold the run's lock for the block (re-entrant for the holder and the processes it started);
    raise RunLocked, naming the holder and what to do, if another live process holds it.

    The lock is an advisory `flock` on data/runs/<run_id>/.lock: the operating system releases it
    when its process ends, however it ends, so a killed run's lock is simply taken over. The file
    names the holder for the message."""
    path = runs.run_dir(run_id) / LOCK
    holder = read(run_id)
    mine = {os.getpid(), int(os.environ.get(OWNER) or 0)}
    if holder and holder.get("pid") in mine or int(os.environ.get("RANK", "0")):
        yield  # the caller works under its parent's (or rank 0's) lock
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise runs.explain_os_error(err, path.parent) from err
    try:
        _take(fd, path, run_id)
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": runs.now(),
            "command": what,
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        previous = os.environ.get(OWNER)
        os.environ[OWNER] = str(os.getpid())
        try:
            yield
        finally:
            if previous is None:
                os.environ.pop(OWNER, None)
            else:
                os.environ[OWNER] = previous
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the flock


def _take(fd: int, path: Path, run_id: str) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        pass
    holder = read(run_id)
    for _ in range(10):  # the holder may not have written its name yet
        if holder:
            break
        time.sleep(0.1)
        holder = read(run_id)
    who = (f"process {holder['pid']} on {holder['host']} (`{holder['command']}`, since {holder['started']})"
           if holder else "another process")  # fmt: skip
    kill = f" (kill {holder['pid']})" if holder else ""
    raise RunLocked(
        f"run {run_id!r} is in use by {who}. Wait for it to finish, stop it{kill}, or give this "
        f"command another --run-id."
    )


def read(run_id: str) -> dict | None:
    """Who holds (or last held) the run's lock, as the file names it."""
    try:
        return json.loads((runs.run_dir(run_id) / LOCK).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
