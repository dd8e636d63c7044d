"""Stage 01, the corpus: real offline sources cleaned, deduplicated and split; labelled tasks; vocabs.

Default corpus: People's Daily 1998 + MSRA NER training sentences + THUCNews headlines outside the
evaluation split + deduplicated review texts outside the evaluation split. Every task's evaluation
texts are kept out of the MLM corpus, and the manifest proves it (overlap 0).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from datasets import Dataset, DatasetDict, Features, Sequence, Value

from lab import runs, sources, vocab
from lab.config import CorpusConfig
from lab.progress import tqdm
from lab.text import (
    FOLD,
    KEEP_FULLWIDTH,
    Haystack,
    assign_split,
    bucket,
    cut,
    is_cjk,
    normalize,
    to_simplified,
    traditional_chars,
)

SPLITS = ("train", "valid", "test")
CODE = ("corpus", "text", "sources", "vocab")  # modules whose changes rerun the stage
MAX_LINE_CHARS = 1_000_000  # a "line" longer than this is not one document
MIN_CJK_SHARE = 0.2  # a source with fewer Chinese characters than this is refused
NER_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
THUCNEWS_LABELS = [
    "education", "entertainment", "finance", "game", "politics",
    "realty", "science", "society", "sports", "stocks",
]  # fmt: skip


class CorpusError(ValueError):
    """A corpus source is unusable; the message names the file and the fix."""


# ---------------------------------------------------------------------------------------------
# user sources: text, jsonl, a saved `datasets` folder, or a hub dataset name


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


# ---------------------------------------------------------------------------------------------
# labelled tasks


def _split_by_hash(items: list, key, eval_frac: float) -> dict[str, list]:
    out = {s: [] for s in SPLITS}
    for item in items:
        out[assign_split(key(item), eval_frac, eval_frac, salt="task:")].append(item)
    return out


def _cap(rows: list, n: int, key) -> list:
    """At most `n` rows (0 = all), a hash-ordered sample so the choice is stable."""
    return rows if not n or len(rows) <= n else sorted(rows, key=lambda r: bucket(key(r)))[:n]


def prepare_tasks(cfg: CorpusConfig, raw: dict) -> tuple[dict[str, DatasetDict], dict]:
    """Fixed train/valid/test splits of every labelled task, and facts about their cleaning."""
    facts = {}
    tasks = {}

    # sentiment: dedupe, drop texts under both labels, split by hash
    labels = defaultdict(set)
    for label, texts in raw["reviews"].items():
        for t in texts:
            t = normalize(t)
            if t:
                labels[t].add(label)
    conflicting = [t for t, ls in labels.items() if len(ls) > 1]
    rows = sorted((t, 1 if "pos" in ls else 0) for t, ls in labels.items() if len(ls) == 1)
    facts["sentiment"] = {
        "raw": sum(len(v) for v in raw["reviews"].values()),
        "unique": len(labels),
        "conflicting_dropped": len(conflicting),
    }
    split = _split_by_hash(rows, lambda r: r[0], cfg.task_eval_frac)
    feats = Features({"text": Value("string"), "label": Value("int64")})
    tasks["sentiment"] = _dataset_dict(
        split, cfg, lambda r: {"text": r[0], "label": r[1]}, feats, key=lambda r: r[0]
    )

    # THUCNews headlines: drop lines with U+FFFD (a character was lost), dedupe, split by hash
    seen, rows, lost = set(), [], 0
    for label, title in raw["thucnews"]:
        if "\ufffd" in title:
            lost += 1
            continue
        title = normalize(title)
        if title and title not in seen and label in THUCNEWS_LABELS:
            seen.add(title)
            rows.append((title, THUCNEWS_LABELS.index(label)))
    facts["thucnews"] = {
        "raw": len(raw["thucnews"]),
        "replacement_char_dropped": lost,
        "unique": len(rows),
    }
    split = _split_by_hash(rows, lambda r: r[0], cfg.task_eval_frac)
    tasks["thucnews"] = _dataset_dict(
        split, cfg, lambda r: {"text": r[0], "label": r[1]}, feats, key=lambda r: r[0]
    )

    # MSRA NER: the given test set; train split by hash into train / valid; BMES -> BIO
    def ner_row(sent):
        chars, tags = sent
        # fold full-width forms character by character, so tokens and tags stay aligned
        return {"tokens": [c.translate(FOLD) for c in chars], "ner_tags": [_bio(t) for t in tags]}

    test_texts = {"".join(c) for c, _ in raw["msra_ner"]["test"]}
    train = [s for s in raw["msra_ner"]["train"] if "".join(s[0]) not in test_texts]
    facts["msra_ner"] = {"train_equal_to_test_dropped": len(raw["msra_ner"]["train"]) - len(train)}
    split = _split_by_hash(train, lambda s: "".join(s[0]), cfg.task_eval_frac / 2)
    split = {
        "train": split["train"],
        "valid": split["valid"] + split["test"],
        "test": raw["msra_ner"]["test"],
    }
    ner_feats = Features(
        {"tokens": Sequence(Value("string")), "ner_tags": Sequence(Value("string"))}
    )
    tasks["msra_ner"] = _dataset_dict(split, cfg, ner_row, ner_feats, key=lambda s: "".join(s[0]))

    # STS-B: the given splits
    sts_feats = Features(
        {"sentence1": Value("string"), "sentence2": Value("string"), "score": Value("int64")}
    )
    split = {s: raw["stsb"][{"valid": "valid"}.get(s, s)] for s in SPLITS}
    tasks["stsb"] = _dataset_dict(
        split,
        cfg,
        lambda r: {"sentence1": normalize(r[0]), "sentence2": normalize(r[1]), "score": r[2]},
        sts_feats,
        key=lambda r: r[0] + r[1],
    )
    return tasks, facts


def _bio(tag: str) -> str:
    kind, _, ent = tag.partition("-")
    if not ent:
        return "O"
    return ("B-" if kind in ("B", "S") else "I-") + ent


def _dataset_dict(split, cfg, to_row, features, key) -> DatasetDict:
    out = {}
    for name in SPLITS:
        cap = cfg.task_max_train if name == "train" else cfg.task_max_eval
        rows = [to_row(r) for r in _cap(split[name], cap, key)]
        out[name] = Dataset.from_dict(
            {k: [r[k] for r in rows] for k in features}, features=features
        )
    return DatasetDict(out)


def eval_texts(
    tasks: dict[str, DatasetDict], *, uncapped: dict | None = None
) -> dict[str, list[str]]:
    """Every task's valid and test texts: what must never be in the MLM corpus."""
    out = {}
    for name, dd in tasks.items():
        texts = []
        for s in ("valid", "test"):
            ds = dd[s]
            if "text" in ds.column_names:
                texts += list(ds["text"])
            elif "tokens" in ds.column_names:
                texts += ["".join(t) for t in ds["tokens"]]
            else:
                texts += list(ds["sentence1"]) + list(ds["sentence2"])
        out[name] = sorted(set(t for t in texts if t))
    return out


