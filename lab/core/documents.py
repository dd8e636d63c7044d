"""A researcher's own text, read lazily: text files (one document a line, or blank-line-separated
paragraphs), jsonl with a `text` field, a saved `datasets` folder, or a hub dataset (streamed).

`plan` checks a source before any heavy work (it exists, is not empty, compressed or binary, decodes,
has no line too long to be one document, is Chinese) and cuts it into parts that worker processes
read side by side; `read` yields one part's documents without holding the file in memory.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np

from lab.core import sources
from lab.core.errors import LabError
from lab.core.text import is_cjk, normalize

MAX_LINE_CHARS = 1_000_000  # a "line" longer than this is not one document
MIN_CJK_SHARE = 0.2  # a source with fewer Chinese characters than this is refused
SAMPLE_BYTES = 4 << 20  # the start of a file that decides paragraph mode and is test-decoded
MIN_PART_BYTES = 1 << 20  # a text file is cut into parts no smaller than this
CHECK_DOCS = 20_000  # documents of a source sampled for the share of Chinese characters


class CorpusError(LabError, ValueError):
    """A corpus source is unusable; the message names the file and the fix."""


@dataclass(frozen=True)
class Part:
    """A piece of one source that one worker reads."""

    source: str  # the source as the user named it
    kind: str  # "text" | "jsonl" | "datasets" | "hub" | "list"
    path: str = ""
    start: int = 0  # first byte (text, jsonl) or row (datasets)
    end: int = -1  # end byte or row, exclusive; -1: to the end
    index: int = 0  # the part's number within its source (it names the documents)
    first_line: int = 1  # number of the part's first line, for error messages
    paragraphs: bool = False  # documents are paragraphs separated by blank lines
    encoding: str = "utf-8"
    split: str = ""  # a datasets folder's split
    texts: tuple = ()  # kind "list": the documents
    fixed: tuple = ()  # kind "list": each document's split ("" where it goes by hash)
    names: tuple = ()  # kind "list": each document's id


def parts_of(
    spec: str, encoding: str = "utf-8", *, parts: int = 8, cap: bool = False
) -> list[Part]:
    """A user source checked and cut into about `parts` parts (one part when `cap` is set: a source
    capped at its first documents is read in order)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        parts = _plan_datasets(spec, path, 1 if cap else parts)
    elif path.is_file():
        parts = _plan_file(spec, path, encoding, 1 if cap else parts)
    elif "/" in spec and not spec.startswith((".", "/", "~")):
        parts = [_plan_hub(spec)]
    else:
        raise CorpusError(sources.unknown_source(spec))
    check_chinese(spec, [text for _, text, _ in islice(read(parts[0]), CHECK_DOCS)])
    return parts


