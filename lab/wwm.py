"""Whole-word masking for Chinese: word boundaries from a segmenter, and the masking collator.

transformers 5's `DataCollatorForLanguageModeling(whole_word_mask=True)` takes word boundaries from
gaps between token offsets, so an unspaced Chinese sentence is one "word": every sequence comes out
fully masked or not masked at all. Here each token carries the id of the segmenter's word it belongs
to (`word_ids`), and the collator masks whole words with 80/10/10 decided per word.
"""

from __future__ import annotations

import shutil
import time
import unicodedata
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import numpy as np
import torch

from lab.segment import Segmenter
from lab.text import normalize

CODE = ("wwm", "segment", "text")  # modules whose changes rerun the stage


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


# ---------------------------------------------------------------------------------------------
# the collator


class WholeWordMaskCollator:
    """Masks whole words (or single tokens) for MLM, with 80/10/10 decided per word.

    Words are drawn in random order and taken while they fit, until about `mlm_probability` of the
    sequence's non-special tokens are chosen (at most `max_predictions`; at least one word). Each
    chosen word then becomes [MASK] (`mask_replace_prob`), random tokens (`random_replace_prob`) or
    stays as it is; every token of a word gets the same treatment. Special tokens and padding are
    never chosen; labels are -100 except at chosen tokens.

    Masking is dynamic (new masks every batch) and reproducible under `seed`. An example that
    carries a `mask_seed` is masked from that seed alone: static masking (the seeds' `dupe_factor`
    copies are `mask_seed = hash(example, copy)`). `whole_word=False` masks single tokens, the
    token-level baseline with the same interface.
    """

    def __init__(
        self,
        tokenizer,
        *,
        mlm_probability: float = 0.15,
        max_predictions: int | None = None,
        mask_replace_prob: float = 0.8,
        random_replace_prob: float = 0.1,
        seed: int | None = None,
        whole_word: bool = True,
    ):
        if not 0 < mlm_probability < 1:
            raise ValueError(f"mlm_probability = {mlm_probability}: must be between 0 and 1")
        if (
            mask_replace_prob < 0
            or random_replace_prob < 0
            or mask_replace_prob + random_replace_prob > 1
        ):
            raise ValueError("mask_replace_prob + random_replace_prob must lie in [0, 1]")
        self.tokenizer = tokenizer
        self.mlm_probability = mlm_probability
        self.max_predictions = max_predictions
        self.mask_replace_prob = mask_replace_prob
        self.random_replace_prob = random_replace_prob
        self.whole_word = whole_word
        self.mask_id = tokenizer.mask_token_id
        self.pad_id = tokenizer.pad_token_id
        specials = set(tokenizer.all_special_ids)
        self.random_ids = np.array([i for i in range(len(tokenizer)) if i not in specials])
        self.rng = np.random.default_rng(seed)

    def reseed(self, seed) -> None:
        """Restart the random stream (the training loop reseeds per step, so resume is exact)."""
        self.rng = np.random.default_rng(seed)

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(e["input_ids"]) for e in examples)
        n = len(examples)
        input_ids = np.full((n, width), self.pad_id, dtype=np.int64)
        word_ids = np.full((n, width), -1, dtype=np.int64)
        attention = np.zeros((n, width), dtype=np.int64)
        for b, e in enumerate(examples):
            k = len(e["input_ids"])
            input_ids[b, :k] = e["input_ids"]
            word_ids[b, :k] = e["word_ids"]
            attention[b, :k] = 1
        attention[input_ids == self.pad_id] = 0
        labels = np.full_like(input_ids, -100)
        for b, e in enumerate(examples):
            rng = np.random.default_rng(e["mask_seed"]) if "mask_seed" in e else self.rng
            self._mask_row(input_ids[b], word_ids[b], labels[b], rng)
        return {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(attention),
            "labels": torch.from_numpy(labels),
        }

    def _mask_row(self, ids: np.ndarray, wids: np.ndarray, labels: np.ndarray, rng) -> None:
        """Mask one sequence in place. ids, wids, labels: (T,)."""
        maskable = wids >= 0
        n_tokens = int(maskable.sum())
        if n_tokens == 0:
            return
        if self.whole_word:
            _, word_of = np.unique(wids[maskable], return_inverse=True)  # 0..W-1 per token
        else:
            word_of = np.arange(n_tokens)
        positions = np.flatnonzero(maskable)
        lengths = np.bincount(word_of)
        target = max(1, int(round(self.mlm_probability * n_tokens)))
        if self.max_predictions:
            target = min(target, self.max_predictions)
        chosen, total = [], 0
        for w in rng.permutation(len(lengths)):  # take words while they fit (Google's rule)
            if total + lengths[w] > target:
                continue
            chosen.append(w)
            total += lengths[w]
            if total >= target:
                break
        if not chosen:  # every word is longer than the target: take the shortest one
            chosen = [int(np.argmin(lengths))]
        chosen = np.asarray(chosen)
        action = rng.random(len(chosen))  # one draw per word: 80/10/10 at word level
        mask_words = chosen[action < self.mask_replace_prob]
        rand_words = chosen[
            (action >= self.mask_replace_prob)
            & (action < self.mask_replace_prob + self.random_replace_prob)
        ]
        chosen_pos = positions[np.isin(word_of, chosen)]
        labels[chosen_pos] = ids[chosen_pos]
        ids[positions[np.isin(word_of, mask_words)]] = self.mask_id
        rand_pos = positions[np.isin(word_of, rand_words)]
        ids[rand_pos] = rng.choice(self.random_ids, size=len(rand_pos))


