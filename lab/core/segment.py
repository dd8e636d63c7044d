r"""Chinese word segmentation for whole-word masking: jieba's output, computed fast.

`jieba` (the reference, what UER's and Longformer_ZH's WWM use) segments People's Daily at about
0.3 M chars/s on one core; `rjieba`, a Rust port with the same dictionary, at about 3 M chars/s.
The two agree everywhere except on runs of ASCII letters, digits and `. - + # & _ %` that are not
dictionary words ("1.3nm", "KJB-2", "3-4"): rjieba keeps such a run whole, jieba's fallback cuts it
into `[a-zA-Z0-9]+(\.\d+)?%?` pieces and the characters between. The `jieba` segmenter runs rjieba
and re-cuts those runs the way jieba does (on the 230,000 documents of the default corpus the
result equals jieba's on every one), sends the rare text with characters the two classify
differently (CJK extension A, compatibility ideographs) to jieba, and checks on a sample of each
corpus that it equals pure jieba before it is trusted. With a user dictionary or custom words, or
without rjieba installed, it is pure jieba.
"""

from __future__ import annotations

import multiprocessing
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from lab.core.errors import LabError

ASCII_RUN = re.compile(r"^[A-Za-z0-9+#&._%\-]+$")
JIEBA_SKIP = re.compile(r"([a-zA-Z0-9]+(?:\.\d+)?%?)")  # jieba.finalseg's re_skip
MIXED_ASCII = re.compile(r"[A-Za-z0-9][.+#&_%\-]|[.+#&_%\-][A-Za-z0-9]|[0-9][A-Za-z]|[A-Za-z][0-9]")
# characters rjieba treats as Han and jieba does not (CJK extension A, compatibility ideographs, ...)
HAN_EDGE = re.compile("[\u3400-\u4dbf\u9fd6-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f]")
SEGMENTERS = ("jieba", "jieba-python")


class SegmenterError(LabError, ValueError):
    """A segmenter that cannot be built: an unknown engine, a user dictionary that is not there."""


def quiet_jieba():
    """The jieba module, its dictionary-loading messages (debug lines on stderr) silenced."""
    import logging

    import jieba

    jieba.setLogLevel(logging.WARNING)
    return jieba


@dataclass
class Segmenter:
    """jieba's default (HMM) segmentation; picklable, so `datasets.map` workers can use it."""

    name: str = "jieba"
    user_dict: str = ""
    words: tuple[str, ...] = ()
    fast: bool = field(default=True)  # set False when a check against jieba fails

    def __post_init__(self):
        if self.name not in SEGMENTERS:
            raise SegmenterError(f"segmenter {self.name!r}: choose one of {SEGMENTERS}")
        if self.user_dict:
            self.user_dict = str(Path(self.user_dict).expanduser())
        if self.user_dict and not Path(self.user_dict).is_file():
            raise SegmenterError(f"jieba user dictionary {self.user_dict!r}: no such file")
        if self.name == "jieba-python" or self.user_dict or self.words or not _has_rjieba():
            self.fast = False

    @property
    def engine(self) -> str:
        return "rjieba + jieba (identical to jieba)" if self.fast else "jieba"

    @cached_property
    def _jieba(self):
        jieba = quiet_jieba()
        if not (self.user_dict or self.words):
            jieba.dt.initialize()
            return jieba.dt  # the shared default dictionary, loaded once per process
        tok = jieba.Tokenizer()
        if self.user_dict:
            tok.load_userdict(self.user_dict)
        for w in self.words:
            tok.add_word(w)
            tok.suggest_freq(w, tune=True)  # make sure it stays whole
        tok.initialize()
        return tok

    def __getstate__(self):  # the jieba dictionary is rebuilt in each worker, not pickled
        state = self.__dict__.copy()
        state.pop("_jieba", None)
        return state

    def cut(self, text: str) -> list[str]:
        if not self.fast or HAN_EDGE.search(text):
            return self._jieba.lcut(text)
        import rjieba

        words = rjieba.cut(text)
        if not MIXED_ASCII.search(text):
            return words
        # rjieba keeps a run of ASCII letters, digits and . - + # & _ % whole where jieba's HMM
        # fallback cuts it (unless it is a dictionary word): re-cut those words, and only those
        bad = [i for i, w in enumerate(words) if w.isascii() and MIXED_ASCII.search(w)
               and ASCII_RUN.match(w) and not rjieba.has_word(w)]  # fmt: skip
        if not bad:
            return words
        out: list[str] = []
        prev = 0
        for i in bad:
            out += words[prev:i]
            out += [x for x in JIEBA_SKIP.split(words[i]) if x]
            prev = i + 1
        return out + words[prev:]

    def check(self, texts: list[str]) -> int:
        """Texts where this segmenter differs from pure jieba; falls back to jieba if any do."""
        return self.start_check(texts, background=False)()

    def start_check(self, texts: list[str], *, background: bool = True) -> Callable[[], int]:
        """Compare with pure jieba on `texts`, in a forked process while the caller goes on
        (loading jieba's dictionary alone takes most of a second). Call the result to wait for the
        number of texts that differ; if any do, this segmenter falls back to pure jieba."""
        if not self.fast:
            return lambda: 0
        try:
            ctx = multiprocessing.get_context("fork") if background else None
        except ValueError:  # no fork on this platform: check in this process
            ctx = None
        if ctx is None:
            differ = _count_differences(self, texts)
            return lambda: self._settle(differ)
        recv, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_check_into, args=(self, texts, send), daemon=True)
        proc.start()
        send.close()

        def wait() -> int:
            differ = recv.recv()
            proc.join()
            return self._settle(differ)

        return wait

    def _settle(self, differ: int) -> int:
        if differ:
            self.fast = False
        return differ