def estimate_chars(spec: str, encoding: str = "utf-8") -> int | None:
    """A user source's characters without reading all of it (None for a hub dataset)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        import pyarrow.compute as pc
        from datasets import DatasetDict, load_from_disk

        ds = load_from_disk(str(path))
        parts = ds.values() if isinstance(ds, DatasetDict) else [ds]
        return sum(pc.sum(pc.utf8_length(p.data.table.column("text"))).as_py() or 0 for p in parts)
    if path.is_file():
        with open(path, "rb") as f:
            head = f.read(SAMPLE_BYTES)
        chars = len(head.decode(_encoding(encoding), "replace"))
        return round(path.stat().st_size * chars / max(1, len(head)))
    return None


def read(part: Part) -> Iterator[tuple[str, str, str]]:
    """(document id, text, fixed split or "") for each document of a part, lazily."""
    if part.kind == "list":
        yield from zip(part.names, part.texts, part.fixed or [""] * len(part.texts))
        return
    name = Path(part.source).name
    if part.kind == "datasets":
        texts = _datasets_texts(part)
    elif part.kind == "hub":
        texts = _hub_texts(part)
    elif part.kind == "jsonl":
        texts = _jsonl_texts(part)
    else:
        texts = _text_documents(part)
    for i, text in enumerate(texts):
        yield f"{name}:{part.index}-{i}", text, ""


def read_user_source(spec: str, encoding: str = "utf-8") -> list[str]:
    """Every document of a user source (small sources and tests; the corpus stage streams)."""
    return [text for part in parts_of(spec, encoding) for _, text, _ in read(part)]


def check_chinese(name: str, texts: list[str]) -> None:
    sample = "".join(normalize(t) for t in texts[:CHECK_DOCS])
    if not sample:
        raise CorpusError(f"{name}: no text is left after cleaning (control characters only?)")
    share = sum(map(is_cjk, sample)) / len(sample)
    if share < MIN_CJK_SHARE:
        raise CorpusError(
            f"{name}: only {share:.1%} of its characters are Chinese after cleaning (the lab pretrains "
            f"Chinese models and needs at least {MIN_CJK_SHARE:.0%}). Check that this is the file you "
            "meant, or mix it with a Chinese source."
        )


# ---------------------------------------------------------------------------------------------
# text and jsonl files


def _plan_file(spec: str, path: Path, encoding: str, n_parts: int) -> list[Part]:
    encoding = _encoding(encoding)
    with open(path, "rb") as f:
        head = f.read(SAMPLE_BYTES)
    _check_bytes(path, head, encoding)
    kind = "jsonl" if path.suffix == ".jsonl" else "text"
    if not _ascii_compatible(encoding):  # UTF-16/32: one part, read through a decoder
        sample = head.decode(encoding, "replace")
        return [Part(spec, kind, str(path), encoding=encoding, paragraphs=_paragraphs(sample))]
    sample = head[: head.rfind(b"\n") + 1] if len(head) == SAMPLE_BYTES else head
    paragraphs = kind == "text" and _paragraphs(_decode(path, sample, encoding, 0))
    size = path.stat().st_size
    bounds = _part_bounds(path, size, paragraphs, max(MIN_PART_BYTES, -(-size // n_parts)))
    first_lines, longest, blank = _scan(path, encoding, bounds)
    if blank:
        raise CorpusError(f"{path} is empty: give a file with one document a line")
    if longest > MAX_LINE_CHARS:
        raise CorpusError(
            f"{path} has a line of {longest:,} characters: the lab reads one document a line "
            "(or paragraphs separated by blank lines). Break the text into lines or paragraphs."
        )
    ends = [*bounds[1:], size]
    return [
        Part(
            spec,
            kind,
            str(path),
            start=a,
            end=b,
            index=i,
            first_line=first_lines[i],
            paragraphs=paragraphs,
            encoding=encoding,
        )  # fmt: skip
        for i, (a, b) in enumerate(zip(bounds, ends))
    ]


def _encoding(name: str) -> str:
    try:
        codec = codecs.lookup(name).name
    except LookupError:
        raise CorpusError(
            f"corpus.text_encoding = {name!r} is not an encoding Python knows"
        ) from None
    return "utf-8-sig" if codec == "utf-8" else codec  # a UTF-8 byte-order mark is dropped


def _ascii_compatible(encoding: str) -> bool:
    """A newline is the byte 0x0A and no other character contains it: lines split as bytes."""
    encoding = "utf-8" if encoding == "utf-8-sig" else encoding
    return "\n".encode(encoding) == b"\n" and b"\n" not in "中文".encode(encoding)


def _check_bytes(path: Path, head: bytes, encoding: str) -> None:
    if head[:2] == b"\x1f\x8b":
        raise CorpusError(f"{path} is gzip-compressed: decompress it first (gunzip -k {path})")
    if head[:4] == b"PK\x03\x04" or head[:6] == b"7z\xbc\xaf\x27\x1c":
        raise CorpusError(f"{path} is an archive (zip/7z): extract the text file and pass that")
    utf16 = head[:2] in (b"\xff\xfe", b"\xfe\xff")
    if utf16 and encoding.startswith("utf-8"):
        raise CorpusError(
            f"{path} is UTF-16 (it starts with a UTF-16 byte-order mark). "
            f"Pass -p corpus.text_encoding=utf-16, or convert it: iconv -f utf-16 -t utf-8 {path}"
        )
    if not utf16 and b"\x00" in head[:65536]:
        raise CorpusError(
            f"{path} looks binary (it holds NUL bytes) and is not a text file; "
            "give a UTF-8 text file, a .jsonl file or a saved datasets folder"
        )
    if not head.strip():
        raise CorpusError(f"{path} is empty: give a file with one document a line")


def _decode(path: Path, raw: bytes, encoding: str, offset: int, line: int | None = None) -> str:
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as err:
        hint = " Pass its encoding with -p corpus.text_encoding=..."
        try:
            guess = raw.decode("gb18030")
            if sum(map(is_cjk, guess[:5000])) > 0.3 * min(len(guess), 5000):
                hint = (
                    " It decodes cleanly as GBK/GB18030, a common Chinese encoding: pass "
                    f"-p corpus.text_encoding=gb18030, or convert it: iconv -f gb18030 -t utf-8 {path}"
                )
        except UnicodeDecodeError:
            pass
        line = line or raw[: err.start].count(b"\n") + 1
        name = encoding.removesuffix("-sig")
        raise CorpusError(
            f"{path} is not valid {name} (byte {offset + err.start:,}, line {line:,}).{hint}"
        ) from None


def _scan(path: Path, encoding: str, bounds: list[int], chunk: int = 16 << 20):
    """One pass over the bytes, a chunk at a time: the line number at each part bound, the longest
    line in characters, and whether the file holds only whitespace."""
    before = np.zeros(len(bounds), dtype=np.int64)  # newlines before each bound
    marks = np.asarray(bounds, dtype=np.int64)
    longest, longest_at, run_start, pos, blank = 0, 0, 0, 0, True
    with open(path, "rb") as f:
        while block := f.read(chunk):
            blank = blank and not block.strip()
            nl = pos + np.flatnonzero(np.frombuffer(block, np.uint8) == 10)
            before += np.searchsorted(nl, marks)
            starts = np.concatenate([[run_start], nl + 1])
            ends = np.concatenate([nl, [pos + len(block)]])
            k = int((ends - starts).argmax())
            if ends[k] - starts[k] > longest:
                longest, longest_at = int(ends[k] - starts[k]), int(starts[k])
            run_start = int(starts[-1])
            pos += len(block)
    if longest > MAX_LINE_CHARS:  # bytes overcount characters: decode that line to know
        with open(path, "rb") as f:
            f.seek(longest_at)
            longest = len(f.read(longest).decode(encoding, "replace"))
    return (before + 1).tolist(), longest, blank


def _paragraphs(sample: str) -> bool:
    """Blank lines between documents (in the first SAMPLE_BYTES) mean paragraph mode."""
    return "\n\n" in re.sub(r"\n[ \t\r]*\n", "\n\n", sample.replace("\r\n", "\n")).strip()


def _part_bounds(path: Path, size: int, paragraphs: bool, step: int) -> list[int]:
    """Byte offsets where parts start: about every `step` bytes, moved forward to a line start (a
    blank line, in paragraph mode)."""
    bounds = [0]
    sep = b"\n\n" if paragraphs else b"\n"
    with open(path, "rb") as f:
        for approx in range(step, size, step):
            if approx <= bounds[-1]:
                continue
            f.seek(approx)
            at = f.read(1 << 20).find(sep)
            if at >= 0 and approx + at + len(sep) < size:
                bounds.append(approx + at + len(sep))
    return bounds


def _raw_lines(part: Part) -> Iterator[tuple[int, str]]:
    """(line number, line without its newline) of a part, decoded one line at a time."""
    path = Path(part.path)
    if not _ascii_compatible(part.encoding):
        with open(path, encoding=part.encoding, newline="") as f:
            for n, line in enumerate(f, part.first_line):
                yield n, line.rstrip("\r\n")
        return
    end = part.end if part.end >= 0 else float("inf")
    with open(path, "rb") as f:
        f.seek(part.start)
        pos, n = part.start, part.first_line
        for raw in f:
            if pos >= end:
                break
            yield n, _decode(path, raw, part.encoding, pos, n).rstrip("\r\n")
            pos += len(raw)
            n += 1


def _text_documents(part: Part) -> Iterator[str]:
    if not part.paragraphs:
        for _, line in _raw_lines(part):
            for doc in line.split("\r"):  # a lone carriage return also ends a line
                if doc.strip():
                    yield doc
        return
    para: list[str] = []
    for _, line in _raw_lines(part):
        if line.strip():
            para.append(line.strip())
        elif para:
            yield " ".join(para)
            para = []
    if para:
        yield " ".join(para)


def _jsonl_texts(part: Part) -> Iterator[str]:
    path = part.path
    found = False
    for n, line in _raw_lines(part):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise CorpusError(
                f"{path} line {n} is not JSON ({err.msg}); one JSON object a line"
            ) from None
        if not isinstance(row, dict) or "text" not in row:
            raise CorpusError(
                f'{path} line {n} has no "text" field; each line needs {{"text": "..."}}'
            )
        if not isinstance(row["text"], str):
            raise CorpusError(
                f'{path} line {n}: "text" is {type(row["text"]).__name__}, not a string'
            )
        found = True
        yield row["text"]
    if not found and part.index == 0:
        raise CorpusError(f"{path} holds no JSON lines with text")


# ---------------------------------------------------------------------------------------------
# saved datasets folders and hub datasets


def _plan_datasets(spec: str, path: Path, n_parts: int) -> list[Part]:
    from datasets import DatasetDict, Value, load_from_disk

    try:
        ds = load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as err:
        raise CorpusError(
            f"{path} is a folder but not a saved `datasets` dataset ({err}); save one with "
            "Dataset.save_to_disk, or pass a .txt / .jsonl file"
        ) from None
    splits = ds.items() if isinstance(ds, DatasetDict) else [("", ds)]
    parts = []
    for split, part in splits:
        if "text" not in part.column_names:
            raise CorpusError(
                f"{path} has columns {part.column_names}; the corpus needs a 'text' column of "
                "strings (e.g. ds.rename_column('content', 'text'))"
            )
        if part.features["text"] != Value("string"):
            raise CorpusError(f"{path}: column 'text' is {part.features['text']}, not strings")
        step = -(-len(part) // n_parts)
        for start in range(0, max(1, len(part)), max(1, step)):
            parts.append(Part(spec, "datasets", str(path), start=start, end=min(len(part), start + step),
                              index=len(parts), split=split))  # fmt: skip
    return parts


def _datasets_texts(part: Part) -> Iterator[str]:
    from datasets import load_from_disk

    ds = load_from_disk(part.path)
    ds = ds[part.split] if part.split else ds
    table = ds.data.table.slice(part.start, part.end - part.start)
    for batch in table.select(["text"]).to_batches(10_000):
        yield from (t for t in batch.column(0).to_pylist() if t)


def _plan_hub(name: str) -> Part:
    try:
        first = next(iter(_hub_dataset(name)))
    except Exception as err:  # the hub raises many kinds; all mean "not reachable / not found"
        raise CorpusError(
            f"could not load hub dataset {name!r} ({type(err).__name__}: {str(err)[:200]}). "
            "No hub is reachable offline: pass a registry name or a local file instead."
        ) from None
    if "text" not in first:
        raise CorpusError(f"hub dataset {name!r} has no 'text' column (columns: {list(first)})")
    return Part(name, "hub", name)


def _hub_dataset(name: str):
    from datasets import load_dataset

    return load_dataset(name, split="train", streaming=True)


def _hub_texts(part: Part) -> Iterator[str]:
    for row in _hub_dataset(part.path):
        if isinstance(row.get("text"), str) and row["text"]:
            yield row["text"]
