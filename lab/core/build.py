"""Building a pretraining corpus from document streams, with memory that does not grow with the corpus.

Worker processes read the parts of the sources side by side; each document is normalised, cut into
pieces at sentence ends, filtered by length, given its split by a hash of its text, checked against
the tasks' evaluation texts (`Needles`), hashed, and written to Arrow shards. The main process then
drops exact duplicates by hash (the first occurrence stays), writes each split once more, and
counts what the corpus report shows (sizes, lengths, characters) on the way.
"""

from __future__ import annotations

import hashlib
import os
import queue
import subprocess
import sys
import threading
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from lab.core.corpusstats import SPLITS, CorpusStats
from lab.core.documents import CorpusError, Part, read
from lab.core.files import read_json, write_json
from lab.core.text import (
    Needles,
    assign_split,
    bucket,
    cut,
    normalize,
    to_simplified,
)

MIN_DOCUMENTS = 50  # below this, valid and test cannot have documents of their own worth scoring
SHARD = pa.schema([("text", pa.string()), ("source", pa.string()), ("doc", pa.string()),
                   ("hash", pa.uint64()), ("order", pa.int64()), ("leak", pa.bool_())])  # fmt: skip
BATCH = 20_000  # pieces per batch through the evaluation-text check and into a shard


@dataclass(frozen=True)
class Cleaning:
    """How documents become corpus pieces."""

    min_chars: int  # shorter pieces are dropped
    max_chars: int  # longer documents are cut at sentence ends into pieces this long
    simplified: bool  # Traditional -> Simplified (OpenCC t2s)
    valid_frac: float  # share of pieces in valid, by hash of the text
    test_frac: float  # share of pieces in test, by hash of the text
    long_doc_chars: int  # a user document this long is also kept as a long document
    long_docs: int  # at most this many long documents per part
    max_docs: int = 0  # documents read per user source, its first ones (0: all)
    max_chars_read: int = 0  # characters read per user source, its first ones (0: all)
    profile_docs: int = 50_000  # documents per part whose raw characters are profiled


def piece_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def clean_part(part: Part, how: Cleaning, needles: Needles, out: Path, seq: int) -> dict:
    """One part of a source cleaned into Arrow shards (one per split); returns what it counted."""
    writers = {s: pa.ipc.new_stream(str(out / f"{s}-{seq:05d}.arrow"), SHARD) for s in SPLITS}
    rows: dict[str, list] = {"text": [], "source": [], "doc": [], "split": [], "order": []}
    raw_chars: Counter = Counter()
    dropped: Counter = Counter()
    found: set[int] = set()
    near_found: set[int] = set()
    longdocs: list[dict] = []
    docs = pieces = 0

    def flush():
        hits = needles.find(rows["text"])
        for ids in hits.values():
            found.update(ids)
        near = needles.near(rows["text"])
        for ids in near.values():
            near_found.update(ids)
        hits = {**near, **hits}
        for s in SPLITS:
            at = [i for i in range(len(rows["text"])) if rows["split"][i] == s]
            if at:
                texts = [rows["text"][i] for i in at]
                batch = {
                    "text": texts,
                    "source": [rows["source"][i] for i in at],
                    "doc": [rows["doc"][i] for i in at],
                    "hash": [piece_hash(t) for t in texts],
                    "order": [rows["order"][i] for i in at],
                    "leak": [i in hits for i in at],  # dropped after deduplication
                }
                writers[s].write_batch(pa.record_batch(batch, schema=SHARD))
        for v in rows.values():
            v.clear()

    chars_read = 0
    for doc_id, raw, fixed in read(part):
        if part.kind != "list" and (  # a capped user source is read in one part, in order
            (how.max_docs and docs >= how.max_docs)
            or (how.max_chars_read and chars_read >= how.max_chars_read)
        ):
            break
        docs += 1
        chars_read += len(raw)
        if part.kind != "list" and docs <= how.profile_docs:
            raw_chars.update(raw)
        text = normalize(raw)
        if how.simplified:
            text = to_simplified(text)
        if (
            part.kind != "list"
            and len(text) >= how.long_doc_chars
            and len(longdocs) < how.long_docs
        ):
            longdocs.append({"text": text, "source": part.source, "title": doc_id})
        for k, piece in enumerate(cut(text, how.max_chars)):
            if len(piece) < how.min_chars:
                dropped["too_short"] += 1
                continue
            rows["text"].append(piece)
            rows["source"].append(part.source)
            rows["doc"].append(doc_id if k == 0 else f"{doc_id}.{k}")
            rows["split"].append(
                fixed or assign_split(piece, how.valid_frac, how.test_frac, salt="corpus:")
            )
            rows["order"].append((seq << 40) + pieces)  # the piece's place in the whole corpus
            pieces += 1
        if len(rows["text"]) >= BATCH:
            flush()
    flush()
    for w in writers.values():
        w.close()
    for d in longdocs:  # their lines that hold an evaluation text go
        d["text"], ids = needles.scrub(d["text"])
        found.update(ids)
    return {"seq": seq, "source": part.source, "docs": docs, "raw_chars": raw_chars, "dropped": dropped,
            "found": found, "near_found": near_found, "longdocs": longdocs}  # fmt: skip