def _count_differences(seg: Segmenter, texts: list[str]) -> int:
    return sum(seg.cut(t) != seg._jieba.lcut(t) for t in texts)


def _check_into(seg: Segmenter, texts: list[str], conn) -> None:
    conn.send(_count_differences(seg, texts))
    conn.close()


def _has_rjieba() -> bool:
    try:
        import rjieba  # noqa: F401
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# quality against a gold segmentation


def spans(words: list[str]) -> list[tuple[int, int]]:
    out, pos = [], 0
    for w in words:
        out.append((pos, pos + len(w)))
        pos += len(w)
    return out


def score(
    gold: list[list[str]], pred: list[list[str]], tags: list[list[str]] | None = None
) -> dict:
    """Word-level precision / recall / F1 (SIGHAN style) and the disagreements by type.

    A gold word the segmenter missed is `merged` when it lies inside a longer predicted word (the
    segmenter joined gold words), `split` when predicted words lie inside it (the segmenter cut it),
    and `crossing` otherwise. Types are also counted by the gold word's POS tag.
    """
    n_gold = n_pred = n_ok = 0
    kinds: Counter = Counter()
    by_tag: Counter = Counter()
    examples: dict[str, list] = {"merged": [], "split": [], "crossing": []}
    for i, (g, p) in enumerate(zip(gold, pred)):
        gs, ps = spans(g), spans(p)
        pset = set(ps)
        n_gold += len(gs)
        n_pred += len(ps)
        n_ok += len(set(gs) & pset)
        text = "".join(g)
        for j, (a, b) in enumerate(gs):
            if (a, b) in pset:
                continue
            inside = [s for s in ps if s[0] <= a and b <= s[1]]
            within = [s for s in ps if a <= s[0] and s[1] <= b]
            if inside:
                kind = "merged"
                show = text[inside[0][0] : inside[0][1]]
            elif within and within[0][0] == a and within[-1][1] == b:
                kind = "split"
                show = " / ".join(text[s0:s1] for s0, s1 in within)
            else:
                kind = "crossing"
                show = " / ".join(text[s0:s1] for s0, s1 in ps if s0 < b and s1 > a)
            kinds[kind] += 1
            tag = tags[i][j] if tags else ""
            by_tag[(kind, tag)] += 1
            if len(examples[kind]) < 12:
                examples[kind].append({"gold": text[a:b], "tag": tag, "segmenter": show})
    p = n_ok / max(1, n_pred)
    r = n_ok / max(1, n_gold)
    return {
        "precision": p,
        "recall": r,
        "f1": 2 * p * r / max(1e-12, p + r),
        "gold_words": n_gold,
        "predicted_words": n_pred,
        "missed_by_type": dict(kinds),
        "missed_by_type_and_tag": [
            {"type": k, "tag": t, "count": n} for (k, t), n in by_tag.most_common(15)
        ],
        "examples": examples,
    }
