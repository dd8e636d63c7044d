"""Stage 01, the corpus: real offline sources cleaned, deduplicated and split; labelled tasks; vocabs.

Default corpus: People's Daily 1998 + MSRA NER training sentences + THUCNews headlines outside the
evaluation split + deduplicated review texts outside the evaluation split. Every task's evaluation
texts are kept out of the MLM corpus, and the manifest proves it (overlap 0).

    python -m lab.corpus --run-id X [--profile P] [-p key=value ...]
"""

from __future__ import annotations

from pathlib import Path

from datasets import Dataset, DatasetDict, Features, Sequence, Value, load_from_disk

from lab import contract
from lab.config import CorpusConfig
from lab.core import build, documents, sources, vocab
from lab.core.documents import CorpusError
from lab.core.files import hash_tree, save_dataset, sha256_file, sha256_json, write_json
from lab.core.progress import echo, tqdm
from lab.core.taskdata import SPLITS, eval_texts, prepare_tasks
from lab.core.text import Haystack, normalize, traditional_chars

TASK_SOURCES = ("reviews", "thucnews", "msra_ner", "stsb")
CORPUS_SOURCES = ("peoples_daily", "msra_ner", "thucnews", "reviews")


def run(cfg: CorpusConfig) -> dict:
    """Build the corpus, the task data and both vocabularies; returns the stage's manifest."""
    stage = STAGE.stage(cfg)
    if stage.cached:
        echo(f"corpus: cached ({stage.dir})")
        return stage.manifest

    # Everything is read and checked before the stage folder is touched.
    raw_tasks = {name: sources.load(name, cfg.cache_dir) for name in TASK_SOURCES}
    tasks, task_facts = prepare_tasks(
        raw_tasks, eval_frac=cfg.task_eval_frac, max_train=cfg.task_max_train,
        max_eval=cfg.task_max_eval,
    )  # fmt: skip
    excluded = eval_texts(tasks)
    docs, pd_blocks, gold, raw_profile_texts = collect(cfg, raw_tasks, tasks)
    full_tok = vocab.make_tokenizer(sources.load("bert_vocab", cfg.cache_dir))
    sanguo = sources.load("sanguo", cfg.cache_dir)

    work = stage.begin()
    trad = traditional_chars(set().union(*map(set, raw_profile_texts)))
    before = build.char_profile(raw_profile_texts, trad)

    # clean, cut, dedupe; then drop documents that contain any task's evaluation text
    docs, dropped = build.clean_and_dedupe(
        docs, min_chars=cfg.min_chars, max_chars=cfg.max_chars, simplified=cfg.to_simplified,
        valid_frac=cfg.valid_frac, test_frac=cfg.test_frac,
    )  # fmt: skip
    hay = Haystack([d["text"] for d in docs])
    leaked = {name: [t for t in texts if t in hay] for name, texts in excluded.items()}
    drop = {i for ts in leaked.values() for t in ts for i in hay.find_docs(t)}
    docs = [d for i, d in enumerate(docs) if i not in drop]
    hay = Haystack([d["text"] for d in docs])
    overlap = {name: sum(t in hay for t in texts) for name, texts in excluded.items()}
    assert not any(overlap.values()), f"held-out texts still in the corpus: {overlap}"

    by_split = {s: [d for d in docs if d["split"] == s] for s in SPLITS}
    texts = {s: [d["text"] for d in by_split[s]] for s in SPLITS}
    columns = ("text", "source", "doc")
    features = Features({k: Value("string") for k in columns})
    corpus = DatasetDict(
        {
            s: Dataset.from_dict({k: [d[k] for d in rows] for k in columns}, features=features)
            for s, rows in by_split.items()
        }
    )
    save_dataset(corpus, work / "corpus")
    for name, dd in tasks.items():
        save_dataset(dd, work / "tasks" / name)
    gold_features = Features(
        {"text": Value("string"), "words": Sequence(Value("string")), "tags": Sequence(Value("string"))}
    )  # fmt: skip
    gold_ds = Dataset.from_dict(
        {k: [g[k] for g in gold] for k in gold_features}, features=gold_features
    )
    save_dataset(gold_ds, work / "gold_segmentation")
    longdocs = build.long_documents(pd_blocks, sanguo, simplified=cfg.to_simplified)
    save_dataset(longdocs, work / "longdocs")

    # vocabularies
    counts = vocab.token_counts(full_tok, tqdm(texts["train"], desc="vocab counts", mininterval=2))
    compact_tok = vocab.make_tokenizer(
        vocab.compact_tokens(full_tok, counts, cfg.compact_vocab_size)
    )
    vocab.save(full_tok, work / "vocab" / "full")
    vocab.save(compact_tok, work / "vocab" / "compact")
    vocab_table = {
        "full": vocab.coverage(full_tok, texts["valid"]),
        "compact": vocab.coverage(compact_tok, texts["valid"]),
    }

    dropped["contains_task_eval_text"] = len(drop)
    stats = build.statistics(by_split, longdocs) | {
        "char_profile": {"before": before, "after": build.char_profile(texts["train"], trad)},
        "dropped": dropped,
        "eval_texts_found_before_removal": {k: len(v) for k, v in leaked.items()},
        "heldout_overlap": overlap,
        "vocab": vocab_table,
        "tasks": {name: {s: len(dd[s]) for s in SPLITS} for name, dd in tasks.items()},
        "task_cleaning": task_facts,
        "licences": {name: src.licence for name, src in sources.REGISTRY.items()},
    }
    write_json(work / "stats.json", stats)

    metrics = {
        "chars": {s: sum(map(len, texts[s])) for s in SPLITS},
        "documents": {s: len(corpus[s]) for s in SPLITS},
        "chars_per_source": stats["per_source"]["chars"],
        "heldout_overlap": overlap,
        "docs_dropped_for_eval_texts": len(drop),
        "vocab": vocab_table,
        "tasks": stats["tasks"],
        "longdocs": {s: len(longdocs[s]) for s in longdocs},
    }
    outputs = {
        "corpus": "corpus", "tasks": "tasks", "gold_segmentation": "gold_segmentation",
        "longdocs": "longdocs", "vocab_full": "vocab/full", "vocab_compact": "vocab/compact",
        "stats": "stats.json",
    }  # fmt: skip
    return stage.finish(outputs, metrics)