# ---------------------------------------------------------------------------------------------
# character statistics


def char_profile(texts: list[str], trad: set[str]) -> dict:
    counts = Counter()
    for t in texts:
        counts.update(t)
    total = sum(counts.values()) or 1
    fullwidth = sum(n for c, n in counts.items() if ord(c) in FOLD)  # what cleaning folds
    cjk = sum(n for c, n in counts.items() if is_cjk(c))
    control = sum(n for c, n in counts.items() if ord(c) < 32 and c not in "\n\t")
    return {
        "chars": total,
        "fullwidth_share": fullwidth / total,
        "fullwidth_punct_share": sum(counts[c] for c in KEEP_FULLWIDTH) / total,
        "traditional_share": sum(counts[c] for c in trad) / total,
        "non_cjk_share": 1 - cjk / total,
        "control_chars": control,
        "replacement_chars": counts["\ufffd"],
    }


# ---------------------------------------------------------------------------------------------
# the stage


def run(cfg: CorpusConfig) -> dict:
    """Build the corpus, the task data and both vocabularies; returns the stage's manifest."""
    stage = runs.Stage(cfg, inputs(cfg), CODE)
    if stage.cached:
        runs.echo(f"corpus: cached ({stage.dir})")
        return stage.manifest

    # Everything is read and checked before the stage folder is touched.
    raw_tasks = {
        "reviews": sources.load("reviews", cfg.cache_dir),
        "thucnews": sources.load("thucnews", cfg.cache_dir),
        "msra_ner": sources.load("msra_ner", cfg.cache_dir),
        "stsb": sources.load("stsb", cfg.cache_dir),
    }
    tasks, task_facts = prepare_tasks(cfg, raw_tasks)
    excluded = eval_texts(tasks)
    docs, pd_blocks, gold, raw_profile_texts = _collect_docs(cfg, raw_tasks, tasks)
    full_tok = vocab.make_tokenizer(sources.load("bert_vocab", cfg.cache_dir))
    sanguo = sources.load("sanguo", cfg.cache_dir)

    work = stage.begin()
    trad = traditional_chars(set().union(*map(set, raw_profile_texts)))
    before = char_profile(raw_profile_texts, trad)

    # clean, cut, dedupe; then drop documents that contain any task's evaluation text
    docs, dropped = _clean_and_dedupe(cfg, docs)
    hay = Haystack([d["text"] for d in docs])
    leaked = {name: [t for t in texts if t in hay] for name, texts in excluded.items()}
    drop = {i for ts in leaked.values() for t in ts for i in hay.find_docs(t)}
    docs = [d for i, d in enumerate(docs) if i not in drop]
    hay = Haystack([d["text"] for d in docs])
    overlap = {name: sum(t in hay for t in texts) for name, texts in excluded.items()}
    assert not any(overlap.values()), f"held-out texts still in the corpus: {overlap}"

    by_split = {s: [d for d in docs if d["split"] == s] for s in SPLITS}
    texts = {s: [d["text"] for d in by_split[s]] for s in SPLITS}
    corpus = DatasetDict(
        {
            s: Dataset.from_dict(
                {k: [d[k] for d in rows] for k in ("text", "source", "doc")},
                features=Features(
                    {"text": Value("string"), "source": Value("string"), "doc": Value("string")}
                ),
            )
            for s, rows in by_split.items()
        }
    )
    runs.save_dataset(corpus, work / "corpus")
    for name, dd in tasks.items():
        runs.save_dataset(dd, work / "tasks" / name)
    gold_features = Features(
        {
            "text": Value("string"),
            "words": Sequence(Value("string")),
            "tags": Sequence(Value("string")),
        }
    )
    gold_columns = {k: [g[k] for g in gold] for k in gold_features}
    gold_ds = Dataset.from_dict(gold_columns, features=gold_features)
    runs.save_dataset(gold_ds, work / "gold_segmentation")
    longdocs = _long_documents(cfg, pd_blocks, sanguo)
    runs.save_dataset(longdocs, work / "longdocs")

    # vocabularies
    counts = vocab.token_counts(full_tok, tqdm(texts["train"], desc="vocab counts", mininterval=2))
    compact_tok = vocab.make_tokenizer(
        vocab.compact_tokens(full_tok, counts, cfg.compact_vocab_size)
    )
    vocab.save(full_tok, work / "vocab" / "full")
    vocab.save(compact_tok, work / "vocab" / "compact")
    valid_texts = texts["valid"]
    vocab_table = {
        "full": vocab.coverage(full_tok, valid_texts),
        "compact": vocab.coverage(compact_tok, valid_texts),
    }

    after = char_profile(texts["train"], trad)
    dropped["contains_task_eval_text"] = len(drop)
    stats = _statistics(
        by_split, tasks, longdocs, before, after, dropped, vocab_table, task_facts, overlap, leaked
    )
    runs.write_json(work / "stats.json", stats)

    metrics = {
        "chars": {s: sum(map(len, texts[s])) for s in SPLITS},
        "documents": {s: len(corpus[s]) for s in SPLITS},
        "chars_per_source": stats["per_source"]["chars"],
        "heldout_overlap": overlap,
        "docs_dropped_for_eval_texts": len(drop),
        "vocab": vocab_table,
        "tasks": {name: {s: len(dd[s]) for s in SPLITS} for name, dd in tasks.items()},
        "longdocs": {s: len(longdocs[s]) for s in longdocs},
    }
    outputs = {
        "corpus": "corpus",
        "tasks": "tasks",
        "gold_segmentation": "gold_segmentation",
        "longdocs": "longdocs",
        "vocab_full": "vocab/full",
        "vocab_compact": "vocab/compact",
        "stats": "stats.json",
    }
    return stage.finish(outputs, metrics)


