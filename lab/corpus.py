"""Stage 01, the corpus: real offline sources (and the researcher's own text) cleaned, deduplicated
and split; labelled tasks; long documents; vocabularies.

Default corpus: People's Daily 1998 + MSRA NER training sentences + THUCNews headlines outside the
evaluation split + deduplicated review texts outside the evaluation split. Every task's evaluation
texts are kept out of the MLM corpus, and the manifest proves it (overlap 0). Sources are read as
streams by `corpus.num_proc` processes; memory does not grow with the corpus.

    python -m lab.corpus --run-id X [--profile P] [-p key=value ...]
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
from datasets import (
    Dataset,
    Features,
    Value,
    load_from_disk,
)

from lab import contract
from lab.core import build, documents, longtask, offline, sources, vocab
from lab.core.blocks import long_documents
from lab.core.corpusstats import CorpusStats, char_profile
from lab.core.files import digest_path, save_arrow_dataset, save_dataset, write_json
from lab.core.progress import echo
from lab.core.taskdata import SPLITS, eval_texts, prepare_tasks
from lab.core.text import Needles, traditional_chars
from lab.params import ConfigError, StageConfig, param


@dataclass(frozen=True)
class CorpusConfig(StageConfig):
    stage = "corpus"
    sources: list[str] = param(
        "registry names (python -m lab sources) and/or paths to .txt / .jsonl / datasets folders"
    )
    text_encoding: str = param("encoding of user text files, e.g. utf-8 or gb18030")
    max_docs_per_source: int = param("documents kept per source (0: all)", min=0)
    source_max_chars: int = param("characters read per user source, its first ones (0: all)", min=0)
    min_chars: int = param("documents shorter than this (characters) are dropped", min=1)
    max_chars: int = param(
        "longer documents are cut at sentence ends into pieces this long", min=16
    )
    long_doc_chars: int = param(
        "People's Daily paragraphs are grouped into long documents this long; a user document "
        "this long is also a long document",
        min=256,
    )
    user_long_docs: int = param("long documents kept from each part of a user source", min=0)
    to_simplified: bool = param("convert Traditional to Simplified Chinese (OpenCC t2s)")
    valid_frac: float = param(
        "share of documents in the valid split (by hash of the text)", min=0.0
    )
    test_frac: float = param("share of documents in the test split (by hash of the text)", min=0.0)
    task_eval_frac: float = param(
        "share of each labelled task in its valid and in its test split", min=0.0
    )
    task_max_train: int = param("training examples kept per labelled task (0: all)", min=0)
    task_max_eval: int = param("valid / test examples kept per labelled task (0: all)", min=0)
    compact_vocab_size: int = param(
        "size of the compact CLUE-style vocab built from the corpus", min=200
    )
    num_proc: int = param("processes that clean the sources side by side", min=1)
    longdoc_chars: int = param(
        "characters of each long-document task document (a 三国演义 stretch with one THUCNews headline)",
        min=256,
    )
    longdoc_examples: list[int] = param(
        "long-document task documents: [train, valid and test each]", min=0
    )
    near_dup_threshold: float = param(
        "a document that holds this share of a task's valid / test text's character 5-grams (letters "
        "only) nearly contains it and is dropped (0: exact copies only)",
        min=0.0,
    )
    cache_dir: str = param("sources cache; empty: $ZH_MINILAB_CACHE or ~/.cache/zh-minilab")

    def check(self):
        if self.valid_frac + self.test_frac >= 0.5:
            raise ConfigError(
                f"corpus.valid_frac + corpus.test_frac = {self.valid_frac + self.test_frac:g}: "
                "keep the held-out share below 0.5"
            )
        if 2 * self.task_eval_frac >= 0.8:
            raise self.fail("task_eval_frac", "keep it below 0.4 (valid and test each)")
        if self.min_chars >= self.max_chars:
            raise ConfigError(
                f"corpus.min_chars ({self.min_chars}) must be below corpus.max_chars ({self.max_chars})"
            )
        if not self.sources:
            raise ConfigError("corpus.sources is empty: name at least one source")
        if len(self.longdoc_examples) != 2:
            raise self.fail(
                "longdoc_examples", "give [train, valid and test each], e.g. [400, 200]"
            )
        if self.near_dup_threshold > 1:
            raise self.fail("near_dup_threshold", "a share of the text's 5-grams, between 0 and 1")
        super().check()


@contract.locked
def run(cfg: CorpusConfig) -> dict:
    """Build the corpus, the task data and both vocabularies; returns the stage's manifest."""
    stage = STAGE.stage(cfg)
    if stage.cached:
        echo(f"corpus: cached ({stage.dir})")
        return stage.manifest

    # Everything is read and checked before the stage folder is touched.
    raw_tasks = {name: sources.load(name, cfg.cache_dir) for name in offline.TASK_SOURCES}
    tasks, task_facts = prepare_tasks(
        raw_tasks, eval_frac=cfg.task_eval_frac, max_train=cfg.task_max_train,
        max_eval=cfg.task_max_eval,
    )  # fmt: skip
    excluded = eval_texts(tasks)
    owner = [name for name, texts in excluded.items() for _ in texts]
    needles = Needles(
        [t for texts in excluded.values() for t in texts], threshold=cfg.near_dup_threshold
    )
    blocks = offline.people_daily_blocks(
        cfg.cache_dir, max_docs=cfg.max_docs_per_source, block_chars=cfg.long_doc_chars,
        simplified=cfg.to_simplified, valid_frac=cfg.valid_frac, test_frac=cfg.test_frac,
    )  # fmt: skip
    parts = offline.registry_parts(
        cfg.sources, raw_tasks, tasks, blocks, max_docs=cfg.max_docs_per_source
    )
    for spec in (s for s in cfg.sources if s not in sources.REGISTRY):
        capped = bool(cfg.max_docs_per_source or cfg.source_max_chars)
        parts += documents.parts_of(spec, cfg.text_encoding, parts=4 * cfg.num_proc, cap=capped)
    full_tok = vocab.make_tokenizer(sources.load("bert_vocab", cfg.cache_dir))
    sanguo = sources.load("sanguo", cfg.cache_dir)

    work = stage.begin()
    t0 = time.time()
    how = build.Cleaning(
        min_chars=cfg.min_chars, max_chars=cfg.max_chars, simplified=cfg.to_simplified,
        valid_frac=cfg.valid_frac, test_frac=cfg.test_frac, long_doc_chars=cfg.long_doc_chars,
        long_docs=cfg.user_long_docs, max_docs=cfg.max_docs_per_source, max_chars_read=cfg.source_max_chars,
    )  # fmt: skip
    docs_read = Counter()

    def progress(r: dict) -> None:
        docs_read[r["source"]] += r["docs"]
        echo(f"  cleaned {r['source']} part {r['seq'] + 1}/{len(parts)}: {r['docs']:,} documents "
             f"({time.time() - t0:.0f}s)")  # fmt: skip

    shards = work / "tmp"
    results = build.clean_parts(
        parts, how, needles, shards, num_proc=cfg.num_proc, progress=progress
    )
    dropped = sum((r["dropped"] for r in results), Counter())
    files = {s: sorted(shards.glob(f"{s}-*.arrow")) for s in SPLITS}
    keep = build.first_occurrences([f for s in SPLITS for f in files[s]])
    dropped["duplicate"] += int(sum(len(k) - k.sum() for k in keep))
    masks = {}
    for s in SPLITS:
        masks[s], keep = keep[: len(files[s])], keep[len(files[s]) :]
    finals, stats, leaked = build.finish_shards(files, masks, needles, shards, max_chars=cfg.max_chars,
                                                num_proc=cfg.num_proc)  # fmt: skip
    dropped["contains_task_eval_text"] += leaked
    counts = stats.summary()["splits"]
    build.too_small({s: counts[s]["documents"] for s in SPLITS}, sum(docs_read.values()), dropped)
    if not all(counts[s]["documents"] for s in SPLITS):  # a small corpus: one piece each
        finals, stats = rebalance(finals, shards, needles, cfg.max_chars)
    echo(f"cleaned {sum(docs_read.values()):,} documents in {time.time() - t0:.0f}s: "
         + ", ".join(f"{s} {stats.summary()['splits'][s]['documents']:,}" for s in SPLITS))  # fmt: skip

    features = Features({k: Value("string") for k in ("text", "source", "doc")})
    save_arrow_dataset(work / "corpus", finals, features)
    for name, dd in tasks.items():
        save_dataset(dd, work / "tasks" / name)
    save_dataset(offline.gold_segmentation(blocks), work / "gold_segmentation")
    user_long = [d for r in results for d in r["longdocs"]]
    long, in_long = long_documents(
        blocks, sanguo, user_long, simplified=cfg.to_simplified, needles=needles
    )
    save_dataset(long, work / "longdocs")
    tasks["longdoc"] = longtask.build(long, tasks["thucnews"], chars=cfg.longdoc_chars,
                                      n_train=cfg.longdoc_examples[0], n_eval=cfg.longdoc_examples[1], seed=cfg.seed)  # fmt: skip
    save_dataset(tasks["longdoc"], work / "tasks" / "longdoc")
    corpus = load_from_disk(str(work / "corpus"))
    shutil.rmtree(shards, ignore_errors=True)

    # vocabularies: the full one as it is, the compact one from the training text's token counts
    counts_of = vocab.counts_from(stats.train_chars, stats.train_runs, full_tok)
    compact_tok = vocab.make_tokenizer(
        vocab.compact_tokens(full_tok, counts_of, cfg.compact_vocab_size)
    )
    vocab.save(full_tok, work / "vocab" / "full")
    vocab.save(compact_tok, work / "vocab" / "compact")
    valid = list(texts_of(corpus["valid"]))
    vocab_table = {
        "full": vocab.coverage(full_tok, valid),
        "compact": vocab.coverage(compact_tok, valid),
    }

    raw_chars = offline.registry_profile(
        cfg.sources, raw_tasks, cfg.cache_dir, max_docs=cfg.max_docs_per_source
    )
    raw_chars += sum((r["raw_chars"] for r in results), Counter())
    trad = traditional_chars(set(raw_chars) | set(stats.train_chars))
    found = {name: 0 for name in excluded}
    for i in set().union(*(r["found"] for r in results)):
        found[owner[i]] += 1
    long_found = {name: 0 for name in excluded}  # lines of long documents taken out
    for i in in_long:
        long_found[owner[i]] += 1
    near = {name: 0 for name in excluded}  # nearly contained, and not exactly
    for i in set().union(*(r["near_found"] for r in results)) - set().union(
        *(r["found"] for r in results)
    ):
        near[owner[i]] += 1
    overlap = {name: 0 for name in excluded}
    for i in stats.overlap:
        overlap[owner[i]] += 1
    assert not any(overlap.values()), f"held-out texts still in the corpus: {overlap}"
    summary = stats.summary()
    report = summary | {
        "char_profile": {
            "before": char_profile(raw_chars, trad),
            "after": char_profile(stats.train_chars, trad),
        },
        "documents_read": dict(docs_read),
        "dropped": dict(dropped),
        "eval_texts_found_before_removal": found,
        "eval_texts_nearly_found_before_removal": near,
        "eval_texts_in_long_documents_removed": long_found,
        "eval_text_check": {
            "substring_min_chars": needles.n,
            "texts_searched_as_substrings": len(needles.keys),
            "texts_matched_as_whole_documents": len(needles.short),
        },
        "heldout_overlap": overlap,
        "vocab": vocab_table,
        "tasks": {name: {s: len(dd[s]) for s in SPLITS} for name, dd in tasks.items()},
        "task_cleaning": task_facts,
        "longdocs": {
            s: {"documents": len(long[s]), "chars": sum(map(len, long[s]["text"]))} for s in long
        },
        "licences": {name: src.licence for name, src in sources.REGISTRY.items()},
    }
    write_json(work / "stats.json", report)

    metrics = {
        "chars": {s: summary["splits"][s]["chars"] for s in SPLITS},
        "documents": {s: summary["splits"][s]["documents"] for s in SPLITS},
        "chars_per_source": summary["per_source"]["chars"],
        "heldout_overlap": overlap,
        "docs_dropped_for_eval_texts": dropped["contains_task_eval_text"],
        "vocab": vocab_table,
        "tasks": report["tasks"],
        "longdocs": {s: len(long[s]) for s in long},
        "seconds_cleaning": round(time.time() - t0, 1),
    }
    outputs = {
        "corpus": "corpus", "tasks": "tasks", "gold_segmentation": "gold_segmentation",
        "longdocs": "longdocs", "vocab_full": "vocab/full", "vocab_compact": "vocab/compact",
        "stats": "stats.json",
    }  # fmt: skip
    return stage.finish(outputs, metrics)


