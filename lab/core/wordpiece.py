"""Chinese text to BERT tokens with word ids: what whole-word masking needs, computed fast.

transformers 5's `DataCollatorForLanguageModeling(whole_word_mask=True)` takes word boundaries from
gaps between token offsets, so an unspaced Chinese sentence is one "word". Here each token carries
the id of the segmenter's word it belongs to (`word_ids`); `pack` joins documents into full-length
sequences, and `encode_corpus` runs segmenter and tokenizer over a `datasets` corpus in parallel.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lab.core import vocab
from lab.core.files import arrow_batches
from lab.core.segment import Segmenter
from lab.core.text import RUN, SPLIT, classes_of, codes_of, normalize


def _segmenter(segmenter: str | Segmenter) -> Segmenter:
    return segmenter if isinstance(segmenter, Segmenter) else Segmenter(segmenter)


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
        self, words: list[list[str]] | Layout
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Flat token ids, flat word ids (from 0 within each text) and per-text token counts, for
        texts cut into words (or their `Layout`, which several vocabularies can share)."""
        lay = words if isinstance(words, Layout) else Layout(words)
        if not lay.words:
            return np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(lay.n_texts, np.int64)
        pending = {k: v for k, v in zip(lay.keys, lay.units) if k not in self.index}
        if pending:
            self._add(pending)
        rows = np.asarray(list(map(self.index.__getitem__, lay.keys)), dtype=np.int64)

        n_tok = np.where(lay.has_run, 0, lay.n_split)
        n_tok[lay.complex_units] = self.lens[rows]
        total = int(n_tok.sum())
        ids = np.empty(total, dtype=np.int32)
        raw_word = np.empty(total, dtype=np.int64)
        from_cache = np.repeat(lay.has_run, n_tok)
        # simple units: one token per punctuation / CJK character, in order
        ids[~from_cache] = self._char_tokens(lay.codes[lay.simple_chars])
        raw_word[~from_cache] = lay.word_in_text[lay.word_of_char[lay.simple_chars]]
        # complex units: ragged gather of their cached tokens
        c_tok = n_tok[lay.complex_units]
        gather = np.repeat(self.starts[rows] - (np.cumsum(c_tok) - c_tok), c_tok) + np.arange(
            c_tok.sum()
        )
        ids[from_cache] = self.ids[gather]
        raw_word[from_cache] = (
            np.repeat(lay.word_in_text[lay.u_first[lay.complex_units]], c_tok) + self.wofs[gather]
        )

        text_idx = np.repeat(lay.text_of_word[lay.u_first], n_tok)
        counts = np.bincount(text_idx, minlength=lay.n_texts).astype(np.int64)
        # renumber words 0, 1, 2, ... within each text
        new = np.ones(total, dtype=bool)
        new[1:] = (raw_word[1:] != raw_word[:-1]) | (text_idx[1:] != text_idx[:-1])
        wid = np.cumsum(new) - 1
        first_token = np.cumsum(counts) - counts
        base = np.zeros(lay.n_texts, dtype=np.int64)
        base[counts > 0] = wid[first_token[counts > 0]]
        wid -= np.repeat(base, counts)
        return ids, wid.astype(np.int32), counts


class Layout:
    """What does not depend on the vocabulary when texts cut into words are tokenized: the words'
    characters and classes, and the units (words joined where BERT keeps one pre-token) that go
    through WordPiece. Computed once, shared by every vocabulary's `WordTokenizer`."""

    def __init__(self, words_per_text: list[list[str]]):
        words = [w for ws in words_per_text for w in ws]
        if not all(words):  # a segmenter gives no empty words; anything else drops them here
            words_per_text = [[w for w in ws if w] for ws in words_per_text]
            words = [w for ws in words_per_text for w in ws]
        self.words, self.n_texts = words, len(words_per_text)
        if not words:
            return
        per_text = np.fromiter(map(len, words_per_text), dtype=np.int64, count=self.n_texts)
        wlen = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
        self.codes = codes_of("".join(words))
        cls = classes_of(self.codes)
        wend = np.cumsum(wlen)
        wstart = wend - wlen
        self.text_of_word = np.repeat(np.arange(self.n_texts), per_text)
        self.word_in_text = np.arange(len(words)) - np.repeat(
            np.cumsum(per_text) - per_text, per_text
        )

        # units: words joined where both sides of the boundary are run characters
        joins = np.zeros(len(words), dtype=bool)
        joins[1:] = (
            (cls[wend[:-1] - 1] == RUN)
            & (cls[wstart[1:]] == RUN)
            & (self.text_of_word[1:] == self.text_of_word[:-1])
        )
        self.u_first = np.flatnonzero(~joins)  # first word of each unit
        u_last = np.append(self.u_first[1:], len(words)) - 1
        u_cstart, u_cend = wstart[self.u_first], wend[u_last]
        self.has_run = np.add.reduceat((cls == RUN).astype(np.int64), u_cstart) > 0
        self.n_split = np.add.reduceat((cls == SPLIT).astype(np.int64), u_cstart)
        self.word_of_char = np.repeat(np.arange(len(words)), wlen)
        self.simple_chars = (cls == SPLIT) & ~np.repeat(self.has_run, u_cend - u_cstart)

        # complex units (with run characters) go through WordPiece: their text and word lengths
        self.complex_units = np.flatnonzero(self.has_run)
        self.keys, self.units = [], []
        for u in self.complex_units:
            a, b = self.u_first[u], u_last[u] + 1
            if b - a == 1:
                text = words[a]
                self.keys.append(text)
                self.units.append((text, (len(text),)))
            else:
                text, lengths = "".join(words[a:b]), tuple(int(x) for x in wlen[a:b])
                self.keys.append(text + "\x00" + ",".join(map(str, lengths)))
                self.units.append((text, lengths))


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


