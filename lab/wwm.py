"""Stage 02, whole-word masking: the corpus segmented into words, tokenized with word ids, packed
into full-length sequences; the segmenter scored against gold words; the masking measured.

    python -m lab.wwm --run-id X [--profile P] [-p key=value ...]
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from datasets import Features, Sequence, Value, load_from_disk

from lab import contract
from lab.core import segment, vocab
from lab.core.files import digest_path, save_arrow_dataset, sha256_json, write_json
from lab.core.masking import builtin_comparison, mask_statistics
from lab.core.progress import echo
from lab.core.wordpiece import encode, encode_corpus, flat_batches, pack_dataset
from lab.groups import MaskShares, Segmentation
from lab.params import ConfigError, StageConfig, param


@dataclass(frozen=True)
class WwmConfig(MaskShares, Segmentation, StageConfig):
    """The masking shares here are for the statistics and demos; each training stage has its own."""

    stage = "wwm"
    vocabs: list[str] = param(
        "vocabularies to tokenize with: compact, full, and tokenizer or model folders (a teacher's "
        "vocabulary of its own, packed under the folder's name)"
    )
    seq_lengths: list[int] = param("packed sequence lengths to store (tokens)", min=8)
    num_proc: int = param("processes for segmentation and tokenization", min=1)
    check_docs: int = param("documents compared with pure jieba before rjieba is trusted", min=0)
    stats_sequences: int = param("sequences sampled for the masking statistics", min=10)

    def check(self):
        if not self.vocabs:
            raise self.fail("vocabs", "give at least one: compact, full or a tokenizer folder")
        for entry in self.vocabs:
            if entry not in vocab.BUILTIN and (problem := vocab.folder_problem(entry)):
                raise self.fail("vocabs", problem)
        names = [vocab.entry_name(v) for v in self.vocabs]
        if len(set(names)) < len(names):
            raise self.fail("vocabs", f"two entries pack under one name ({names}); rename a folder")
        if not self.seq_lengths:
            raise ConfigError("wwm.seq_lengths is empty: give at least one length, e.g. [128]")
        super().check()


@contract.locked
def run(cfg: WwmConfig) -> dict:
    """Segment and tokenize the corpus, store packed sequences with word ids, measure masking."""
    stage = STAGE.stage(cfg)
    if stage.cached:
        echo(f"wwm: cached ({stage.dir})")
        return stage.manifest
    corpus_m = STAGE.upstream_manifest(cfg, "corpus")
    corpus_dir = corpus_m["dir"]
    corpus = load_from_disk(str(corpus_dir / "corpus"))
    segmenter = cfg.segmenter_obj()

    work = stage.begin()
    tok_dirs = vocab_folders(cfg, corpus_dir, work)
    t0 = time.time()
    encoded, differ = encode_corpus(
        corpus, segmenter, tok_dirs, num_proc=cfg.num_proc, check_docs=cfg.check_docs,
        tmp=work / "tmp",
    )  # fmt: skip
    echo(
        f"segmenter: {segmenter.engine} (checked on {cfg.check_docs:,} documents, {differ} differed)"
    )
    t_encode = time.time() - t0

    packed_sizes = {}
    for name in tok_dirs:
        sizes = pack_vocab(encoded, name, cfg.seq_lengths, vocab.load(tok_dirs[name]), work)
        packed_sizes |= {f"{name}/{k}": v for k, v in sizes.items()}
    tokens = {
        name: int(sum(b["lengths"].sum() for b in flat_batches(encoded["train"], [f"ids_{name}"])))
        for name in tok_dirs
    }
    n_chars = sum(corpus_m["metrics"]["chars"].values())
    gold = load_from_disk(str(corpus_dir / "gold_segmentation"))
    quality = segment.score(
        list(gold["words"]), [segmenter.cut(t) for t in gold["text"]], list(gold["tags"])
    )
    shutil.rmtree(work / "tmp", ignore_errors=True)
    stats = masking_statistics(cfg, work, tok_dirs, corpus, segmenter)
    stats["segmentation"] = quality
    write_json(work / "stats.json", stats)

    metrics = {
        "segmenter": segmenter.engine,
        "segmenter_check_differ": differ,
        "segmentation_f1": quality["f1"],
        "segmentation_precision": quality["precision"],
        "segmentation_recall": quality["recall"],
        "chars_per_second": n_chars / t_encode,
        "train_tokens": tokens,
        "packed": packed_sizes,
        "wwm_mask_rate": stats["wwm"]["mask_rate"],
        "wwm_shares": stats["wwm"]["shares"],
        "wwm_multi_token_word_share": stats["wwm"]["multi_token_word_share"],
        "token_mask_rate": stats["token"]["mask_rate"],
        "builtin_all_or_nothing": stats["builtin"]["all_or_nothing"],
        "ours_all_or_nothing": stats["ours_on_sentences"]["all_or_nothing"],
    }
    outputs = {f"packed_{v}_{L}": f"packed/{v}/{L}" for v in tok_dirs for L in cfg.seq_lengths}
    outputs |= {f"vocab_{v}": f"vocab/{v}" for v in tok_dirs if v not in vocab.BUILTIN}
    outputs["stats"] = "stats.json"
    return stage.finish(outputs, metrics)


def vocab_folders(cfg: WwmConfig, corpus_dir: Path, work: Path) -> dict[str, str]:
    """Each vocabulary's tokenizer folder by name: the run's own from the corpus stage, a folder's
    tokenizer saved into this stage (vocab/<name>/), so what was packed stays beside its tokenizer."""
    folders = {}
    for entry in cfg.vocabs:
        name = vocab.entry_name(entry)
        if entry in vocab.BUILTIN:
            folders[name] = str(corpus_dir / "vocab" / entry)
        else:
            vocab.load(Path(entry).expanduser()).save_pretrained(work / "vocab" / name)
            folders[name] = str(work / "vocab" / name)
    return folders


def pack_vocab(encoded: dict, name: str, lengths: list[int], tokenizer, work: Path) -> dict:
    """Every split of one vocabulary's encoding packed at every length, written batch by batch as
    Arrow files that become the stored datasets (packed/<vocab>/<length>/); their sizes."""
    specials = dict(cls_id=tokenizer.cls_token_id, sep_id=tokenizer.sep_token_id, pad_id=tokenizer.pad_token_id)  # fmt: skip
    feats = {
        L: Features({k: Sequence(Value("int32"), length=L) for k in ("input_ids", "word_ids")})
        for L in lengths
    }
    files = {L: {} for L in lengths}
    sizes = {}
    for split, ds in encoded.items():
        paths = {L: work / "tmp" / f"packed-{name}-{L}-{split}.arrow" for L in lengths}
        writers = {L: pa.ipc.new_stream(str(paths[L]), feats[L].arrow_schema) for L in lengths}
        counts = {L: {"sequences": 0, "tokens": 0} for L in lengths}
        for packed in pack_dataset(ds, name, lengths, **specials):
            for L, (x, w) in packed.items():
                if len(x):
                    columns = [
                        pa.FixedSizeListArray.from_arrays(pa.array(a.ravel()), L) for a in (x, w)
                    ]
                    writers[L].write_batch(pa.record_batch(columns, schema=feats[L].arrow_schema))
                counts[L]["sequences"] += len(x)
                counts[L]["tokens"] += int((x != tokenizer.pad_token_id).sum())
        for L in lengths:
            writers[L].close()
            files[L][split] = [paths[L]]
            sizes[f"{L}/{split}"] = counts[L]
    for L in lengths:
        save_arrow_dataset(work / "packed" / name / str(L), files[L], feats[L])
    return sizes


def masking_statistics(cfg: WwmConfig, work: Path, tok_dirs: dict, corpus, segmenter) -> dict:
    """The lab's whole-word and token masking on the valid split (shortest length, first vocab),
    and on whole valid sentences next to transformers' own `whole_word_mask=True`."""
    first = next(iter(tok_dirs))
    tokenizer = vocab.load(tok_dirs[first])
    valid = load_from_disk(str(work / "packed" / first / str(min(cfg.seq_lengths)) / "valid"))
    examples = [valid[i] for i in range(min(cfg.stats_sequences, len(valid)))]
    words, tokens = (
        cfg.mask_rule(whole_word=w).collator(tokenizer, cfg.seed) for w in (True, False)
    )
    stats = {"wwm": mask_statistics(words, examples), "token": mask_statistics(tokens, examples)}
    sentences = [t for t in corpus["valid"]["text"] if 10 <= len(t) <= 120][: cfg.stats_sequences]
    ours = mask_statistics(
        cfg.mask_rule().collator(tokenizer, cfg.seed),
        encode(sentences, tokenizer, segmenter=segmenter),
    )
    stats["builtin"] = builtin_comparison(
        tokenizer, sentences, mlm_probability=cfg.mlm_probability, seed=cfg.seed
    )
    rates = np.asarray(ours["per_sequence_rate"])
    stats["ours_on_sentences"] = {
        "all_or_nothing": float(((rates >= 0.999) | (rates == 0)).mean()),
        "mean_mask_rate": float(rates.mean()),
        "per_sequence_rate": ours["per_sequence_rate"],
        "shares": ours["shares"],
    }
    return stats