def inputs(cfg: CorpusConfig) -> dict[str, str]:
    """sha256 of every input: pinned archives by their registry hash, user files by content."""
    needed = set(cfg.sources) | {"reviews", "thucnews", "msra_ner", "stsb", "sanguo", "bert_vocab"}
    out = {}
    for name in sorted(needed):
        if name in sources.REGISTRY:
            out[name] = sources.REGISTRY[name].archive.sha256
            continue
        path = Path(name).expanduser()
        if path.is_file():
            out[name] = runs.sha256_file(path)
        elif path.is_dir():
            out[name] = runs.sha256_json(runs.hash_tree(path, skip=()))
        elif "/" in name and not name.startswith((".", "/", "~")):
            out[name] = f"hub:{name}"
        else:
            raise CorpusError(sources.unknown_source(name))
    return out


def samples(manifest: dict, per_source: int = 2, width: int = 120) -> list[dict]:
    """The first `per_source` training documents of each source (for the report)."""
    from datasets import load_from_disk

    train = load_from_disk(str(manifest["dir"] / "corpus"))["train"]
    seen: dict[str, int] = {}
    rows = []
    for text, source in zip(train["text"], train["source"]):
        if seen.get(source, 0) < per_source:
            seen[source] = seen.get(source, 0) + 1
            rows.append({"source": source, "text": text[:width]})
    return rows


