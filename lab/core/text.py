"""Chinese text helpers shared by the stages: normalisation, sentences, character classes, hashing."""

from __future__ import annotations

import hashlib
import re
import unicodedata
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


def _drop_surrogates(text: str) -> str:
    return text.encode("utf-8", "ignore").decode("utf-8") if _has_surrogate(text) else text


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


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
# exact containment of many short texts in one large text, via n-gram hashes


def _codepoints(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)


def ngram_hashes(text: str, n: int) -> np.ndarray:
    """Polynomial hashes (mod 2**64) of every n-character window of `text`."""
    cps = _codepoints(text)
    m = len(cps) - n + 1
    if m <= 0:
        return np.zeros(0, dtype=np.uint64)
    h = np.zeros(m, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(n):
            h = h * np.uint64(1_000_003) + cps[j : j + m]
    return h


class Haystack:
    """Answers `needle in text` for many needles quickly: n-gram hashes prune, `in` confirms."""

    def __init__(self, texts: list[str], n: int = 8):
        self.n = n
        self.text = "\x00".join(texts)
        self.grams = np.sort(ngram_hashes(self.text, n))
        self.texts = texts
        self.whole = set(texts)
        self.starts = np.cumsum([0] + [len(t) + 1 for t in texts[:-1]])

    def find_docs(self, needle: str) -> list[int]:
        """Indices of the texts that contain `needle` (that equal it, if it is shorter than n)."""
        if len(needle) < self.n:
            return [i for i, t in enumerate(self.texts) if t == needle]
        found, pos = set(), self.text.find(needle)
        while pos != -1:
            found.add(int(np.searchsorted(self.starts, pos, side="right")) - 1)
            pos = self.text.find(needle, pos + 1)
        return sorted(found)

    def __contains__(self, needle: str) -> bool:
        if len(needle) < self.n:
            return needle in self.whole
        h = ngram_hashes(needle, self.n)
        idx = np.searchsorted(self.grams, h)
        idx[idx == len(self.grams)] = 0
        if not np.all(self.grams[idx] == h):
            return False
        return needle in self.text