def collect(cfg: CorpusConfig, raw_tasks: dict, tasks: dict[str, DatasetDict]):
    """Raw documents of every corpus source, with their split; People's Daily grouped in blocks,
    its held-out paragraphs kept with their gold words; and texts for the character profile."""
    docs: list[dict] = []
    pd_blocks: list[dict] = []
    gold: list[dict] = []
    profile_texts: list[str] = []
    heldout = {
        "msra_ner": {"".join(t) for s in ("valid", "test") for t in tasks["msra_ner"][s]["tokens"]},
        "thucnews": {t for s in ("valid", "test") for t in tasks["thucnews"][s]["text"]},
        "reviews": {t for s in ("valid", "test") for t in tasks["sentiment"][s]["text"]},
    }  # each task's evaluation texts stay out of the source they came from
    for name in cfg.sources:
        if name == "peoples_daily":
            paragraphs = sources.load(name, cfg.cache_dir)
            if cfg.max_docs_per_source:
                paragraphs = paragraphs[: cfg.max_docs_per_source]
            profile_texts += ["".join(w for w, _ in p) for p in paragraphs]
            pd_blocks = build.pd_blocks(
                paragraphs, block_chars=cfg.long_doc_chars, simplified=cfg.to_simplified
            )
            keys = ["\n".join(b["texts"]) for b in pd_blocks]
            splits = build.block_splits(keys, cfg.valid_frac, cfg.test_frac)
            for b, (block, split) in enumerate(zip(pd_blocks, splits)):
                block["split"] = split
                for text, words, tags in zip(block["texts"], block["words"], block["tags"]):
                    docs.append({"text": text, "source": name, "doc": f"pd-{b}", "split": split})
                    if split != "train":
                        gold.append({"text": text, "words": words, "tags": tags})
            continue
        if name == "msra_ner":
            texts = ["".join(c) for c, _ in raw_tasks["msra_ner"]["train"]]
        elif name == "thucnews":
            texts = [t for _, t in raw_tasks["thucnews"]]
        elif name == "reviews":
            texts = raw_tasks["reviews"]["pos"] + raw_tasks["reviews"]["neg"]
        elif name in sources.REGISTRY:
            raise CorpusError(
                f"source {name!r} holds no corpus text (it feeds tasks, long documents or the vocab); "
                f"corpus sources are: {', '.join(CORPUS_SOURCES)}, or your own files"
            )
        else:
            texts = documents.read_user_source(name, cfg.text_encoding)
            documents.check_chinese(name, texts)
        profile_texts += texts if name in sources.REGISTRY else texts[:50000]
        if name == "thucnews":  # a headline with U+FFFD lost a character
            texts = [t for t in texts if "\ufffd" not in t]
        if name in heldout:
            texts = [t for t in texts if normalize(t) not in heldout[name]]
        if cfg.max_docs_per_source:
            texts = texts[: cfg.max_docs_per_source]
        docs += [
            {"text": t, "source": name, "doc": f"{name}-{i}", "split": None}
            for i, t in enumerate(texts)
        ]
    return docs, pd_blocks, gold, profile_texts


def user_sources(cfg: CorpusConfig) -> dict[str, str]:
    """sha256 of every input: pinned archives by their registry hash, user files by content."""
    needed = set(cfg.sources) | {*TASK_SOURCES, "sanguo", "bert_vocab"}
    out = {}
    for name in sorted(needed):
        if name in sources.REGISTRY:
            out[name] = sources.REGISTRY[name].archive.sha256
            continue
        path = Path(name).expanduser()
        if path.is_file():
            out[name] = sha256_file(path)
        elif path.is_dir():
            out[name] = sha256_json(hash_tree(path))
        elif "/" in name and not name.startswith((".", "/", "~")):
            out[name] = f"hub:{name}"
        else:
            raise CorpusError(sources.unknown_source(name))
    return out


def samples(manifest: dict, per_source: int = 2, width: int = 120) -> list[dict]:
    """The first `per_source` training documents of each source (for the report)."""
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


STAGE = contract.Contract(
    name="corpus",
    notebook="01_corpus.ipynb",
    description="cleaned, deduplicated, split corpus; labelled tasks; long documents; vocabularies",
    upstream=(),
    headline=headline,
    describe=describe,
    sources=user_sources,
)


def main(argv: list[str] | None = None) -> int:
    return contract.main(STAGE, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
