"""Vocabularies: the real bert-base-chinese 21,128 vocab and a compact CLUE-style vocab from the corpus.

The compact vocab keeps the special tokens and then the Google vocab's tokens in order of their
frequency in the training corpus (tokenized with the full vocab), cut at the target size. Chinese
`##` pieces never occur (BERT splits CJK text into single characters) and Traditional characters are
rare in a Simplified corpus, so this lands where CLUEVocab does (Google vocab minus Traditional
characters and `##` Chinese pieces, 8,021 tokens): every frequent character and Latin piece, nothing
the corpus never uses.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from transformers import BertTokenizer

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
BUILTIN = ("compact", "full")  # the run's own vocabularies; anything else is a tokenizer folder
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
)


def make_tokenizer(tokens: list[str]) -> BertTokenizer:
    """A fast BERT WordPiece tokenizer over `tokens` (ids in list order).

    transformers 5 ignores a `vocab_file=` keyword here (every token comes out [UNK]), so the vocab
    is passed as a dict.
    """
    missing = [t for t in SPECIALS if t not in tokens]
    if missing:
        raise ValueError(f"vocabulary lacks special tokens {missing}")
    if len(set(tokens)) != len(tokens):
        raise ValueError("vocabulary has duplicate tokens")
    return BertTokenizer(vocab={t: i for i, t in enumerate(tokens)}, do_lower_case=True)


def save(tokenizer: BertTokenizer, folder: Path) -> Path:
    """save_pretrained plus a plain vocab.txt (one token a line) for tools that want one."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.model_max_length = 512
    tokenizer.save_pretrained(folder)
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    (folder / "vocab.txt").write_text("".join(t + "\n" for t, _ in vocab), encoding="utf-8")
    return folder


def load(folder: Path) -> BertTokenizer:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def entry_name(entry: str) -> str:
    """The name a vocabulary packs under: compact, full, or a tokenizer folder's own name."""
    if entry in BUILTIN:
        return entry
    folder = os.path.basename(os.path.abspath(os.path.expanduser(entry)))
    return re.sub(r"[^\w.-]+", "-", folder).strip("-.") or "tokenizer"


def packing_fix(name: str) -> str:
    """What to add to wwm.vocabs so that a vocabulary named `name` is packed."""
    if name in BUILTIN:
        return f"add {name} to wwm.vocabs"
    return "a teacher with a vocabulary of its own needs its folder in wwm.vocabs"


def folder_problem(entry: str) -> str | None:
    """Why a tokenizer folder cannot be packed for (None: it can). Whole-word masking gives each
    token the word of its first character, which the fast path does for WordPiece vocabularies with
    one token per Chinese character: what BERT-family Chinese checkpoints ship."""
    folder = Path(entry).expanduser()
    if not folder.is_dir():
        return f"{entry!r} is neither compact, full nor a folder"
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        return f"{entry!r} holds no tokenizer ({', '.join(TOKENIZER_FILES[:2])}); save it beside the model"
    if entry_name(entry) in BUILTIN:
        return f"{entry!r} would pack under the name of the run's own vocabulary; rename the folder"
    try:
        tokenizer = load(folder)
        kind = type(tokenizer.backend_tokenizer.model).__name__
    except (OSError, ValueError, AttributeError) as err:
        return f"{entry!r}: no fast tokenizer loads from it ({err})"
    if kind != "WordPiece":
        return f"{entry!r} has a {kind} tokenizer; the wwm stage packs WordPiece (BERT-style) vocabularies"
    specials = ("mask", "cls", "sep", "pad", "unk")
    if missing := [t for t in specials if getattr(tokenizer, f"{t}_token_id") is None]:
        return (
            f"{entry!r}'s tokenizer has no {', '.join(missing)} token; set them and save it again"
        )
    if len(tokenizer("中国", add_special_tokens=False)["input_ids"]) != 2:
        return f"{entry!r}'s tokenizer does not give one token per Chinese character"
    return None


