"""Chinese text to BERT tokens with word ids: what whole-word masking needs, computed fast.

transformers 5's `DataCollatorForLanguageModeling(whole_word_mask=True)` takes word boundaries from
gaps between token offsets, so an unspaced Chinese sentence is one "word". Here each token carries
the id of the segmenter's word it belongs to (`word_ids`); `pack` joins documents into full-length
sequences, and `encode_corpus` runs segmenter and tokenizer over a `datasets` corpus in parallel.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import numpy as np

from lab.core import vocab
from lab.core.segment import Segmenter
from lab.core.text import normalize


def _segmenter(segmenter: str | Segmenter) -> Segmenter:
    return segmenter if isinstance(segmenter, Segmenter) else Segmenter(segmenter)


# BERT's pre-tokenizer, per character: whitespace is dropped, punctuation and CJK ideographs become
# tokens of their own, everything else ("run" characters: letters, digits, kana, ...) is kept in
# runs that WordPiece then cuts into pieces.
SPACE, SPLIT, RUN = 0, 1, 2
BERT_CJK = (
    (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F),
)  # fmt: skip


def char_class(c: str) -> int:
    o = ord(c)
    if c.isspace():
        return SPACE
    if 33 <= o <= 47 or 58 <= o <= 64 or 91 <= o <= 96 or 123 <= o <= 126:
        return SPLIT
    if any(a <= o <= b for a, b in BERT_CJK) or unicodedata.category(c).startswith("P"):
        return SPLIT
    return RUN


@cache
def _class_table() -> np.ndarray:
    """char_class of every BMP code point (built once)."""
    return np.fromiter((char_class(chr(c)) for c in range(0x10000)), dtype=np.int8, count=0x10000)


def _classes(codes: np.ndarray) -> np.ndarray:
    out = np.empty(len(codes), dtype=np.int8)
    bmp = codes < 0x10000
    out[bmp] = _class_table()[codes[bmp]]
    for i in np.flatnonzero(~bmp):
        out[i] = char_class(chr(codes[i]))
    return out


def _codes(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)


class WordTokenizer:
    """Token ids and word ids for texts cut into words, equal to what plain tokenization gives.

    A word of CJK characters and punctuation tokenizes one character to one token (or [UNK]), so
    those come straight from a per-character table. Words with letters or digits go through the
    WordPiece tokenizer, cached per distinct word. Where the segmenter split a run that BERT keeps
    as one pre-token ("iPhone12" cut as "iPhone" + "12" must still give "iphone", "##12"), the words
    are joined into one unit first, and each token goes to the word its first character is in. A
    `##` piece always belongs to the word of the token before it.
    """

    def __init__(self, tokenizer):
        self.backend = tokenizer.backend_tokenizer
        vocab = tokenizer.get_vocab()
        self.unk = tokenizer.unk_token_id
        # per BMP code point: its single-character token (lower-cased as BERT does), else [UNK]
        self.char_ids = np.full(0x10000, self.unk, dtype=np.int32)
        for tok, i in vocab.items():
            if len(tok) == 1 and ord(tok) < 0x10000:
                self.char_ids[ord(tok)] = i
        self.vocab = vocab
        self.index: dict[str, int] = {}  # complex unit -> row in the cache
        self.ids = np.zeros(0, np.int32)  # cached units' token ids, back to back
        self.wofs = np.zeros(0, np.int32)  # per cached token: its word's offset within the unit
        self.starts = np.zeros(0, np.int64)  # per cached unit: first token in `ids`
        self.lens = np.zeros(0, np.int64)  # per cached unit: number of tokens
        self.cont = np.zeros(len(tokenizer), dtype=bool)
        for tok, i in vocab.items():
            self.cont[i] = tok.startswith("##") and len(tok) > 2

    def _char_tokens(self, codes: np.ndarray) -> np.ndarray:
        out = np.full(len(codes), self.unk, dtype=np.int32)
        bmp = codes < 0x10000
        out[bmp] = self.char_ids[codes[bmp]]
        for i in np.flatnonzero(~bmp):
            out[i] = self.vocab.get(chr(codes[i]), self.unk)
        return out

    def _add(self, units: dict[str, tuple[str, tuple[int, ...]]]) -> None:
        encs = self.backend.encode_batch(
            [text for text, _ in units.values()], add_special_tokens=False
        )
        new_ids, new_wofs = [], []
        for (key, (_, word_lengths)), enc in zip(units.items(), encs):
            ids = np.asarray(enc.ids, dtype=np.int32)
            wofs = np.zeros(len(ids), dtype=np.int32)
            if len(word_lengths) > 1:  # a joined unit: a token goes to the word of its first char
                bounds = np.cumsum((0,) + word_lengths[:-1])
                tok_starts = np.asarray([a for a, _ in enc.offsets], dtype=np.int64)
                wofs = (np.searchsorted(bounds, tok_starts, side="right") - 1).astype(np.int32)
                for k in range(1, len(ids)):
                    if self.cont[ids[k]]:
                        wofs[k] = wofs[k - 1]
            self.index[key] = len(self.lens) + len(new_ids)
            new_ids.append(ids)
            new_wofs.append(wofs)
        lens = np.asarray([len(a) for a in new_ids], dtype=np.int64)
        self.starts = np.concatenate([self.starts, len(self.ids) + np.cumsum(lens) - lens])
        self.lens = np.concatenate([self.lens, lens])
        self.ids = np.concatenate([self.ids, *new_ids])
        self.wofs = np.concatenate([self.wofs, *new_wofs])

    def __call__(
        self, words_per_text: list[list[str]]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Flat token ids, flat word ids (from 0 within each text) and per-text token counts."""
        words = [w for ws in words_per_text for w in ws if w]
        n_texts = len(words_per_text)
        per_text = np.asarray([sum(1 for w in ws if w) for ws in words_per_text], dtype=np.int64)
        if not words:
            return np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(n_texts, np.int64)
        wlen = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
        codes = _codes("".join(words))
        cls = _classes(codes)
        wend = np.cumsum(wlen)
        wstart = wend - wlen
        text_of_word = np.repeat(np.arange(n_texts), per_text)
        word_in_text = np.arange(len(words)) - np.repeat(np.cumsum(per_text) - per_text, per_text)

        # units: words joined where both sides of the boundary are run characters
        joins = np.zeros(len(words), dtype=bool)
        joins[1:] = (
            (cls[wend[:-1] - 1] == RUN)
            & (cls[wstart[1:]] == RUN)
            & (text_of_word[1:] == text_of_word[:-1])
        )
        u_first = np.flatnonzero(~joins)  # first word of each unit
        u_last = np.append(u_first[1:], len(words)) - 1
        u_cstart, u_cend = wstart[u_first], wend[u_last]
        has_run = np.add.reduceat((cls == RUN).astype(np.int64), u_cstart) > 0
        n_split = np.add.reduceat((cls == SPLIT).astype(np.int64), u_cstart)

        # complex units (with run characters): through WordPiece, cached
        complex_units = np.flatnonzero(has_run)
        keys, pending = [], {}
        for u in complex_units:
            a, b = u_first[u], u_last[u] + 1
            if b - a == 1:
                key = text = words[a]
                lengths = (len(text),)
            else:
                text = "".join(words[a:b])
                lengths = tuple(int(x) for x in wlen[a:b])
                key = text + "\x00" + ",".join(map(str, lengths))
            keys.append(key)
            if key not in self.index and key not in pending:
                pending[key] = (text, lengths)
        if pending:
            self._add(pending)
        rows = np.asarray(list(map(self.index.__getitem__, keys)), dtype=np.int64)

        n_tok = np.where(has_run, 0, n_split)
        n_tok[complex_units] = self.lens[rows]
        total = int(n_tok.sum())
        ids = np.empty(total, dtype=np.int32)
        raw_word = np.empty(total, dtype=np.int64)
        from_cache = np.repeat(has_run, n_tok)
        # simple units: one token per punctuation / CJK character, in order
        word_of_char = np.repeat(np.arange(len(words)), wlen)
        simple_chars = (cls == SPLIT) & ~np.repeat(has_run, u_cend - u_cstart)
        ids[~from_cache] = self._char_tokens(codes[simple_chars])
        raw_word[~from_cache] = word_in_text[word_of_char[simple_chars]]
        # complex units: ragged gather of their cached tokens
        c_tok = n_tok[complex_units]
        gather = np.repeat(self.starts[rows] - (np.cumsum(c_tok) - c_tok), c_tok) + np.arange(
            c_tok.sum()
        )
        ids[from_cache] = self.ids[gather]
        raw_word[from_cache] = (
            np.repeat(word_in_text[u_first[complex_units]], c_tok) + self.wofs[gather]
        )

        text_idx = np.repeat(text_of_word[u_first], n_tok)
        counts = np.bincount(text_idx, minlength=n_texts).astype(np.int64)
        # renumber words 0, 1, 2, ... within each text
        new = np.ones(total, dtype=bool)
        new[1:] = (raw_word[1:] != raw_word[:-1]) | (text_idx[1:] != text_idx[:-1])
        wid = np.cumsum(new) - 1
        first_token = np.cumsum(counts) - counts
        base = np.zeros(n_texts, dtype=np.int64)
        base[counts > 0] = wid[first_token[counts > 0]]
        wid -= np.repeat(base, counts)
        return ids, wid.astype(np.int32), counts