def static_copies(n_examples: int, dupe_factor: int, seed: int) -> np.ndarray:
    """`mask_seed`s for `dupe_factor` fixed maskings of each example: shape (n_examples, dupe_factor)."""
    ss = np.random.SeedSequence([seed, n_examples, dupe_factor])
    return ss.generate_state(n_examples * dupe_factor, dtype=np.uint64).reshape(
        n_examples, dupe_factor
    )


# ---------------------------------------------------------------------------------------------
# masking statistics


def mask_statistics(
    collator: WholeWordMaskCollator, examples: list[dict], *, batch_size: int = 64
) -> dict:
    """Actual mask rate, 80/10/10 shares at word level, masked-word lengths, on `examples`."""
    chosen_tokens = maskable = 0
    actions = {"mask": 0, "random": 0, "kept": 0}
    word_lengths: list[int] = []
    per_seq: list[float] = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        batch = collator(chunk)
        for b, e in enumerate(chunk):
            ids = np.asarray(e["input_ids"])
            wids = np.asarray(e["word_ids"])
            out = batch["input_ids"][b, : len(ids)].numpy()
            lab = batch["labels"][b, : len(ids)].numpy()
            n = int((wids >= 0).sum())
            chosen = lab != -100
            maskable += n
            chosen_tokens += int(chosen.sum())
            per_seq.append(chosen.sum() / max(1, n))
            # group chosen tokens by word (token-level mode: every token is a word)
            keys = wids[chosen] if collator.whole_word else np.flatnonzero(chosen)
            for w in np.unique(keys):
                at = np.flatnonzero(chosen)[keys == w]
                word_lengths.append(len(at))
                if (out[at] == collator.mask_id).all():
                    actions["mask"] += 1
                elif (out[at] == ids[at]).all():
                    actions["kept"] += 1
                else:
                    actions["random"] += 1
    n_words = max(1, sum(actions.values()))
    lengths = np.bincount(word_lengths, minlength=6)[1:]
    return {
        "mask_rate": chosen_tokens / max(1, maskable),
        "shares": {k: v / n_words for k, v in actions.items()},
        "masked_words": n_words,
        "word_length_counts": lengths.tolist(),  # index 0 = one token
        "multi_token_word_share": float(lengths[1:].sum() / max(1, lengths.sum())),
        "per_sequence_rate": per_seq,
    }


