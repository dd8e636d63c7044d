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
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import lab

MANIFEST = "manifest.json"
_UMASK = os.umask(0)
os.umask(_UMASK)
PACKAGES = ("torch", "transformers", "tokenizers", "datasets", "accelerate", "jieba", "rjieba")


class StageError(RuntimeError):
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
# files


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def hash_tree(root: Path, skip: tuple[str, ...] = (MANIFEST,)) -> dict[str, str]:
    """sha256 of every file under `root`, by path relative to it (checkpoints excluded)."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and rel not in skip and not rel.startswith("checkpoints/"):
            out[rel] = sha256_file(path)
    return out


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write to a temp file in the same folder, fsync, then rename over `path`."""
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp creates 0600; keep the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False, default=_jsonable) + "\n")


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


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


def code_digest(modules: tuple[str, ...]) -> str:
    """sha256 of the `lab` modules a stage's results depend on: changed code reruns the stage."""
    h = hashlib.sha256(lab.__version__.encode())
    for name in sorted(modules):
        h.update(name.encode())
        h.update((Path(lab.__file__).parent / f"{name}.py").read_bytes())
    return h.hexdigest()


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

    >>> st = Stage(cfg, inputs={...})
    >>> if st.cached: return st.manifest
    >>> work = st.begin()      # data/runs/<id>/<stage>.partial/
    >>> ...                    # write artifacts into `work`
    >>> return st.finish(outputs={...}, metrics={...})
    """

    def __init__(self, cfg, inputs: dict[str, str], code: tuple[str, ...] = ()):
        self.cfg = cfg
        self.name = cfg.stage
        self.inputs = inputs
        self.dir = stage_dir(cfg.run_id, self.name)
        self.work = self.dir.with_name(self.name + ".partial")
        self.code = code_digest(code)
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


def save_dataset(ds, path: Path) -> None:
    """save_to_disk without its per-split progress bars (they drown the notebook)."""
    import datasets

    was = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        ds.save_to_disk(str(path))
    finally:
        if was:
            datasets.enable_progress_bars()


def echo(*args: Any) -> None:
    """print() that reaches the terminal promptly under papermill and pipes."""
    print(*args, flush=True, file=sys.stdout)