def encode(
    texts: Sequence[str], tokenizer, *, segmenter: str | Segmenter = "jieba", max_length: int = 128
) -> list[dict]:
    """One example per text: `input_ids` and `word_ids` of equal length, [CLS] ... [SEP], truncated.

    Texts are normalised as the corpus stage does (full-width letters and digits folded).
    `word_ids` is -1 at special tokens; consecutive tokens of one word share an id (0, 1, 2, ...);
    punctuation is its own word as the segmenter cuts it; a character missing from the vocab becomes
    [UNK] inside its word; `##` pieces of Latin words and numbers stay with their word.
    """
    seg = _segmenter(segmenter)
    ids, wids, counts = WordTokenizer(tokenizer)([seg.cut(normalize(t)) for t in texts])
    room = max_length - 2
    out, pos = [], 0
    for n in counts:
        i, w = ids[pos : pos + n][:room], wids[pos : pos + n][:room]
        pos += n
        out.append(
            {
                "input_ids": [tokenizer.cls_token_id, *i.tolist(), tokenizer.sep_token_id],
                "word_ids": [-1, *w.tolist(), -1],
            }
        )
    return out


def pack(
    ids: np.ndarray,
    wids: np.ndarray,
    counts: np.ndarray,
    *,
    seq_len: int,
    cls_id: int,
    sep_id: int,
    pad_id: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Documents joined with [SEP] and cut into full `seq_len` sequences ([CLS] ... [SEP]).

    `ids` / `wids` are flat over all documents, `counts` their token counts. RoBERTa's
    FULL-SENTENCES packing: no padding except at the end of the very last sequence. Word ids are
    renumbered within each sequence; separators and padding get -1. Returns two (N, seq_len) arrays.
    """
    counts = np.asarray(counts)
    counts = counts[counts > 0]
    if len(ids) == 0:
        return np.zeros((0, seq_len), np.int32), np.zeros((0, seq_len), np.int32)
    room = seq_len - 2
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    # global word ids: each document's ids shifted past the previous documents' words
    n_words = np.maximum.reduceat(wids.astype(np.int64), starts) + 1
    shift = np.concatenate([[0], np.cumsum(n_words)[:-1]])
    gw = wids.astype(np.int64) + np.repeat(shift, counts)
    flat_ids = np.insert(ids.astype(np.int32), starts[1:], sep_id)
    flat_wids = np.insert(gw, starts[1:], -1)
    n = -(-len(flat_ids) // room)
    pad = n * room - len(flat_ids)
    body_ids = np.concatenate([flat_ids, np.full(pad, pad_id, np.int32)]).reshape(n, room)
    body_wids = np.concatenate([flat_wids, np.full(pad, -1)]).reshape(n, room)
    first = np.where(body_wids >= 0, body_wids, np.iinfo(np.int64).max).min(axis=1, keepdims=True)
    body_wids = np.where(body_wids >= 0, body_wids - first, -1)
    input_ids = np.concatenate(
        [np.full((n, 1), cls_id, np.int32), body_ids, np.full((n, 1), sep_id, np.int32)], axis=1
    )
    if pad:  # the last, partly padded sequence ends with [SEP] right after its last token
        last = room - pad + 1
        input_ids[-1, last:] = pad_id
        input_ids[-1, last] = sep_id
    word_ids = np.concatenate([np.full((n, 1), -1), body_wids, np.full((n, 1), -1)], axis=1)
    return input_ids, word_ids.astype(np.int32)


class _EncodeBatch:
    """`datasets.map` function: segment once, tokenize with every vocab (picklable, lazy caches)."""

    def __init__(self, segmenter: Segmenter, tokenizer_dirs: dict[str, str]):
        self.segmenter = segmenter
        self.tokenizer_dirs = tokenizer_dirs
        self._tok: dict[str, WordTokenizer] = {}

    def __getstate__(self):
        return {"segmenter": self.segmenter, "tokenizer_dirs": self.tokenizer_dirs, "_tok": {}}

    def __call__(self, batch):
        """A batch as an arrow table in, an arrow table of list columns out (no per-row copies)."""
        import pyarrow as pa

        words = [self.segmenter.cut(t) for t in batch.column("text").to_pylist()]
        columns = {}
        for name, folder in self.tokenizer_dirs.items():
            if name not in self._tok:
                self._tok[name] = WordTokenizer(vocab.load(folder))
            ids, wids, counts = self._tok[name](words)
            offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
            columns[f"ids_{name}"] = pa.ListArray.from_arrays(offsets, pa.array(ids))
            columns[f"wids_{name}"] = pa.ListArray.from_arrays(offsets, pa.array(wids))
        columns["n_words"] = pa.array([len(w) for w in words], type=pa.int32())
        return pa.table(columns)


def encode_dataset(
    ds, segmenter: Segmenter, tokenizer_dirs: dict[str, str], *, num_proc: int, cache_file: Path
):
    """Segment and tokenize a `text` dataset in parallel: columns ids_<vocab>, wids_<vocab>."""
    return ds.with_format("arrow").map(
        _EncodeBatch(segmenter, tokenizer_dirs),
        batched=True,
        batch_size=2000,
        num_proc=num_proc if num_proc > 1 and len(ds) > 4000 else None,
        remove_columns=ds.column_names,
        cache_file_name=str(cache_file),
        desc="segment + tokenize",
    )


def encode_corpus(
    corpus,
    segmenter: Segmenter,
    tokenizer_dirs: dict[str, str],
    *,
    num_proc: int,
    check_docs: int,
    tmp: Path,
):
    """Every split of a corpus `DatasetDict` encoded; the segmenter is checked against pure jieba
    on the first `check_docs` training documents meanwhile, and if they differ the corpus is
    encoded again with pure jieba. Returns the encoded splits and the number that differed."""
    first = corpus["train"] if "train" in corpus else next(iter(corpus.values()))
    wait = segmenter.start_check(list(first.select(range(min(check_docs, len(first))))["text"]))
    encoded = {
        split: encode_dataset(
            ds, segmenter, tokenizer_dirs, num_proc=num_proc, cache_file=tmp / f"{split}.arrow"
        )
        for split, ds in corpus.items()
    }
    differ = wait()
    if differ:  # segmenter.fast is now False: pure jieba
        encoded = {
            split: encode_dataset(
                ds,
                segmenter,
                tokenizer_dirs,
                num_proc=num_proc,
                cache_file=tmp / f"{split}.jieba.arrow",
            )
            for split, ds in corpus.items()
        }
    return encoded, differ


def flat_column(ds, column: str) -> tuple[np.ndarray, np.ndarray]:
    """A list column as one flat numpy array plus per-row lengths (no per-row Python)."""
    col = ds.data.table.column(column).combine_chunks()
    offsets = col.offsets.to_numpy()
    values = col.values.to_numpy()
    return values[offsets[0] : offsets[-1]], np.diff(offsets)
