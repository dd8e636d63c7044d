"""Runs, stage folders and manifests: the only contract between stages.

A stage works in `data/runs/<run_id>/<stage>.partial/` and, when done, writes `manifest.json` there
and swaps the folder into `data/runs/<run_id>/<stage>/`. So a stage cut off half-way never looks
complete, a previous complete result stays valid until its replacement is ready, and training
stages resume from the checkpoints left in the partial folder.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import os
import platform
import shutil
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from lab.core.errors import LabError
from lab.core.files import hash_tree, read_json, sha256_file, sha256_json, write_atomic, write_json

MANIFEST = "manifest.json"
PACKAGES = ("torch", "transformers", "tokenizers", "datasets", "accelerate", "jieba", "rjieba")


class StageError(LabError, RuntimeError):
    """A stage cannot run: a missing or tampered upstream, an unwritable folder."""


def home() -> Path:
    """The folder holding data/ and reports/: $ZH_MINILAB_HOME, the source checkout, or the cwd."""
    if env := os.environ.get("ZH_MINILAB_HOME"):
        return Path(env).expanduser().resolve()
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").exists() and (checkout / "notebooks").is_dir():
        return checkout
    return Path.cwd()


def data_dir() -> Path:
    return home() / "data"


def reports_dir() -> Path:
    return home() / "reports"


def run_dir(run_id: str) -> Path:
    return data_dir() / "runs" / run_id


def stage_dir(run_id: str, stage: str) -> Path:
    return run_dir(run_id) / stage


# ---------------------------------------------------------------------------------------------
# errors


def explain_os_error(err: OSError, path: Path) -> StageError:
    """Turn disk-full / read-only / permission errors into a message naming the path and the fix."""
    if err.errno == errno.ENOSPC:
        why = "the disk is full; free space or point ZH_MINILAB_HOME at a larger disk"
    elif err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        why = "the folder is not writable; fix its permissions or set ZH_MINILAB_HOME elsewhere"
    else:
        why = err.strerror or str(err)
    return StageError(f"cannot write {path}: {why}")


# ---------------------------------------------------------------------------------------------
# provenance


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "lab": _version("zh-minilab")}
    for name in PACKAGES:
        out[name] = _version(name)
    return out


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def git_revision() -> dict[str, Any]:
    root = Path(__file__).resolve().parents[1]
    try:
        rev = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    if rev.returncode != 0:
        return {"commit": None, "dirty": None}
    return {"commit": rev.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------
# manifests and upstream stages


def read_manifest(folder: Path) -> dict | None:
    """The manifest of a complete stage folder, or None (absent, unreadable or incomplete)."""
    path = Path(folder) / MANIFEST
    try:
        manifest = read_json(path)
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return manifest if manifest.get("complete") else None


def upstream(run_id: str, stage: str, *, verify: bool = True) -> dict:
    """The manifest of a finished upstream stage, its files checked against their recorded hashes."""
    folder = stage_dir(run_id, stage)
    manifest = read_manifest(folder)
    if manifest is None:
        raise StageError(
            f"stage '{stage}' of run '{run_id}' has not finished ({folder} has no complete "
            f"manifest). Run it first: python -m lab run --run-id {run_id} --to {stage}"
        )
    if verify:
        for rel, digest in manifest["files"].items():
            path = folder / rel
            if not path.exists():
                raise StageError(
                    f"{path} is missing: the '{stage}' stage's output was changed; rerun it"
                )
            if sha256_file(path) != digest:
                raise StageError(
                    f"{path} does not match the hash in {folder / MANIFEST}: the file was changed "
                    f"after the '{stage}' stage wrote it. Rerun that stage (delete {folder})."
                )
    manifest["dir"] = folder
    manifest["digest"] = sha256_file(folder / MANIFEST)
    return manifest


class Stage:
    """One stage of one run: the cache check, the work folder and the manifest.

    >>> st = Stage(cfg, inputs={...}, code=digest)
    >>> if st.cached: return st.manifest
    >>> work = st.begin()      # data/runs/<id>/<stage>.partial/
    >>> ...                    # write artifacts into `work`
    >>> return st.finish(outputs={...}, metrics={...})
    """

    def __init__(self, cfg, inputs: dict[str, str], code: str = ""):
        self.cfg = cfg
        self.name = cfg.stage
        self.inputs = inputs
        self.dir = stage_dir(cfg.run_id, self.name)
        self.work = self.dir.with_name(self.name + ".partial")
        self.code = code  # digest of the code the stage runs (lab.codebase.digest)
        self.key = sha256_json(
            {"stage": self.name, "params": cfg.params(), "inputs": inputs, "code": self.code}
        )
        self.manifest = read_manifest(self.dir)
        self.cached = bool(self.manifest and self.manifest.get("key") == self.key)
        if self.cached:
            self.manifest["dir"] = self.dir
        self.started = None

    def begin(self) -> Path:
        """Create (or, for a resumable run with the same key, reuse) the partial folder."""
        self.started = time.time()
        marker = self.work / ".key"
        if int(os.environ.get("RANK", "0")):  # under torchrun: rank 0 prepares the folder
            deadline = self.started + 600
            while not (marker.exists() and marker.read_text() == self.key):
                if time.time() > deadline:
                    raise StageError(f"{self.work} was not prepared by the main process in 10 min")
                time.sleep(0.1)
            return self.work
        try:
            if self.work.exists() and (not marker.exists() or marker.read_text() != self.key):
                shutil.rmtree(self.work)
            self.work.mkdir(parents=True, exist_ok=True)
            write_atomic(marker, self.key)
        except OSError as err:
            raise explain_os_error(err, self.work) from err
        return self.work

    def finish(self, outputs: dict[str, str], metrics: dict[str, Any]) -> dict:
        """Write the manifest, then swap the partial folder in place of the previous result."""
        for name, rel in outputs.items():
            if not (self.work / rel).exists():
                raise StageError(f"stage {self.name}: output {name!r} ({rel}) was not written")
        finished = time.time()
        manifest = {
            "stage": self.name,
            "complete": True,
            "key": self.key,
            "run_id": self.cfg.run_id,
            "profile": self.cfg.profile,
            "params": self.cfg.params(),
            "inputs": self.inputs,
            "code": self.code,
            "outputs": outputs,
            "files": hash_tree(self.work, skip=(MANIFEST, ".key")),
            "metrics": metrics,
            "versions": versions(),
            "git": git_revision(),
            "seed": self.cfg.seed,
            "started": dt.datetime.fromtimestamp(self.started, dt.timezone.utc).isoformat(
                timespec="seconds"
            ),
            "finished": now(),
            "duration_s": round(finished - self.started, 2),
        }
        old = self.dir.with_name(f"{self.name}.old-{os.getpid()}")
        try:
            write_json(self.work / MANIFEST, manifest)
            if self.dir.exists():
                os.replace(self.dir, old)
            os.replace(self.work, self.dir)
            shutil.rmtree(old, ignore_errors=True)
            (self.dir / ".key").unlink(missing_ok=True)
        except OSError as err:
            if old.exists() and not self.dir.exists():  # put the previous result back
                with contextlib.suppress(OSError):
                    os.replace(old, self.dir)
            raise explain_os_error(err, self.dir) from err
        manifest["dir"] = self.dir
        self.manifest = manifest
        return manifest


def clean_stale(run_id: str) -> None:
    """Remove leftovers of an interrupted swap (`<stage>.old-<pid>`)."""
    root = run_dir(run_id)
    if root.exists():
        for path in root.glob("*.old-*"):
            stage = path.with_name(path.name.split(".old-")[0])
            if stage.exists():
                shutil.rmtree(path, ignore_errors=True)
            else:  # killed between the two renames: the previous result is still the valid one
                os.replace(path, stage)


# ---------------------------------------------------------------------------------------------
# benchmark results


def save_bench(result: dict) -> None:
    """Keep the latest result of each benchmark in reports/bench/NAME[-VARIANT][-quick].json (a
    variant: `bench finetune --model`'s), where the notebooks show it; a folder that cannot be
    written only costs the copy."""
    parts = (result["bench"], result.get("variant"), "quick" if result.get("quick") else "")
    name = "-".join(p for p in parts if p)
    folder = reports_dir() / "bench"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / f"{name}.json", result)
    except OSError as err:
        print(f"(bench result not saved: {err})", flush=True)


def latest_bench(name: str) -> dict | None:
    """The last saved full (not --quick) result of benchmark `name`, or None."""
    path = reports_dir() / "bench" / f"{name}.json"
    return read_json(path) if path.exists() else None