def headline(manifest: dict) -> dict:
    m = manifest["metrics"]
    return {
        "train characters": f"{m['chars']['train']:,}",
        "documents train / valid / test": " / ".join(f"{m['documents'][s]:,}" for s in SPLITS),
        "held-out overlap": sum(m["heldout_overlap"].values()),
        "[UNK] rate full / compact": " / ".join(
            f"{m['vocab'][v]['unk_rate']:.3%}" for v in ("full", "compact")
        ),
    }


def describe(cfg: CorpusConfig) -> dict:
    return {
        "sources": ", ".join(cfg.sources),
        "documents per source": cfg.max_docs_per_source or "all",
        "splits valid / test": f"{cfg.valid_frac:.0%} / {cfg.test_frac:.0%} by hash of the text",
        "task examples train / eval": f"{cfg.task_max_train or 'all'} / {cfg.task_max_eval or 'all'}",
        "vocabularies": f"bert-base-chinese 21,128 + compact {cfg.compact_vocab_size:,}",
        "expected compute": "about a minute on 2 CPU cores for the full offline corpus",
    }


def _collect_docs(cfg: CorpusConfig, raw_tasks: dict, tasks: dict[str, DatasetDict]):
    """Raw documents of every corpus source, with their split; People's Daily grouped in blocks."""
    docs: list[dict] = []
    pd_blocks: list[dict] = []
    gold: list[dict] = []
    profile_texts: list[str] = []
    for name in cfg.sources:
        if name == "peoples_daily":
            paragraphs = sources.load(name, cfg.cache_dir)
            if cfg.max_docs_per_source:
                paragraphs = paragraphs[: cfg.max_docs_per_source]
            profile_texts += ["".join(w for w, _ in p) for p in paragraphs]
            blocks = _pd_blocks(cfg, paragraphs)
            keys = ["\n".join(b["texts"]) for b in blocks]
            for b, (block, split) in enumerate(zip(blocks, _block_splits(cfg, keys))):
                block["split"] = split
                for text, words, tags in zip(block["texts"], block["words"], block["tags"]):
                    docs.append({"text": text, "source": name, "doc": f"pd-{b}", "split": split})
                    if split != "train":
                        gold.append({"text": text, "words": words, "tags": tags})
            pd_blocks = blocks
        elif name == "msra_ner":
            heldout = {
                "".join(t) for s in ("valid", "test") for t in tasks["msra_ner"][s]["tokens"]
            }
            sents = ["".join(c) for c, _ in raw_tasks["msra_ner"]["train"]]
            profile_texts += sents
            kept = [s for s in sents if normalize(s) not in heldout]
            docs += _plain_docs(cfg, name, kept)
        elif name == "thucnews":
            # headlines outside the evaluation split: everything the task split did not hold out
            heldout = set(tasks["thucnews"]["valid"]["text"]) | set(
                tasks["thucnews"]["test"]["text"]
            )
            titles = [t for _, t in raw_tasks["thucnews"]]
            profile_texts += titles
            kept = [t for t in titles if "\ufffd" not in t and normalize(t) not in heldout]
            docs += _plain_docs(cfg, name, kept)
        elif name == "reviews":
            texts = raw_tasks["reviews"]["pos"] + raw_tasks["reviews"]["neg"]
            profile_texts += texts
            heldout = set(tasks["sentiment"]["valid"]["text"]) | set(
                tasks["sentiment"]["test"]["text"]
            )
            docs += _plain_docs(cfg, name, [t for t in texts if normalize(t) not in heldout])
        elif name in sources.REGISTRY:
            raise CorpusError(
                f"source {name!r} holds no corpus text (it feeds tasks, long documents or the vocab); "
                f"corpus sources are: peoples_daily, msra_ner, thucnews, reviews, or your own files"
            )
        else:
            texts = read_user_source(name, cfg.text_encoding)
            _check_chinese(name, texts)
            profile_texts += texts[:50000]
            docs += _plain_docs(cfg, name, texts)
    return docs, pd_blocks, gold, profile_texts