def builtin_comparison(tokenizer, texts: list[str], *, mlm_probability: float, seed: int) -> dict:
    """transformers' own `whole_word_mask=True` on unspaced Chinese: the share of sequences that come
    out fully masked or not masked at all, and its [MASK] share."""
    import warnings

    from transformers import DataCollatorForLanguageModeling

    warnings.filterwarnings("ignore", "Random token replacement is not supported")  # measured below
    collator = DataCollatorForLanguageModeling(
        tokenizer, mlm=True, whole_word_mask=True, mlm_probability=mlm_probability, seed=seed
    )
    rates, mask_share_num, mask_share_den = [], 0, 0
    for start in range(0, len(texts), 64):
        enc = tokenizer(
            texts[start : start + 64],
            truncation=True,
            max_length=128,
            padding=True,  # its own padding leaves offset_mapping ragged
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
        )
        examples = [{k: enc[k][i] for k in enc} for i in range(len(enc["input_ids"]))]
        batch = collator(examples)
        labels = batch["labels"].numpy()
        ids = batch["input_ids"].numpy()
        for i, ex in enumerate(examples):
            n = int(len(ex["input_ids"]) - sum(ex["special_tokens_mask"]))  # pads count as special
            chosen = labels[i] != -100
            rates.append(chosen.sum() / max(1, n))
            mask_share_num += int((ids[i][chosen] == tokenizer.mask_token_id).sum())
            mask_share_den += int(chosen.sum())
    rates = np.asarray(rates)
    return {
        "sequences": len(rates),
        "all_masked": float((rates >= 0.999).mean()),
        "none_masked": float((rates == 0).mean()),
        "all_or_nothing": float(((rates >= 0.999) | (rates == 0)).mean()),
        "mean_mask_rate": float(rates.mean()),
        "mask_token_share": mask_share_num / max(1, mask_share_den),
        "per_sequence_rate": rates.tolist(),
    }


# ---------------------------------------------------------------------------------------------
# the stage


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

        from lab import vocab

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


def inputs(cfg) -> dict[str, str]:
    from lab import runs

    out = {"corpus": runs.upstream(cfg.run_id, "corpus")["digest"]}
    if cfg.user_dict:
        out["user_dict"] = runs.sha256_file(Path(cfg.user_dict))
    return out


def segmenter_for(cfg) -> Segmenter:
    if cfg.user_dict and not Path(cfg.user_dict).is_file():
        raise FileNotFoundError(f"wwm.user_dict = {cfg.user_dict!r}: no such file")
    return Segmenter(cfg.segmenter, user_dict=cfg.user_dict, words=tuple(cfg.user_words))


def collator_for(
    cfg, tokenizer, *, whole_word: bool = True, seed: int | None = None
) -> WholeWordMaskCollator:
    return WholeWordMaskCollator(
        tokenizer,
        mlm_probability=cfg.mlm_probability,
        max_predictions=cfg.max_predictions or None,
        mask_replace_prob=cfg.mask_replace_prob,
        random_replace_prob=cfg.random_replace_prob,
        seed=cfg.seed if seed is None else seed,
        whole_word=whole_word,
    )


