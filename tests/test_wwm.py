"""Invariants of the Chinese word boundaries, the packing and the masking collator."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lab.core import masking, sources, vocab, wordpiece
from lab.core.masking import WholeWordMaskCollator


@pytest.fixture(scope="module")
def tok():
    return vocab.make_tokenizer(sources.load("bert_vocab"))


@pytest.fixture(scope="module")
def small_tok():
    """A compact vocab that lacks many characters, so [UNK] shows up."""
    full = sources.load("bert_vocab")
    keep = [
        t
        for t in full
        if t.startswith("[")
        or t in set("中国的首都是北京。，我们学习语言模型很好用")
        or t.isascii()
    ]
    return vocab.make_tokenizer(keep)


def tokens(tokenizer, ex):
    return list(zip(tokenizer.convert_ids_to_tokens(ex["input_ids"]), ex["word_ids"]))


def test_encode_words_and_specials(tok):
    (ex,) = wordpiece.encode(["中国的首都是北京。"], tok)
    assert tokens(tok, ex) == [
        ("[CLS]", -1), ("中", 0), ("国", 0), ("的", 1), ("首", 2), ("都", 2), ("是", 3),
        ("北", 4), ("京", 4), ("。", 5), ("[SEP]", -1),
    ]  # fmt: skip


def test_encode_latin_digits_fullwidth_punctuation_unk(tok, small_tok):
    (ex,) = wordpiece.encode(["这款iPhone12很好用，ＡＢＣ１２３！"], tok)
    t = tokens(tok, ex)
    word = dict(t)
    assert word["iphone"] == word["##12"]  # WordPiece pieces stay one word
    for p in ("，", "！"):  # punctuation: its own word
        assert [w for _, w in t].count(word[p]) == 1
    full_width = [w for tok_, w in t if tok_ in ("abc", "##123")]
    assert len(full_width) == 2 and len(set(full_width)) == 1  # folded to ABC123: one word
    (ex,) = wordpiece.encode(["我们学习郁金香很好"], small_tok)
    t = tokens(small_tok, ex)
    unk = [w for tok_, w in t if tok_ == "[UNK]"]
    assert len(unk) == 3 and len(set(unk)) == 1  # 郁金香: one word of three [UNK]s


def test_encode_truncates_and_keeps_lengths_equal(tok):
    (ex,) = wordpiece.encode(["中国" * 100], tok, max_length=16)
    assert len(ex["input_ids"]) == len(ex["word_ids"]) == 16
    assert ex["word_ids"][0] == ex["word_ids"][-1] == -1


TEXT = st.text(
    alphabet=st.sampled_from(list("中国的首都是北京我们学习语言模型很好用鬱㐀豈。，！？、；：（）《》“”")
                              + list("abcXYZ0123456789 .-+%&#_") + list("ＡＢ１２３") + ["😀", "\u3000", "\t"]),
    max_size=60,
)  # fmt: skip


@pytest.fixture(scope="module")
def word_tok(tok):
    return wordpiece.WordTokenizer(tok)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(texts=st.lists(TEXT, min_size=1, max_size=6))
def test_word_tokenizer_equals_plain_tokenization(tok, word_tok, texts):
    """Token ids from words equal the tokenizer's own; word ids are 0..k, non-decreasing, and a
    `##` piece shares its predecessor's word."""
    from lab.core.segment import Segmenter
    from lab.core.text import normalize

    seg = Segmenter("jieba")
    texts = [normalize(t) for t in texts]
    ids, wids, counts = word_tok([seg.cut(t) for t in texts])
    pos = 0
    for text, n in zip(texts, counts):
        plain = tok.backend_tokenizer.encode(text, add_special_tokens=False).ids
        assert ids[pos : pos + n].tolist() == plain
        w = wids[pos : pos + n]
        if n:
            assert w[0] == 0 and np.all(np.diff(w) >= 0) and np.all(np.diff(w) <= 1)
            pieces = tok.convert_ids_to_tokens(ids[pos : pos + n].tolist())
            for k in range(1, n):
                if pieces[k].startswith("##"):
                    assert w[k] == w[k - 1]
        pos += n


def test_pack_full_sequences_no_padding_but_last(tok):
    texts = ["中国的首都是北京。", "我们学习语言模型。", "很好用！"] * 20
    seg_words = [wordpiece._segmenter("jieba").cut(t) for t in texts]
    ids, wids, counts = wordpiece.WordTokenizer(tok)(seg_words)
    x, w = wordpiece.pack(ids, wids, counts, seq_len=16, cls_id=101, sep_id=102, pad_id=0)
    assert x.shape == w.shape and x.shape[1] == 16
    assert (x[:, 0] == 101).all()
    assert (x[:-1] != 0).all()  # only the last sequence may hold padding
    stream = np.concatenate(
        [r[1 : np.flatnonzero(r != 0)[-1]] for r in x]
    )  # without [CLS] ... [SEP]
    expected = np.concatenate(
        [np.append(ids[s : s + n], 102) for s, n in zip(np.cumsum(counts) - counts, counts)]
    )[:-1]
    assert np.array_equal(stream, expected)  # documents joined by [SEP], nothing lost
    for row_ids, row_w in zip(x, w):
        special = np.isin(row_ids, [0, 101, 102])
        assert (row_w[special] == -1).all() and (row_w[~special] >= 0).all()
        assert row_w[~special].min() == 0  # renumbered within the sequence


