"""bench wwm: the stage's segment + tokenize + word ids + packing against a `run_chinese_ref.py`-style
pipeline (jieba and the tokenizer one sentence at a time, one process), characters per second."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
from datasets import Dataset

from lab.bench import data
from lab.core import vocab, wordpiece
from lab.core.segment import Segmenter, quiet_jieba
from lab.core.text import is_cjk


def chinese_ref_baseline(
    texts: list[str], tokenizer, seq_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """The old transformers recipe (examples/research_projects/mlm_wwm/run_chinese_ref.py with
    jieba in place of LTP): one process, one sentence at a time through segmenter and tokenizer,
    Chinese words marked with `##` by longest match, word ids from those marks, packed in Python."""

    jieba = quiet_jieba()
    jieba.initialize()
    ids_stream: list[int] = []
    wid_stream: list[int] = []
    next_word = 0
    for line in texts:
        words = jieba.lcut(line)
        chinese_words = {w for w in words if len(w) > 1 and all(map(is_cjk, w))}
        ids = tokenizer(line, add_special_tokens=False)["input_ids"]
        tokens = tokenizer.convert_ids_to_tokens(ids)
        marked = _mark_subwords(list(tokens), chinese_words)
        for i, tok in enumerate(marked):
            if i == 0 or not tok.startswith("##"):  # marked Chinese subword or WordPiece piece
                next_word += 1
            ids_stream.append(ids[i])
            wid_stream.append(next_word)
        ids_stream.append(tokenizer.sep_token_id)
        wid_stream.append(-1)
        next_word += 1
    ids_stream, wid_stream = ids_stream[:-1], wid_stream[:-1]  # no separator after the last line
    room = seq_len - 2
    rows_ids, rows_wids = [], []
    for start in range(0, len(ids_stream), room):
        chunk, wchunk = ids_stream[start : start + room], wid_stream[start : start + room]
        pad = room - len(chunk)
        rows_ids.append([tokenizer.cls_token_id, *chunk, tokenizer.sep_token_id] + [0] * pad)
        rows_wids.append([-1, *wchunk, -1] + [-1] * pad)
    return np.asarray(rows_ids), np.asarray(rows_wids)


def _mark_subwords(tokens: list[str], chinese_words: set[str]) -> list[str]:
    """run_chinese_ref.py's add_sub_symbol: prefix `##` to the 2nd.. characters of known words."""
    if not chinese_words:
        return tokens
    longest = max(map(len, chinese_words))
    start = 0
    while start < len(tokens):
        step = 1
        if len(tokens[start]) == 1 and is_cjk(tokens[start]):
            for size in range(min(len(tokens) - start, longest), 1, -1):
                if "".join(tokens[start : start + size]) in chinese_words:
                    for j in range(start + 1, start + size):
                        tokens[j] = "##" + tokens[j]
                    step = size
                    break
        start += step
    return tokens


def run(*, quick: bool = False) -> dict:
    texts = data.texts(4000 if quick else 19484)
    chars = sum(map(len, texts))
    tokenizer = data.full_tokenizer()
    print(f"wwm bench: {len(texts):,} People's Daily paragraphs, {chars:,} characters", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        vocab.save(tokenizer, Path(tmp) / "vocab")
        ds = Dataset.from_dict({"text": texts})
        t0 = time.perf_counter()
        segmenter = Segmenter("jieba")
        encoded, _ = wordpiece.encode_corpus(
            {"train": ds},
            segmenter,
            {"v": str(Path(tmp) / "vocab")},
            num_proc=2,
            check_docs=2000,
            tmp=Path(tmp),
        )
        enc = encoded["train"]
        packed = wordpiece.pack_dataset(enc, "v", [128], cls_id=tokenizer.cls_token_id,
                                        sep_id=tokenizer.sep_token_id, pad_id=tokenizer.pad_token_id)  # fmt: skip
        ours_ids = np.concatenate([p[128][0] for p in packed])
        t_ours = time.perf_counter() - t0

    t0 = time.perf_counter()
    base_ids, _ = chinese_ref_baseline(texts, tokenizer, 128)
    t_base = time.perf_counter() - t0

    same_tokens = np.array_equal(ours_ids[ours_ids != 0], base_ids[base_ids != 0])
    ours, base = chars / t_ours, chars / t_base
    print(
        f"  ours     {t_ours:7.2f} s  {ours / 1e6:.3f} M chars/s  ({segmenter.engine}, 2 processes)"
    )
    print(
        f"  baseline {t_base:7.2f} s  {base / 1e6:.3f} M chars/s  (jieba + tokenizer per sentence, 1 process)"
    )
    print(f"  same token stream: {same_tokens}")
    return {
        "bench": "wwm",
        "ours": round(ours),
        "baseline": round(base),
        "unit": "chars/s",
        "ratio": round(ours / base, 2),
        "target": 8.0,
        "chars": chars,
        "same_tokens": bool(same_tokens),
        "quick": quick,
    }