def user_inputs(cfg: WwmConfig) -> dict[str, str]:
    """The user's files this stage reads: a user dictionary, tokenizer folders (their tokenizer files)."""
    digests = {"user_dict": digest_path(Path(cfg.user_dict))} if cfg.user_dict else {}
    for entry in cfg.vocabs:
        if entry not in vocab.BUILTIN:
            files = [Path(entry).expanduser() / f for f in vocab.TOKENIZER_FILES]
            digests[f"vocab {entry}"] = sha256_json([digest_path(f) for f in files if f.is_file()])
    return digests


def headline(manifest: dict) -> dict:
    m = manifest["metrics"]
    return {
        "segmentation F1 (gold PD)": f"{m['segmentation_f1']:.3f}",
        "WWM mask rate": f"{m['wwm_mask_rate']:.1%}",
        "[MASK]/random/kept": " / ".join(
            f"{m['wwm_shares'][k]:.0%}" for k in ("mask", "random", "kept")
        ),
        "transformers WWM all-or-nothing": f"{m['builtin_all_or_nothing']:.0%}",
        "throughput": f"{m['chars_per_second'] / 1e6:.2f} M chars/s",
    }


STAGE = contract.Contract(
    name="wwm",
    notebook="02_wwm.ipynb",
    description="the corpus segmented, tokenized with word ids and packed; segmenter and masking measured",
    params=WwmConfig,
    upstream=("corpus",),
    verify=("corpus",),
    headline=headline,
    sources=user_inputs,
)


def main(argv: list[str] | None = None) -> int:
    return contract.main(STAGE, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