def run(cfg) -> dict:
    """Segment and tokenize the corpus, store packed sequences with word ids, measure masking."""
    from datasets import Dataset, DatasetDict, Features, Sequence, Value, load_from_disk

    from lab import runs, vocab
    from lab import segment as seg_mod

    stage = runs.Stage(cfg, inputs(cfg), CODE)
    if stage.cached:
        runs.echo(f"wwm: cached ({stage.dir})")
        return stage.manifest
    corpus_m = runs.upstream(cfg.run_id, "corpus", verify=False)
    corpus = load_from_disk(str(corpus_m["dir"] / "corpus"))
    tok_dirs = {v: str(corpus_m["dir"] / "vocab" / v) for v in cfg.vocabs}
    segmenter = segmenter_for(cfg)

    work = stage.begin()
    t0 = time.time()
    encoded, differ = encode_corpus(
        corpus,
        segmenter,
        tok_dirs,
        num_proc=cfg.num_proc,
        check_docs=cfg.check_docs,
        tmp=work / "tmp",
    )
    runs.echo(
        f"segmenter: {segmenter.engine} (checked on {cfg.check_docs:,} documents, {differ} differed)"
    )
    t_encode = time.time() - t0

    packed_sizes = {}
    for name in cfg.vocabs:
        tokenizer = vocab.load(tok_dirs[name])
        for L in cfg.seq_lengths:
            parts = {}
            for split, ds in encoded.items():
                ids, counts = _flat(ds, f"ids_{name}")
                wids, _ = _flat(ds, f"wids_{name}")
                x, w = pack(
                    ids, wids, counts, seq_len=L,
                    cls_id=tokenizer.cls_token_id, sep_id=tokenizer.sep_token_id, pad_id=tokenizer.pad_token_id,
                )  # fmt: skip
                feats = Features(
                    {
                        "input_ids": Sequence(Value("int32"), length=L),
                        "word_ids": Sequence(Value("int32"), length=L),
                    }
                )
                parts[split] = Dataset.from_dict({"input_ids": x, "word_ids": w}, features=feats)
                packed_sizes[f"{name}/{L}/{split}"] = {
                    "sequences": len(x),
                    "tokens": int((x != tokenizer.pad_token_id).sum()),
                }
            runs.save_dataset(DatasetDict(parts), work / "packed" / name / str(L))
    tokens = {name: int(_flat(encoded["train"], f"ids_{name}")[0].size) for name in cfg.vocabs}
    n_chars = sum(len(t) for split in corpus for t in corpus[split]["text"])
    gold = load_from_disk(str(corpus_m["dir"] / "gold_segmentation"))
    quality = seg_mod.score(
        list(gold["words"]), [segmenter.cut(t) for t in gold["text"]], list(gold["tags"])
    )
    shutil.rmtree(work / "tmp", ignore_errors=True)

    # masking statistics on the valid split, the shortest sequence length, the first vocab
    tokenizer = vocab.load(tok_dirs[cfg.vocabs[0]])
    valid = load_from_disk(
        str(work / "packed" / cfg.vocabs[0] / str(min(cfg.seq_lengths)) / "valid")
    )
    examples = [valid[i] for i in range(min(cfg.stats_sequences, len(valid)))]
    stats = {
        "wwm": mask_statistics(collator_for(cfg, tokenizer), examples),
        "token": mask_statistics(collator_for(cfg, tokenizer, whole_word=False), examples),
    }
    sentences = [t for t in corpus["valid"]["text"] if 10 <= len(t) <= 120][: cfg.stats_sequences]
    ours = mask_statistics(
        collator_for(cfg, tokenizer), encode(sentences, tokenizer, segmenter=segmenter)
    )
    builtin = builtin_comparison(
        tokenizer, sentences, mlm_probability=cfg.mlm_probability, seed=cfg.seed
    )
    ours_rates = np.asarray(ours["per_sequence_rate"])
    stats["builtin"] = builtin
    stats["ours_on_sentences"] = {
        "all_or_nothing": float(((ours_rates >= 0.999) | (ours_rates == 0)).mean()),
        "mean_mask_rate": float(ours_rates.mean()),
        "per_sequence_rate": ours["per_sequence_rate"],
        "shares": ours["shares"],
    }
    stats["segmentation"] = quality
    runs.write_json(work / "stats.json", stats)

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
        "builtin_all_or_nothing": builtin["all_or_nothing"],
        "ours_all_or_nothing": stats["ours_on_sentences"]["all_or_nothing"],
    }
    outputs = {f"packed_{v}_{L}": f"packed/{v}/{L}" for v in cfg.vocabs for L in cfg.seq_lengths}
    outputs["stats"] = "stats.json"
    return stage.finish(outputs, metrics)


def _flat(ds, column: str) -> tuple[np.ndarray, np.ndarray]:
    """A list column as one flat numpy array plus per-row lengths (no per-row Python)."""
    col = ds.data.table.column(column).combine_chunks()
    offsets = col.offsets.to_numpy()
    values = col.values.to_numpy()
    return values[offsets[0] : offsets[-1]], np.diff(offsets)


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


def describe(cfg) -> dict:
    return {
        "segmenter": f"{cfg.segmenter}{' + user dictionary' if cfg.user_dict else ''}",
        "vocabularies": ", ".join(cfg.vocabs),
        "packed lengths": ", ".join(map(str, cfg.seq_lengths)),
        "masking": f"{cfg.mlm_probability:.0%} of tokens, {cfg.mask_replace_prob:.0%}/"
        f"{cfg.random_replace_prob:.0%}/{1 - cfg.mask_replace_prob - cfg.random_replace_prob:.0%} per word",
        "expected compute": f"about 1 M characters/s on {cfg.num_proc} processes",
    }
