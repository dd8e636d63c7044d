"""A researcher's own text: documents from text files, jsonl, a saved `datasets` folder or a hub
dataset, each checked before any heavy work so that a bad file fails with a message naming it and
the fix."""

from __future__ import annotations

import json
from pathlib import Path

from datasets import DatasetDict, Value

from lab.core import sources
from lab.core.errors import LabError
from lab.core.text import is_cjk, normalize

MAX_LINE_CHARS = 1_000_000  # a "line" longer than this is not one document
MIN_CJK_SHARE = 0.2  # a source with fewer Chinese characters than this is refused


class CorpusError(LabError, ValueError):
    """A corpus source is unusable; the message names the file and the fix."""


def read_user_source(spec: str, encoding: str = "utf-8") -> list[str]:
    """Documents from a user's file or folder (or hub dataset), checked before any heavy work."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return _read_datasets_dir(path)
    if path.is_file():
        raw = path.read_bytes()
        _check_bytes(path, raw)
        text = _decode(path, raw, encoding)
        if path.suffix == ".jsonl":
            return _parse_jsonl(path, text)
        return _parse_text(path, text)
    if "/" in spec and not spec.startswith((".", "/", "~")):
        return _read_hub(spec)
    raise CorpusError(sources.unknown_source(spec))


def _check_bytes(path: Path, raw: bytes) -> None:
    if not raw.strip():
        raise CorpusError(f"{path} is empty: give a file with one document a line")
    if raw[:2] == b"\x1f\x8b":
        raise CorpusError(f"{path} is gzip-compressed: decompress it first (gunzip -k {path})")
    if raw[:4] in (b"PK\x03\x04",) or raw[:6] == b"7z\xbc\xaf\x27\x1c":
        raise CorpusError(f"{path} is an archive (zip/7z): extract the text file and pass that")
    utf16 = raw[:2] in (b"\xff\xfe", b"\xfe\xff")
    if not utf16 and b"\x00" in raw[:65536]:
        raise CorpusError(
            f"{path} looks binary (it holds NUL bytes) and is not a text file; "
            "give a UTF-8 text file, a .jsonl file or a saved datasets folder"
        )


def _decode(path: Path, raw: bytes, encoding: str) -> str:
    if encoding.lower().replace("-", "") in ("utf8", "utf8sig") and raw[:2] in (
        b"\xff\xfe",
        b"\xfe\xff",
    ):
        raise CorpusError(
            f"{path} is UTF-16 (it starts with a UTF-16 byte-order mark). "
            f"Pass -p corpus.text_encoding=utf-16, or convert it: iconv -f utf-16 -t utf-8 {path}"
        )
    try:
        return raw.decode("utf-8-sig" if encoding.lower() in ("utf-8", "utf8") else encoding)
    except LookupError:
        raise CorpusError(
            f"corpus.text_encoding = {encoding!r} is not an encoding Python knows"
        ) from None
    except UnicodeDecodeError as err:
        hint = ""
        try:
            guess = raw.decode("gb18030")
            if sum(map(is_cjk, guess[:5000])) > 0.3 * min(len(guess), 5000):
                hint = (
                    " It decodes cleanly as GBK/GB18030, a common Chinese encoding: pass "
                    f"-p corpus.text_encoding=gb18030, or convert it: iconv -f gb18030 -t utf-8 {path}"
                )
        except UnicodeDecodeError:
            pass
        line = raw[: err.start].count(b"\n") + 1
        raise CorpusError(
            f"{path} is not valid {encoding} (byte {err.start}, line {line}).{hint or ' Pass its encoding with -p corpus.text_encoding=...'}"
        ) from None


def _parse_text(path: Path, text: str) -> list[str]:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    longest = max((len(line) for line in text.split("\n")), default=0)
    if longest > MAX_LINE_CHARS:
        raise CorpusError(
            f"{path} has a line of {longest:,} characters: the lab reads one document a line "
            "(or paragraphs separated by blank lines). Break the text into lines or paragraphs."
        )
    if "\n\n" in text.strip():  # paragraphs separated by blank lines
        blocks = [b.strip().replace("\n", " ") for b in text.split("\n\n")]
    else:
        blocks = text.split("\n")
    return [b for b in blocks if b.strip()]


def _parse_jsonl(path: Path, text: str) -> list[str]:
    docs = []
    for n, line in enumerate(text.split("\n"), 1):
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
        docs.append(row["text"])
    if not docs:
        raise CorpusError(f"{path} holds no JSON lines with text")
    return docs


def _read_datasets_dir(path: Path) -> list[str]:
    from datasets import load_from_disk

    try:
        ds = load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as err:
        raise CorpusError(
            f"{path} is a folder but not a saved `datasets` dataset ({err}); save one with "
            "Dataset.save_to_disk, or pass a .txt / .jsonl file"
        ) from None
    parts = list(ds.values()) if isinstance(ds, DatasetDict) else [ds]
    docs = []
    for part in parts:
        if "text" not in part.column_names:
            raise CorpusError(
                f"{path} has columns {part.column_names}; the corpus needs a 'text' column of "
                "strings (e.g. ds.rename_column('content', 'text'))"
            )
        if part.features["text"] != Value("string"):
            raise CorpusError(f"{path}: column 'text' is {part.features['text']}, not strings")
        docs.extend(t for t in part["text"] if t)
    return docs


def _read_hub(name: str) -> list[str]:
    from datasets import load_dataset

    try:
        ds = load_dataset(name, split="train")
    except Exception as err:  # the hub raises many kinds; all mean "not reachable / not found"
        raise CorpusError(
            f"could not load hub dataset {name!r} ({type(err).__name__}: {str(err)[:200]}). "
            "No hub is reachable offline: pass a registry name or a local file instead."
        ) from None
    if "text" not in ds.column_names:
        raise CorpusError(f"hub dataset {name!r} has no 'text' column (columns: {ds.column_names})")
    return [t for t in ds["text"] if isinstance(t, str) and t]


def check_chinese(name: str, texts: list[str]) -> None:
    sample = "".join(normalize(t) for t in texts[:20000])
    if not sample:
        raise CorpusError(f"{name}: no text is left after cleaning (control characters only?)")
    share = sum(map(is_cjk, sample)) / len(sample)
    if share < MIN_CJK_SHARE:
        raise CorpusError(
            f"{name}: only {share:.1%} of its characters are Chinese after cleaning (the lab pretrains "
            f"Chinese models and needs at least {MIN_CJK_SHARE:.0%}). Check that this is the file you "
            "meant, or mix it with a Chinese source."
        )