def texts_of(ds, batch: int = 10_000):
    """A dataset's `text` column, a batch at a time (never the whole column in memory)."""
    for b in ds.data.table.select(["text"]).to_batches(batch):
        yield from b.column(0).to_pylist()


def rebalance(finals: dict[str, list[Path]], shards: Path, needles: Needles, max_chars: int):
    """A small corpus whose valid or test split came out empty: move the lowest-hash training
    piece into each empty split, rewrite the three splits and count them again."""
    tables = {s: pa.concat_tables([Dataset.from_file(str(f)).data.table for f in finals[s]])
              if finals[s] else None for s in SPLITS}  # fmt: skip
    texts = {s: tables[s].column("text").to_pylist() if tables[s] else [] for s in SPLITS}
    moves = build.fill_empty_splits(texts)
    moved = {i for rows in moves.values() for i in rows}
    new = {"train": tables["train"].take([i for i in range(len(texts["train"])) if i not in moved])}
    for s in ("valid", "test"):
        new[s] = tables["train"].take(moves[s]) if s in moves else tables[s]
    stats, out = CorpusStats(max_chars), {}
    for s in SPLITS:
        out[s] = [shards / f"balanced-{s}.arrow"]
        with pa.ipc.new_stream(str(out[s][0]), new[s].schema) as w:
            w.write_table(new[s])
        rows = new[s].to_pydict()
        stats.add(s, rows["text"], rows["source"])
        stats.overlap.update(i for ids in needles.find(rows["text"]).values() for i in ids)
    return out, stats