def clean_parts(parts: list[Part], how: Cleaning, needles: Needles, out: Path, *, num_proc: int,
                progress=None) -> list[dict]:  # fmt: skip
    """Every part cleaned into `out` by `num_proc` workers; their results in part order."""
    out.mkdir(parents=True, exist_ok=True)
    job = {"kind": "clean", "tasks": [asdict(p) for p in parts], "how": asdict(how),
           "needles": needles.texts, "n": needles.n, "threshold": needles.threshold}  # fmt: skip
    return _run(job, out / "clean", num_proc, progress)


def finish_shards(files: dict[str, list[Path]], keep: dict[str, list[np.ndarray]], needles: Needles,
                  out: Path, *, max_chars: int, num_proc: int) -> tuple[dict[str, list[Path]], CorpusStats, int]:  # fmt: skip
    """Every shard's kept pieces (first occurrences holding no evaluation text) written as a final
    shard (text, source, doc), counted, and checked once more against the evaluation texts, by
    `num_proc` workers. Returns the final shards per split, the statistics, and the number of
    kept pieces that held an evaluation text."""
    tasks = []
    for split in SPLITS:
        for f, mask in zip(files[split], keep[split]):
            np.save(f.with_suffix(".keep.npy"), mask)
            tasks.append(
                {"split": split, "shard": str(f), "final": str(f.with_name("final-" + f.name))}
            )
    job = {
        "kind": "finish",
        "tasks": tasks,
        "max_chars": max_chars,
        "needles": needles.texts,
        "n": needles.n,
        "threshold": needles.threshold,
    }
    results = _run(job, out / "finish", num_proc)
    stats, leaked = CorpusStats(max_chars), 0
    for r in results:
        stats.merge(CorpusStats.from_json(r["stats"], max_chars))
        leaked += r["leaked"]
    finals = {
        s: [Path(t["final"]) for t, r in zip(tasks, results) if t["split"] == s and r["rows"]]
        for s in SPLITS
    }
    return finals, stats, leaked