def mismatch(folder: Path, tokenizer) -> str | None:
    """How the tokenizer saved in a model folder differs from `tokenizer`, token by token (None:
    the same tokens with the same ids)."""
    try:
        theirs = load(folder).get_vocab()
    except (OSError, ValueError):
        return "the folder holds no tokenizer (save it beside the model)"
    mine = tokenizer.get_vocab()
    if same_tokens(theirs, mine):
        return None
    moved = sorted(t for t in mine.keys() & theirs.keys() if mine[t] != theirs[t])
    return (f"{len(theirs):,} tokens against {len(mine):,}: {len(theirs.keys() ^ mine.keys()):,} are in one "
            f"only and {len(moved):,} have another id" + (f" (say {moved[:3]})" if moved else ""))  # fmt: skip


def same_tokens(a: dict[str, int], b: dict[str, int]) -> bool:
    """Whether two vocabularies (token -> id) hold the same token at every id, whitespace taken out:
    a vocab.txt read line by line loses a token that is a line separator (bert-base-chinese has
    U+2028), which cleaned text cannot hold anyway."""

    def by_id(vocab: dict[str, int]) -> dict[int, str]:
        return {i: re.sub(r"\s", "", t) for t, i in vocab.items()}

    return by_id(a) == by_id(b)


def token_counts(tokenizer: BertTokenizer, texts: Iterable[str], batch: int = 4000) -> Counter:
    """How often each token id occurs in `texts` (special tokens not added)."""
    backend = tokenizer.backend_tokenizer
    counts: Counter = Counter()
    buf: list[str] = []
    for text in texts:
        buf.append(text)
        if len(buf) == batch:
            _count(backend, buf, counts)
            buf = []
    if buf:
        _count(backend, buf, counts)
    return counts


def _count(backend, texts: list[str], counts: Counter) -> None:
    for enc in backend.encode_batch_fast(texts, add_special_tokens=False):
        counts.update(enc.ids)


def counts_from(chars: Counter, runs: Counter, tokenizer) -> Counter:
    """`token_counts` of a text from its character counts and its runs of letters and digits
    (`lab.core.text.alnum_runs`): a CJK character or a punctuation mark is one token of its own, a run
    goes through WordPiece. Each distinct character and run is tokenized once."""
    from lab.core.text import SPLIT, char_class

    items = [(c, n) for c, n in chars.items() if char_class(c) == SPLIT] + list(runs.items())
    counts: Counter = Counter()
    for start in range(0, len(items), 4000):
        chunk = items[start : start + 4000]
        encs = tokenizer.backend_tokenizer.encode_batch_fast(
            [t for t, _ in chunk], add_special_tokens=False
        )
        for (_, n), enc in zip(chunk, encs):
            for i in enc.ids:
                counts[i] += n
    return counts


def compact_tokens(full: BertTokenizer, counts: Counter, size: int) -> list[str]:
    """Special tokens, then the most frequent corpus tokens of `full` (ties in the full vocabulary's
    order), `size` in all."""
    id_to_token = {i: t for t, i in full.get_vocab().items()}
    order = sorted(counts, key=lambda i: (-counts[i], i))
    ranked = [id_to_token[i] for i in order if id_to_token[i] not in SPECIALS]
    return list(SPECIALS) + ranked[: max(0, size - len(SPECIALS))]


def coverage(tokenizer: BertTokenizer, texts: list[str]) -> dict:
    """[UNK] rate (share of tokens), tokens per character and the vocab size, on `texts`."""
    counts = token_counts(tokenizer, texts)
    n_tokens = sum(counts.values())
    n_chars = sum(len(t.replace(" ", "")) for t in texts)
    return {
        "size": len(tokenizer),
        "unk_rate": counts[tokenizer.unk_token_id] / max(1, n_tokens),
        "tokens_per_char": n_tokens / max(1, n_chars),
        "tokens": n_tokens,
    }