def user_sources(cfg: CorpusConfig) -> dict[str, str]:
    """sha256 of every input: pinned archives by their registry hash, user files by content."""
    needed = set(cfg.sources) | {*offline.TASK_SOURCES, "peoples_daily", "sanguo", "bert_vocab"}
    out = {}
    for name in sorted(needed):
        if name in sources.REGISTRY:
            out[name] = sources.REGISTRY[name].archive.sha256
        elif Path(name).expanduser().exists():
            out[name] = digest_path(Path(name))
        elif "/" in name and not name.startswith((".", "/", "~")):
            out[name] = f"hub:{name}"
        else:
            raise documents.CorpusError(sources.unknown_source(name))
    return out


def samples(manifest: dict, per_source: int = 2, width: int = 120) -> list[dict]:
    """The first `per_source` training documents of each source (for the report)."""
    train = load_from_disk(str(manifest["dir"] / "corpus"))["train"]
    seen: Counter = Counter()
    rows = []
    for batch in train.data.table.select(["text", "source"]).to_batches(10_000):
        for text, source in zip(*(c.to_pylist() for c in batch.columns)):
            if seen[source] < per_source:
                seen[source] += 1
                rows.append({"source": source, "text": text[:width]})
        if (
            len(seen) == len(manifest["metrics"]["chars_per_source"])
            and min(seen.values()) >= per_source
        ):
            break
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


STAGE = contract.Contract(
    name="corpus",
    notebook="01_corpus.ipynb",
    description="cleaned, deduplicated, split corpus; labelled tasks; long documents; vocabularies",
    params=CorpusConfig,
    upstream=(),
    headline=headline,
    sources=user_sources,
)


def main(argv: list[str] | None = None) -> int:
    return contract.main(STAGE, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
