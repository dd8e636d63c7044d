"""Chinese text helpers shared by the stages: normalisation, sentences, character classes, hashing."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from functools import cache

import numpy as np

# Full-width letters, digits and symbols fold to ASCII (People's Daily writes "１９９８年"); the
# punctuation Chinese typography writes full-width stays as it is, since that is what Chinese text
# and the vocab use.
KEEP_FULLWIDTH = set("，！？：；（）")
FOLD = {cp: cp - 0xFEE0 for cp in range(0xFF01, 0xFF5F) if chr(cp) not in KEEP_FULLWIDTH}
FOLD[0x3000] = 0x20  # ideographic space
DROP = {0xFFFD}  # replacement character: the original character is lost
SENTENCE_END = re.compile(r"(?<=[。！？!?；;\n])")
WHITESPACE = re.compile(r"\s+")
SURROGATE = re.compile("[\ud800-\udfff]")


def normalize(text: str) -> str:
    """NFC, full-width letters/digits/symbols to ASCII, control/format/surrogate characters dropped,
    whitespace collapsed to single spaces.

    NFC rather than NFKC: NFKC would also turn Chinese full-width punctuation (，！？：；（）) into ASCII
    and rewrite compatibility ideographs; the folding above is the part of NFKC this text needs.
    """
    text = _drop_surrogates(text)
    text = unicodedata.normalize("NFC", text).translate(FOLD)
    if not text.isprintable() or "\ufffd" in text:  # the rare slow path
        text = "".join(c for c in text if _keep(c))
    return WHITESPACE.sub(" ", text).strip()


def normalize_many(texts: list[str]) -> list[str]:
    """[normalize(t) for t in texts], with the costly steps run once over all of them joined (a word
    list of People's Daily is a million short strings)."""
    if not texts:
        return []
    joined = _drop_surrogates("\x1e".join(texts))  # a separator NFC never composes with
    parts = unicodedata.normalize("NFC", joined).translate(FOLD).split("\x1e")
    if len(parts) != len(texts):  # a text held the separator itself: one at a time
        return [normalize(t) for t in texts]
    return [
        p.strip() if p.isprintable() and "\ufffd" not in p and "  " not in p else normalize(p)
        for p in parts
    ]


def _drop_surrogates(text: str) -> str:
    return text.encode("utf-8", "ignore").decode("utf-8") if SURROGATE.search(text) else text


def _keep(c: str) -> bool:
    if c.isspace():
        return True
    if ord(c) in DROP:
        return False
    return unicodedata.category(c) not in ("Cc", "Cf", "Cs", "Co", "Cn")


def is_cjk(c: str) -> bool:
    o = ord(c)
    return (
        0x4E00 <= o <= 0x9FFF
        or 0x3400 <= o <= 0x4DBF
        or 0x20000 <= o <= 0x2FA1F
        or 0xF900 <= o <= 0xFAFF
    )


def sentences(text: str) -> list[str]:
    """Split after 。！？!?；; and newlines, keeping the punctuation with its sentence."""
    return [s for s in SENTENCE_END.split(text) if s.strip()]


def cut(text: str, max_chars: int) -> list[str]:
    """Pieces of at most `max_chars`, cut at sentence ends where possible."""
    if len(text) <= max_chars:
        return [text]
    pieces, cur = [], ""
    for sent in sentences(text):
        while len(sent) > max_chars:  # one sentence longer than a piece: cut it hard
            if cur:
                pieces.append(cur)
                cur = ""
            pieces.append(sent[:max_chars])
            sent = sent[max_chars:]
        if len(cur) + len(sent) > max_chars:
            pieces.append(cur)
            cur = ""
        cur += sent
    if cur.strip():
        pieces.append(cur)
    return [p.strip() for p in pieces if p.strip()]


def bucket(text: str) -> float:
    """A stable number in [0, 1) from the text's hash: the deterministic split key."""
    return int(hashlib.sha1(text.encode("utf-8")).hexdigest()[:13], 16) / 16**13


def assign_split(key: str, valid_frac: float, test_frac: float, *, salt: str) -> str:
    """train / valid / test by the hash of `salt` + `key`. Each use has its own salt, so that
    (say) the corpus's valid split is not the same hash range as a task's evaluation split."""
    u = bucket(salt + key)
    if u < valid_frac:
        return "valid"
    if u < valid_frac + test_frac:
        return "test"
    return "train"


@cache
def _t2s():
    import opencc

    return opencc.OpenCC("t2s")


def to_simplified(text: str) -> str:
    return _t2s().convert(text)


def traditional_chars(chars: set[str]) -> set[str]:
    """The characters OpenCC's t2s would change: Traditional forms."""
    conv = _t2s()
    return {c for c in chars if is_cjk(c) and conv.convert(c) != c}


# ---------------------------------------------------------------------------------------------
# many fixed texts looked up inside documents, with memory that does not grow with the documents


def _codepoints(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)


def ngram_hashes(text: str, n: int) -> np.ndarray:
    """Polynomial hashes (mod 2**64) of every n-character window of `text`."""
    cps = _codepoints(text)
    m = len(cps) - n + 1
    if m <= 0:
        return np.zeros(0, dtype=np.uint64)
    h = cps[:m].copy()
    base = np.uint64(1_000_003)
    with np.errstate(over="ignore"):
        for j in range(1, n):
            np.multiply(h, base, out=h)
            np.add(h, cps[j : j + m], out=h)
    return h


def skeleton(text: str) -> str:
    """The letters of a text (CJK ideographs and alphabetic characters): what stays of a near copy
    once punctuation, digits and spaces are changed."""
    return "".join(c for c in text if c.isalpha())


class Needles:
    """Which of many fixed texts (the tasks' evaluation texts) each document contains, exactly or
    nearly.

    Exactly: a text of `n` or more characters counts wherever it occurs as a substring: the texts'
    first n-character windows are hashed into a sorted array; a batch of documents is hashed window
    by window (numpy, one batch at a time, so memory does not grow with the corpus), looked up, and
    every hit confirmed by comparing the text itself. A text shorter than `n` ("很好", "不错") would
    match ordinary phrases anywhere, so it counts only where a whole document equals it.

    Nearly (`near`): a document nearly contains a text when at least `threshold` of the text's
    character `gram`-grams (of its skeleton: letters only, so changed punctuation or digits do not
    hide it) occur in the document's skeleton. Grams that many texts share (common phrases) are no
    evidence and are left out of both counts; texts with fewer than 3 grams left are only matched
    exactly.
    """

    def __init__(self, texts: list[str], n: int = 8, *, threshold: float = 0.8, gram: int = 5,
                 common: int = 50):  # fmt: skip
        self.n = n
        self.texts = list(texts)
        self.threshold, self.gram = threshold, gram
        self._near_index(common)
        self.short = {t: i for i, t in enumerate(self.texts) if len(t) < n}
        long_ids = [i for i, t in enumerate(self.texts) if len(t) >= n]
        firsts = np.asarray([ngram_hashes(self.texts[i][:n], n)[0] for i in long_ids], np.uint64)
        order = np.argsort(firsts, kind="stable")
        self.keys = firsts[order]
        self.ids = np.asarray(long_ids, dtype=np.int64)[order]
        self.seen = np.zeros(1 << 24, dtype=bool)  # a first filter on the hash's low 24 bits
        self.seen[self.keys & np.uint64((1 << 24) - 1)] = True

    def _near_index(self, common: int) -> None:
        keys, owners = [], []
        for i, t in enumerate(self.texts):
            h = np.unique(ngram_hashes(skeleton(t), self.gram))
            keys.append(h)
            owners.append(np.full(len(h), i, dtype=np.int64))
        key = np.concatenate(keys) if keys else np.zeros(0, np.uint64)
        owner = np.concatenate(owners) if owners else np.zeros(0, np.int64)
        uniq, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
        keep = counts[inverse] <= common
        key, owner = key[keep], owner[keep]
        order = np.argsort(key, kind="stable")
        self.near_keys, self.near_owners = key[order], owner[order]
        self.near_grams = np.bincount(owner, minlength=len(self.texts))  # grams per text
        self.near_ok = self.near_grams >= 3

    def near(self, docs: list[str]) -> dict[int, set[int]]:
        """{document index: ids of the texts it nearly contains} (see the class)."""
        if self.threshold <= 0 or not len(self.near_keys) or not docs:
            return {}
        pairs = []
        for d, doc in enumerate(docs):
            h = np.unique(ngram_hashes(skeleton(doc), self.gram))
            lo = np.searchsorted(self.near_keys, h, side="left")
            hi = np.searchsorted(self.near_keys, h, side="right")
            hit = hi > lo
            if not hit.any():
                continue
            lo, hi = lo[hit], hi[hit]
            span = hi - lo
            at = np.repeat(lo - np.cumsum(span) + span, span) + np.arange(span.sum())
            pairs.append(self.near_owners[at] * len(docs) + d)
        if not pairs:
            return {}
        both, counts = np.unique(np.concatenate(pairs), return_counts=True)
        text, doc = both // len(docs), both % len(docs)
        close = self.near_ok[text] & (counts >= self.threshold * self.near_grams[text])
        found: dict[int, set[int]] = {}
        for t, d in zip(text[close], doc[close]):
            found.setdefault(int(d), set()).add(int(t))
        return found

    def scrub(self, text: str) -> tuple[str, set[int]]:
        """A long document without its lines that contain, or nearly contain, any of the texts;
        and the ids of the texts found."""
        lines = text.split("\n")
        hits = self.find(lines)
        near = self.near(lines)
        bad = set(hits) | set(near)
        ids = set().union(*hits.values(), *near.values())
        return "\n".join(line for i, line in enumerate(lines) if i not in bad), ids

    def find(self, docs: list[str]) -> dict[int, set[int]]:
        """{document index: ids of the texts it contains} for the documents that contain any."""
        found: dict[int, set[int]] = {}
        for d, doc in enumerate(docs):
            if doc in self.short:
                found.setdefault(d, set()).add(self.short[doc])
        if not len(self.keys) or not docs:
            return found
        joined = "\x00".join(docs)  # normalised text holds no NUL: no window spans two documents
        starts = np.cumsum([0] + [len(t) + 1 for t in docs[:-1]])
        h = ngram_hashes(joined, self.n)
        maybe = np.flatnonzero(self.seen[h & np.uint64((1 << 24) - 1)])
        at = np.minimum(np.searchsorted(self.keys, h[maybe]), len(self.keys) - 1)
        for pos, k in zip(maybe[self.keys[at] == h[maybe]], at[self.keys[at] == h[maybe]]):
            while (
                k < len(self.keys) and self.keys[k] == h[pos]
            ):  # every text with this first window
                text = self.texts[self.ids[k]]
                if joined.startswith(text, pos):
                    d = int(np.searchsorted(starts, pos, side="right")) - 1
                    found.setdefault(d, set()).add(int(self.ids[k]))
                k += 1
        return found


# ---------------------------------------------------------------------------------------------
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


def classes_of(codes: np.ndarray) -> np.ndarray:
    out = np.empty(len(codes), dtype=np.int8)
    bmp = codes < 0x10000
    out[bmp] = _class_table()[codes[bmp]]
    for i in np.flatnonzero(~bmp):
        out[i] = char_class(chr(codes[i]))
    return out


def codes_of(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)


def alnum_runs(texts: list[str]) -> Counter:
    """How often each run of "run" characters (letters, digits, ...: what WordPiece cuts into
    pieces) occurs in `texts`; every other character is a token of its own or nothing."""
    joined = " ".join(texts)
    is_run = classes_of(codes_of(joined)) == RUN
    edges = np.flatnonzero(np.diff(np.concatenate([[False], is_run, [False]]).astype(np.int8)))
    return Counter(joined[a:b] for a, b in zip(edges[::2], edges[1::2]))