def _plain_docs(cfg: CorpusConfig, name: str, texts: list[str]) -> list[dict]:
    if cfg.max_docs_per_source:
        texts = texts[: cfg.max_docs_per_source]
    return [
        {"text": t, "source": name, "doc": f"{name}-{i}", "split": None}
        for i, t in enumerate(texts)
    ]


def _check_chinese(name: str, texts: list[str]) -> None:
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


def _block_splits(cfg: CorpusConfig, keys: list[str]) -> list[str]:
    """Splits of People's Daily blocks by hash; with 3+ blocks, valid and test get at least one
    each (the lowest-hash train blocks), so small profiles still have held-out gold segmentation."""
    splits = [assign_split(k, cfg.valid_frac, cfg.test_frac, salt="corpus:") for k in keys]
    if len(keys) >= 3:
        order = sorted(range(len(keys)), key=lambda i: bucket("corpus:" + keys[i]))
        for need in ("valid", "test"):
            if need not in splits:
                i = next(i for i in order if splits[i] == "train")
                splits[i] = need
    return splits


def _pd_blocks(cfg: CorpusConfig, paragraphs: list[list[tuple[str, str]]]) -> list[dict]:
    """Consecutive paragraphs grouped into documents of about `long_doc_chars` characters."""
    blocks, cur = [], {"texts": [], "words": [], "tags": []}
    size = 0
    for para in paragraphs:
        pairs = [(normalize(w), tag) for w, tag in para]
        pairs = [(to_simplified(w) if cfg.to_simplified else w, tag) for w, tag in pairs if w]
        text = "".join(w for w, _ in pairs)
        if not text:
            continue
        cur["texts"].append(text)
        cur["words"].append([w for w, _ in pairs])
        cur["tags"].append([t for _, t in pairs])
        size += len(text)
        if size >= cfg.long_doc_chars:
            blocks.append(cur)
            cur, size = {"texts": [], "words": [], "tags": []}, 0
    if cur["texts"]:
        blocks.append(cur)
    return blocks