@pytest.mark.parametrize("chunk", [1, 2, 7, 50])
def test_packing_a_chunk_at_a_time_gives_the_same_sequences(tok, chunk):
    texts = ["中国的首都是北京。", "我们学习语言模型。", "很好用！", "一二三四五六七"] * 15
    words = [wordpiece._segmenter("jieba").cut(t) for t in texts]
    ids, wids, counts = wordpiece.WordTokenizer(tok)(words)
    whole = wordpiece.pack(ids, wids, counts, seq_len=16, cls_id=101, sep_id=102, pad_id=0)
    packer = wordpiece.Packer(seq_len=16, cls_id=101, sep_id=102, pad_id=0)
    starts = np.concatenate([[0], np.cumsum(counts)])
    parts = []
    for a in range(0, len(counts), chunk):  # documents a .. a + chunk
        b = min(a + chunk, len(counts))
        lo, hi = starts[a], starts[b]
        parts.append(packer.add(ids[lo:hi], wids[lo:hi], counts[a:b]))
    parts.append(packer.finish())
    assert np.array_equal(np.concatenate([p[0] for p in parts]), whole[0])
    assert np.array_equal(np.concatenate([p[1] for p in parts]), whole[1])


# --- the collator --------------------------------------------------------------------------------


def _examples(tok, n=64, seed=0):
    rng = np.random.default_rng(seed)
    words = [
        "中国",
        "的",
        "首都",
        "是",
        "北京",
        "。",
        "我们",
        "学习",
        "语言模型",
        "很",
        "好用",
        "，",
    ]
    texts = ["".join(rng.choice(words, size=rng.integers(5, 30))) for _ in range(n)]
    return wordpiece.encode(texts, tok, max_length=64)


def _words(ex):
    w = np.asarray(ex["word_ids"])
    return {k: np.flatnonzero(w == k) for k in np.unique(w[w >= 0])}


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(seed=st.integers(0, 10_000), p=st.sampled_from([0.1, 0.15, 0.3]))
def test_whole_words_are_masked_together_and_specials_untouched(tok, seed, p):
    examples = _examples(tok, 16, seed)
    batch = WholeWordMaskCollator(tok, mlm_probability=p, seed=seed)(examples)
    for b, ex in enumerate(examples):
        n = len(ex["input_ids"])
        labels = batch["labels"][b, :n].numpy()
        ids = batch["input_ids"][b, :n].numpy()
        for positions in _words(ex).values():
            chosen = labels[positions] != -100
            assert chosen.all() or not chosen.any()  # a word is chosen whole or not at all
            if chosen.all():
                assert (labels[positions] == np.asarray(ex["input_ids"])[positions]).all()
                states = {"mask" if (ids[positions] == tok.mask_token_id).all() else "other"}
                assert len(states) == 1
        special = np.asarray(ex["word_ids"]) < 0
        assert (ids[special] == np.asarray(ex["input_ids"])[special]).all()
        assert (labels[special] == -100).all()
        assert (batch["labels"][b, n:] == -100).all() and (
            batch["attention_mask"][b, n:] == 0
        ).all()


def test_mask_rate_and_word_level_80_10_10(tok):
    examples = _examples(tok, 400, 1)
    for whole in (True, False):
        stats = masking.mask_statistics(
            WholeWordMaskCollator(tok, seed=3, whole_word=whole), examples
        )
        assert abs(stats["mask_rate"] - 0.15) < 0.02, stats["mask_rate"]
        assert abs(stats["shares"]["mask"] - 0.8) < 0.05
        assert abs(stats["shares"]["random"] - 0.1) < 0.04
        assert abs(stats["shares"]["kept"] - 0.1) < 0.04
    wwm_stats = masking.mask_statistics(WholeWordMaskCollator(tok, seed=3), examples)
    assert wwm_stats["multi_token_word_share"] > 0.3  # whole words, not characters


def test_same_seed_same_batch_and_static_masks(tok):
    examples = _examples(tok, 8)
    a = WholeWordMaskCollator(tok, seed=7)(examples)
    b = WholeWordMaskCollator(tok, seed=7)(examples)
    c = WholeWordMaskCollator(tok, seed=8)(examples)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["labels"], c["labels"])
    seeds = masking.static_copies(len(examples), 5, seed=1)
    static = [dict(e, mask_seed=int(s)) for e, s in zip(examples, seeds[:, 0])]
    x = WholeWordMaskCollator(tok, seed=1)(static)
    y = WholeWordMaskCollator(tok, seed=999)(static)  # the collator's own seed no longer matters
    assert np.array_equal(x["labels"], y["labels"])
    assert len({int(s) for s in seeds.reshape(-1)}) == seeds.size


def test_max_predictions_caps(tok):
    examples = _examples(tok, 32)
    batch = WholeWordMaskCollator(tok, mlm_probability=0.5, max_predictions=3, seed=0)(examples)
    assert ((batch["labels"] != -100).sum(dim=1) <= 3).all()


def test_bad_collator_arguments(tok):
    with pytest.raises(ValueError, match="mlm_probability"):
        WholeWordMaskCollator(tok, mlm_probability=1.5)
    with pytest.raises(ValueError, match="must lie in"):
        WholeWordMaskCollator(tok, mask_replace_prob=0.9, random_replace_prob=0.2)


def test_transformers_builtin_is_all_or_nothing_on_chinese(tok):
    texts = ["中国的首都是北京。", "我们学习语言模型很好用。"] * 50
    b = masking.builtin_comparison(tok, texts, mlm_probability=0.15, seed=0)
    assert b["all_or_nothing"] > 0.9
