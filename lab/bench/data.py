"""Inputs the benchmarks share: People's Daily paragraphs and the bert-base-chinese tokenizer."""

from __future__ import annotations

from lab.core import sources, vocab, wordpiece
from lab.core.segment import Segmenter
from lab.core.text import normalize


def texts(n_paragraphs: int) -> list[str]:
    """People's Daily paragraphs, cleaned as the corpus stage cleans them."""
    paragraphs = sources.load("peoples_daily")[:n_paragraphs]
    texts = [normalize("".join(w for w, _ in p)) for p in paragraphs]
    return [t for t in texts if t]


def full_tokenizer():
    return vocab.make_tokenizer(sources.load("bert_vocab"))


def packed(texts: list[str], tokenizer, seq_len: int):
    seg = Segmenter("jieba")
    ids, wids, counts = wordpiece.WordTokenizer(tokenizer)([seg.cut(t) for t in texts])
    return wordpiece.pack(ids, wids, counts, seq_len=seq_len, cls_id=tokenizer.cls_token_id,
                    sep_id=tokenizer.sep_token_id, pad_id=tokenizer.pad_token_id)  # fmt: skip