def _clean_and_dedupe(cfg: CorpusConfig, docs: list[dict]) -> tuple[list[dict], dict]:
    dropped = Counter()
    seen = set()
    out = []
    for d in tqdm(docs, desc="clean", mininterval=2):
        text = d["text"] if d["source"] == "peoples_daily" else normalize(d["text"])
        if cfg.to_simplified and d["source"] != "peoples_daily":
            text = to_simplified(text)
        for i, piece in enumerate(cut(text, cfg.max_chars)):
            if len(piece) < cfg.min_chars:
                dropped["too_short"] += 1
                continue
            if piece in seen:
                dropped["duplicate"] += 1
                continue
            seen.add(piece)
            split = d["split"] or assign_split(piece, cfg.valid_frac, cfg.test_frac, salt="corpus:")
            doc = d["doc"] if i == 0 else f"{d['doc']}.{i}"
            out.append({"text": piece, "source": d["source"], "doc": doc, "split": split})
    return out, dict(dropped)


def _long_documents(cfg: CorpusConfig, pd_blocks: list[dict], sanguo: list[str]) -> DatasetDict:
    """三国演义 chapters and People's Daily blocks, held out by chapter / block."""
    rows = {"train": [], "test": []}
    for i, chapter in enumerate(sanguo):
        paragraphs = [normalize(p) for p in chapter.split("\n")]
        paragraphs = [p for p in paragraphs if p]
        title, body = paragraphs[0], "\n".join(paragraphs[1:])
        if cfg.to_simplified:
            body = to_simplified(body)
        split = "test" if assign_split(title, 0.1, 0.0, salt="longdoc:") == "valid" else "train"
        rows[split].append({"text": body, "source": "sanguo", "title": title, "index": i})
    for i, block in enumerate(pd_blocks):
        split = "train" if block["split"] == "train" else "test"
        rows[split].append(
            {
                "text": "\n".join(block["texts"]),
                "source": "peoples_daily",
                "title": f"pd-{i}",
                "index": i,
            }
        )
    feats = Features(
        {
            "text": Value("string"),
            "source": Value("string"),
            "title": Value("string"),
            "index": Value("int64"),
        }
    )
    return DatasetDict(
        {
            s: Dataset.from_dict({k: [x[k] for x in r] for k in feats}, features=feats)
            for s, r in rows.items()
        }
    )


def _statistics(
    by_split, tasks, longdocs, before, after, dropped, vocab_table, task_facts, overlap, leaked
) -> dict:
    per_source = {"chars": Counter(), "documents": Counter()}
    lengths = defaultdict(list)
    chars = Counter()
    for s in SPLITS:
        for d in by_split[s]:
            text, source = d["text"], d["source"]
            per_source["chars"][source] += len(text)
            per_source["documents"][source] += 1
            if s == "train":
                lengths[source].append(len(text))
                chars.update(text)
    hist = {}
    for source, ls in lengths.items():
        edges = np.unique(np.geomspace(1, max(ls) + 1, 40).astype(int))
        counts, edges = np.histogram(ls, bins=edges)
        hist[source] = {
            "edges": edges.tolist(),
            "counts": counts.tolist(),
            "median": float(np.median(ls)),
        }
    return {
        "per_source": {k: dict(v) for k, v in per_source.items()},
        "splits": {
            s: {"documents": len(docs), "chars": sum(len(d["text"]) for d in docs)}
            for s, docs in by_split.items()
        },
        "length_histogram": hist,
        "top_chars": chars.most_common(40),
        "distinct_chars": len(chars),
        "char_profile": {"before": before, "after": after},
        "dropped": dropped,
        "eval_texts_found_before_removal": {k: len(v) for k, v in leaked.items()},
        "heldout_overlap": overlap,
        "vocab": vocab_table,
        "tasks": {name: {s: len(dd[s]) for s in SPLITS} for name, dd in tasks.items()},
        "task_cleaning": task_facts,
        "longdocs": {
            s: {"documents": len(longdocs[s]), "chars": sum(map(len, list(longdocs[s]["text"])))}
            for s in longdocs
        },
        "licences": {
            name: sources.REGISTRY[name].licence
            for name in sources.REGISTRY
            if sources.REGISTRY[name].default
        },
    }