def _run(job: dict, folder: Path, num_proc: int, progress=None) -> list[dict]:
    """A job's tasks done by `num_proc` worker processes (`python -m lab.core.build JOB`), which
    take the tasks in turn; the tasks' results in order. The workers are fresh interpreters that
    load only this module: a forked worker would carry (and count) all its parent holds."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "job.json"
    write_json(path, job)
    report = progress or (lambda result: None)
    if num_proc <= 1:
        for seq in work(path):
            report(_result(folder, seq))
    else:
        cmd = [sys.executable, "-m", "lab.core.build", str(path)]
        workers = [
            subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(num_proc)
        ]
        lines: queue.Queue = queue.Queue()
        for w in workers:  # each worker prints the number of every task it finishes
            threading.Thread(target=_forward, args=(w.stdout, lines), daemon=True).start()
        running = len(workers)
        while running:
            line = lines.get()
            if line is None:
                running -= 1
            else:
                report(_result(folder, int(line)))
        for w in workers:
            w.wait()
        if (err := folder / "error.json").exists():
            raise CorpusError(read_json(err)["error"])
        if any(w.returncode for w in workers):
            raise RuntimeError(
                f"a corpus worker failed (exit codes {[w.returncode for w in workers]})"
            )
    return [_result(folder, seq) for seq in range(len(job["tasks"]))]


def _forward(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)  # this worker is done


def work(path: Path):
    """A worker: claim tasks not yet claimed (an exclusive create of task-N.claim), do each, write
    its result as task-N.json; yields each finished task's number."""
    job, folder = read_json(path), path.parent
    needles = Needles(job["needles"], n=job["n"], threshold=job["threshold"])
    for seq, task in enumerate(job["tasks"]):
        try:
            os.close(os.open(folder / f"task-{seq:05d}.claim", os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            continue
        try:
            if job["kind"] == "clean":
                part = Part(**{k: tuple(v) if isinstance(v, list) else v for k, v in task.items()})
                r = clean_part(part, Cleaning(**job["how"]), needles, folder.parent, seq)
                r |= {
                    "raw_chars": dict(r["raw_chars"]),
                    "found": sorted(r["found"]),
                    "near_found": sorted(r["near_found"]),
                }
            else:
                r = finish_shard(task, needles, job["max_chars"])
        except CorpusError as err:  # a file that fails half-way: the message names it
            write_json(folder / "error.json", {"error": str(err)})
            raise
        write_json(folder / f"task-{seq:05d}.json", r)
        yield seq


def _result(folder: Path, seq: int) -> dict:
    r = read_json(folder / f"task-{seq:05d}.json")
    if "raw_chars" in r:
        r |= {
            "raw_chars": Counter(r["raw_chars"]),
            "found": set(r["found"]),
            "near_found": set(r["near_found"]),
            "dropped": Counter(r["dropped"]),
        }
    return r


def finish_shard(task: dict, needles: Needles, max_chars: int) -> dict:
    shard = Path(task["shard"])
    table = _read_shard(shard)
    keep = np.load(shard.with_suffix(".keep.npy"))
    leak = table.column("leak").to_numpy(zero_copy_only=False)
    table = table.filter(pa.array(keep & ~leak)).select(["text", "source", "doc"])
    stats = CorpusStats(max_chars)
    with pa.ipc.new_stream(task["final"], table.schema) as writer:
        for batch in table.to_batches(BATCH):
            texts = batch.column("text").to_pylist()
            stats.add(task["split"], texts, batch.column("source").to_pylist())
            stats.overlap.update(i for ids in needles.find(texts).values() for i in ids)
            writer.write_batch(batch)
    return {"stats": stats.to_json(), "leaked": int((keep & leak).sum()), "rows": table.num_rows}


def _read_shard(path: Path) -> pa.Table:
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_stream(source).read_all()


def first_occurrences(files: list[Path]) -> list[np.ndarray]:
    """For the shards of every split: True where a piece's text has not occurred earlier in the
    corpus (by hash; a piece's place is its `order`). Duplicates can cross splits where a source
    fixes the split (People's Daily's blocks). Pieces holding an evaluation text count here too:
    deduplication comes first, as if the corpus were cleaned in one pass."""
    tables = [_read_shard(f).select(["hash", "order"]) for f in files]
    h = (
        np.concatenate([t.column("hash").to_numpy() for t in tables])
        if tables
        else np.zeros(0, np.uint64)
    )
    order = (
        np.concatenate([t.column("order").to_numpy() for t in tables])
        if tables
        else np.zeros(0, np.int64)
    )
    by = np.lexsort((order, h))  # by hash, then by place: the first of each run is kept
    first = np.ones(len(h), dtype=bool)
    first[1:] = h[by][1:] != h[by][:-1]
    keep = np.zeros(len(h), dtype=bool)
    keep[by[first]] = True
    return np.split(keep, np.cumsum([t.num_rows for t in tables])[:-1])


def too_small(counts: dict[str, int], read: int, dropped: dict) -> None:
    """Refuse a corpus with fewer than MIN_DOCUMENTS pieces, naming the counts and the fix."""
    total = sum(counts.values())
    if total < MIN_DOCUMENTS:
        raise CorpusError(
            f"the corpus has {total:,} documents after cleaning and deduplication ({read:,} read; "
            f"dropped: {dropped.get('too_short', 0):,} shorter than corpus.min_chars, "
            f"{dropped.get('duplicate', 0):,} duplicates, {dropped.get('contains_task_eval_text', 0):,} "
            f"holding a task's evaluation text). The lab needs at least {MIN_DOCUMENTS}, so that valid "
            "and test have documents of their own: add text (one document a line), or lower "
            "corpus.min_chars."
        )


def fill_empty_splits(texts: dict[str, list[str]]) -> dict[str, list[int]]:
    """For a small corpus whose valid or test split came out empty: the indices of the training
    pieces (lowest hash first) that move there, one to each empty split."""
    order = sorted(range(len(texts["train"])), key=lambda i: bucket("corpus:" + texts["train"][i]))
    moves, taken = {}, 0
    for split in ("valid", "test"):
        if not texts[split]:
            moves[split] = [order[taken]]
            taken += 1
    return moves


if __name__ == "__main__":  # a worker of `clean_parts` and `finish_shards`
    try:
        for seq in work(Path(sys.argv[1])):
            print(seq, flush=True)
    except CorpusError:
        sys.exit(1)