class Packer:
    """Documents joined with [SEP] and cut into full `seq_len` sequences ([CLS] ... [SEP]), fed a
    chunk of documents at a time: memory holds one chunk and less than one sequence carried over.

    RoBERTa's FULL-SENTENCES packing: no padding except at the end of the very last sequence. Word
    ids are renumbered within each sequence; separators and padding get -1.
    """

    def __init__(self, *, seq_len: int, cls_id: int, sep_id: int, pad_id: int):
        self.room, self.cls, self.sep, self.pad = seq_len - 2, cls_id, sep_id, pad_id
        self.ids = np.zeros(0, np.int32)  # tokens carried over to the next sequence
        self.wids = np.zeros(0, np.int64)  # their word ids, numbered over the whole stream
        self.next_word = 0
        self.started = False

    def add(
        self, ids: np.ndarray, wids: np.ndarray, counts: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The full sequences that a chunk of documents completes: two (N, seq_len) arrays.
        `ids` / `wids` are flat over the chunk's documents, `counts` their token counts."""
        counts = np.asarray(counts)
        counts = counts[counts > 0]
        if not len(counts):
            return self._rows(self.ids[:0], self.wids[:0])
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        # global word ids: each document's ids shifted past the previous documents' words
        n_words = np.maximum.reduceat(wids.astype(np.int64), starts) + 1
        shift = self.next_word + np.concatenate([[0], np.cumsum(n_words)[:-1]])
        self.next_word = int(shift[-1] + n_words[-1])
        flat_ids = np.insert(ids.astype(np.int32), starts[1:], self.sep)
        flat_wids = np.insert(wids.astype(np.int64) + np.repeat(shift, counts), starts[1:], -1)
        if self.started:  # a separator between the previous chunk's last document and this one
            flat_ids, flat_wids = (
                np.concatenate([[self.sep], flat_ids]),
                np.concatenate([[-1], flat_wids]),
            )
        self.started = True
        flat_ids, flat_wids = (
            np.concatenate([self.ids, flat_ids]),
            np.concatenate([self.wids, flat_wids]),
        )
        full = len(flat_ids) // self.room * self.room
        self.ids, self.wids = flat_ids[full:], flat_wids[full:]
        return self._rows(flat_ids[:full], flat_wids[:full])

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        """The last, partly padded sequence (none if the stream ended on a full one)."""
        n = len(self.ids)
        if not n:
            return self._rows(self.ids, self.wids)
        pad = self.room - n
        ids = np.concatenate([self.ids, np.full(pad, self.pad, np.int32)])
        wids = np.concatenate([self.wids, np.full(pad, -1)])
        input_ids, word_ids = self._rows(ids, wids)
        input_ids[-1, n + 1 :] = self.pad  # [SEP] right after the last token
        input_ids[-1, n + 1] = self.sep
        self.ids, self.wids = self.ids[:0], self.wids[:0]
        return input_ids, word_ids

    def _rows(self, flat_ids: np.ndarray, flat_wids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = len(flat_ids) // self.room
        body_ids, body_wids = flat_ids.reshape(n, self.room), flat_wids.reshape(n, self.room)
        first = np.where(body_wids >= 0, body_wids, np.iinfo(np.int64).max).min(
            axis=1, keepdims=True
        )
        body_wids = np.where(body_wids >= 0, body_wids - first, -1)
        input_ids = np.concatenate(
            [np.full((n, 1), self.cls, np.int32), body_ids, np.full((n, 1), self.sep, np.int32)],
            axis=1,
        )
        word_ids = np.concatenate([np.full((n, 1), -1), body_wids, np.full((n, 1), -1)], axis=1)
        return input_ids, word_ids.astype(np.int32)


def pack(ids: np.ndarray, wids: np.ndarray, counts: np.ndarray, *, seq_len: int, cls_id: int,
         sep_id: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """All documents at once through a `Packer`: two (N, seq_len) arrays."""
    packer = Packer(seq_len=seq_len, cls_id=cls_id, sep_id=sep_id, pad_id=pad_id)
    parts = [packer.add(ids, wids, counts), packer.finish()]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


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
        lay = Layout(words)  # shared by the vocabularies
        for name, folder in self.tokenizer_dirs.items():
            if name not in self._tok:
                self._tok[name] = WordTokenizer(vocab.load(folder))
            ids, wids, counts = self._tok[name](lay)
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


def flat_batches(ds, columns: list[str], rows: int = 50_000):
    """List columns of an encoded dataset a batch of rows at a time: per batch, each column as one
    flat numpy array, and the rows' lengths (no per-row Python, never the whole column)."""
    for batch in arrow_batches(ds, columns, rows):
        out = {}
        for name, col in zip(columns, batch.columns):
            offsets = col.offsets.to_numpy()
            out[name] = col.values.to_numpy()[offsets[0] : offsets[-1]]
            out["lengths"] = np.diff(offsets)
        yield out


def pack_dataset(ds, column: str, lengths: list[int], *, cls_id: int, sep_id: int, pad_id: int):
    """An encoded dataset's documents packed (`Packer`) at every length in one pass over it:
    yields {length: (N, length) input ids and word ids} batch by batch."""
    packers = {L: Packer(seq_len=L, cls_id=cls_id, sep_id=sep_id, pad_id=pad_id) for L in lengths}
    for b in flat_batches(ds, [f"ids_{column}", f"wids_{column}"]):
        yield {
            L: p.add(b[f"ids_{column}"], b[f"wids_{column}"], b["lengths"])
            for L, p in packers.items()
        }
    yield {L: p.finish() for L, p in packers.items()}
