"""Files written atomically, content hashes and JSON: what every artifact of the lab is made of."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

_UMASK = os.umask(0)
os.umask(_UMASK)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def hash_tree(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """sha256 of every file under `root`, by path relative to it (checkpoints excluded)."""
    out = {}
    for path in sorted(Path(root).rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and rel not in skip and not rel.startswith("checkpoints/"):
            out[rel] = sha256_file(path)
    return out


def digest_path(path: Path) -> str:
    """sha256 of a user's file, or of a folder's files (by relative path and content)."""
    path = Path(path).expanduser()
    return sha256_file(path) if path.is_file() else sha256_json(hash_tree(path))


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


def save_arrow_dataset(folder: Path, splits: dict[str, list[Path]], features) -> None:
    """A saved `datasets` DatasetDict made of Arrow stream files written elsewhere, without copying
    them: the files move in as each split's shards, and the small JSON files `load_from_disk` reads
    come from saving an empty dataset of the same features (so their format is the library's)."""
    from datasets import Dataset, DatasetDict

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    empty = Dataset.from_dict({k: [] for k in features}, features=features)
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        save_dataset(DatasetDict({s: empty for s in splits}), Path(tmp) / "template")
        os.replace(Path(tmp) / "template", folder)
    for split, files in splits.items():
        state = read_json(folder / split / "state.json")
        for old in state["_data_files"]:
            os.unlink(folder / split / old["filename"])
        names = [f"data-{k:05d}-of-{len(files):05d}.arrow" for k in range(len(files))]
        for f, name in zip(files, names):
            os.replace(f, folder / split / name)
        state["_data_files"] = [{"filename": n} for n in names]
        digest = hashlib.sha256("".join(sha256_file(folder / split / n) for n in names).encode())
        state["_fingerprint"] = digest.hexdigest()[:16]  # the same data, the same fingerprint
        write_json(folder / split / "state.json", state)


def arrow_batches(ds, columns: list[str], rows: int = 50_000):
    """A saved or mapped dataset's columns a batch at a time, read from its Arrow files rather
    than through a memory map (which would count every page it touches as this process's)."""
    import pyarrow as pa

    for f in ds.cache_files:
        with pa.OSFile(f["filename"]) as source:
            for batch in pa.ipc.open_stream(source):
                batch = batch.select(columns)
                for start in range(0, batch.num_rows, rows):
                    yield batch.slice(start, rows)
