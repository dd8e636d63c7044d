import numpy as np
import pytest
import torch

from lab.core import longdocs, models, sources, vocab
from lab.core.attention import block_attention
from lab.core.longformer import ConversionError, convert, equivalence
from lab.core.metrics import bits_per_char, document_nats


@pytest.fixture(scope="module")
def tok():
    return vocab.make_tokenizer(sources.load("bert_vocab"))


@pytest.fixture(scope="module")
def bert(tok):
    return models.build("L2_H64", len(tok), seed=3, dropout=0.0)


def test_conversion_reproduces_bert_inside_one_window(tok, bert):
    long = convert(bert, max_positions=1024, attention_window=64)
    assert long.config.max_position_embeddings == 1024 + 1  # positions start at pad + 1
    diff = equivalence(bert, long, tok, "中国的首都是北京。" * 10, [tok.cls_token_id])
    assert diff < 1e-5
    pos = long.longformer.embeddings.position_embeddings.weight
    old = bert.bert.embeddings.position_embeddings.weight
    assert torch.equal(pos[1 : 1 + 512], old) and torch.equal(pos[1 + 512 : 1 + 1024], old)  # tiled
    layer = long.longformer.encoder.layer[0].attention.self
    assert torch.equal(layer.query_global.weight, layer.query.weight)


@pytest.mark.parametrize("flash", [True, False], ids=["flash-band", "sdpa-checkpointed"])
def test_block_attention_computes_what_transformers_computes(bert, flash, monkeypatch):
    """Values and gradients against transformers' sliding-window code (with its own padding mask):
    padding, no global token, rows with different numbers of global tokens (none in one), global
    tokens inside each other's window, a row of padding alone; through the CPU flash kernel's band
    function and through the path other devices and dropout take."""
    import copy

    from transformers import masking_utils
    from transformers.models.longformer import modeling_longformer

    from lab.core import attention, band

    monkeypatch.setattr(band, "CHUNK", 8)  # the band's windows two blocks at a time: edges inside
    if not flash:
        monkeypatch.setattr(attention, "_flash_band", lambda x, p: False)
    torch.manual_seed(0)
    ref = convert(bert, max_positions=1024, attention_window=8)
    fast = copy.deepcopy(ref)
    block_attention(fast)
    ref.train(), fast.train()  # dropout is 0: train mode only checks the training path
    zero_in_theory = ("key.bias", "key_global.bias")  # softmax ignores a key bias: noise only
    cases = [(37, [[0], [0, 2, 20]], 4), (16, [[], []], 4), (30, [[5], []], 4), (20, [[0], []], 20),
             (9, [[0, 3], [4]], 4)]  # fmt: skip
    for length, global_at, padded in cases:
        x = torch.randint(5, 1000, (2, length))
        mask = torch.ones(2, length, dtype=torch.long)
        mask[1, length - padded :] = 0
        glob = torch.zeros(2, length, dtype=torch.long)
        for row, at in enumerate(global_at):
            glob[row, at] = 1
        out = []
        for model in (ref, fast):
            own = masking_utils.create_bidirectional_mask  # the reference as transformers has it
            rows = own if model is ref else attention._first_row_mask
            monkeypatch.setattr(modeling_longformer, "create_bidirectional_mask", rows)
            model.zero_grad()
            logits = model(input_ids=x, attention_mask=mask, global_attention_mask=glob).logits
            (logits * mask[..., None]).square().mean().backward()
            grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
            assert all(g.isfinite().all() for g in grads.values())
            out.append((logits.detach() * mask[..., None], grads))
        torch.testing.assert_close(out[1][0], out[0][0], atol=1e-5, rtol=1e-5)
        for name, g in out[0][1].items():
            if not name.endswith(zero_in_theory):
                torch.testing.assert_close(out[1][1][name], g, atol=1e-5, rtol=1e-4)
    out = fast(input_ids=x, global_attention_mask=glob, output_attentions=True)
    # transformers' maps, for the viewer: 9 rows (not padded), 2 global + 8 + 1 window columns
    assert out.attentions[0].shape[-2:] == (9, 2 + 8 + 1)
    assert out.global_attentions[0].shape[-2:] == (9, 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_longformer_mask_row_is_the_row_of_transformers_square_mask(dtype):
    """`_first_row_mask` against the (B, 1, T, T) mask transformers 5 builds, then keeps row 0 of:
    padding, a row of padding alone, global tokens (2 in the merged mask), eager and sdpa."""
    from transformers import LongformerConfig
    from transformers.masking_utils import create_bidirectional_mask

    from lab.core.attention import _first_row_mask

    for impl in ("eager", "sdpa"):
        config = LongformerConfig(hidden_size=16, num_attention_heads=2, attention_window=[4])
        config._attn_implementation = impl
        embeds = torch.randn(3, 12, 16, dtype=dtype)
        merged = torch.ones(3, 12, dtype=torch.long)
        merged[0, 0], merged[1, 9:], merged[2] = 2, 0, 0
        kept = torch.clamp(merged, 0, 1)
        square = create_bidirectional_mask(config=config, inputs_embeds=embeds, attention_mask=kept,
                                           allow_is_bidirectional_skip=False)  # fmt: skip
        row = _first_row_mask(config=config, inputs_embeds=embeds, attention_mask=kept,
                              allow_is_bidirectional_skip=False)  # fmt: skip
        assert square.shape == (3, 1, 12, 12) and row.shape == (3, 1, 1, 12)
        assert torch.equal(row[:, 0, 0], square[:, 0, 0])


def test_the_flash_band_in_bf16_matches_the_checkpointed_path(bert, monkeypatch):
    """Under bf16 autocast, as the lab trains: the same logits and gradients within bf16's rounding."""
    from lab.core import attention, band, train

    monkeypatch.setattr(band, "CHUNK", 16)
    long = convert(bert, max_positions=1024, attention_window=8)
    block_attention(long)
    long.train()
    torch.manual_seed(1)
    x = torch.randint(5, 1000, (2, 70))
    mask = torch.ones_like(x)
    mask[0, 60:] = 0
    glob = torch.zeros_like(x)
    glob[:, 0] = 1
    glob[1, 33] = 1
    out = []
    for flash in (True, False):
        monkeypatch.setattr(attention, "_flash_band", lambda x, p, flash=flash: flash)
        long.zero_grad()
        with train.autocast(torch.device("cpu"), True):
            logits = long(input_ids=x, attention_mask=mask, global_attention_mask=glob).logits
        (logits.float() * mask[..., None]).square().mean().backward()
        grads = {n: p.grad.clone() for n, p in long.named_parameters() if p.grad is not None}
        out.append((logits.detach().float() * mask[..., None], grads))
    torch.testing.assert_close(out[0][0], out[1][0], atol=0.05, rtol=0.02)
    for name, g in out[1][1].items():
        if not name.endswith(("key.bias", "key_global.bias")):
            scale = g.abs().max().clamp_min(1e-6)
            assert (out[0][1][name] - g).abs().max() / scale < 0.05, name


def test_bad_conversions(bert, tok):
    with pytest.raises(ConversionError, match="must be a positive even number"):
        convert(bert, attention_window=63)
    with pytest.raises(ConversionError, match="below the source model's 512 positions"):
        convert(bert, max_positions=256, attention_window=64)
    long = convert(bert, max_positions=1024, attention_window=64)
    with pytest.raises(ConversionError, match="converts BERT models; this one is a 'longformer'"):
        convert(long)


def test_chunks_bpc_and_probe(tok, bert):
    from lab.core.segment import Segmenter

    name = "曹操"
    doc = name + "来了。" + "今天天气很好，我们去公园散步。" * 40 + name + "又来了。"
    ids, wids, chars = longdocs.tokenize_docs([doc], tok, Segmenter("jieba"))
    x, w = longdocs.chunk_docs(ids, wids, 128, 101, 102, 0)
    assert x.shape[1] == 128 and (x[:, 0] == 101).all()
    from lab.core.masking import WholeWordMaskCollator

    masks = longdocs.fixed_masks(ids, wids, WholeWordMaskCollator(tok, whole_word=False), 0)
    bpc = bits_per_char(
        *document_nats(bert, ids, chars, masks, window=128, cls_id=101, sep_id=102, mask_id=103)
    )
    assert np.isfinite(bpc) and bpc > 0
    name_ids = tok(name, add_special_tokens=False)["input_ids"]
    found = longdocs.probe_instances(ids, wids, [name_ids], min_gap=300, limit=5)
    assert len(found) == 1 and found[0]["gap"] > 300
    long = convert(bert, max_positions=1024, attention_window=64)
    r = longdocs.probe_accuracy(
        long,
        ids,
        found,
        window=1024,
        right=8,
        cls_id=101,
        sep_id=102,
        mask_id=103,
        global_ids=[101],
    )
    assert r["instances"] == 1 and 0 <= r["char_acc"] <= 1


def test_banded_attention_rows_are_distributions(tok, bert):
    long = convert(bert, max_positions=1024, attention_window=16)
    ids = np.array(tok("中国的首都是北京。" * 8, add_special_tokens=False)["input_ids"])
    a = longdocs.banded_attention(long, ids, [101], cls_id=101, sep_id=102, mask_id=103)
    assert a.shape == (len(ids) + 2, len(ids) + 2)
    assert np.allclose(a.sum(1), 1, atol=1e-4)
    assert (a[40, :30] == 0).sum() > 0 and a[40, 0] > 0  # outside the band: zero; [CLS] is global


def test_names_followed_by_a_verb_fold_into_the_name():
    from collections import Counter

    merged = longdocs.merge_prefixed(Counter({"玄德": 5, "玄德曰": 3, "孔明曰": 2, "诸葛亮": 4}))
    assert merged == Counter({"玄德": 8, "诸葛亮": 4, "孔明曰": 2})


def test_person_names_are_tagged_once_and_read_back_in_the_same_order(tmp_path, monkeypatch):
    """The names longify probes come from jieba's tagging, kept in the cache after the first run;
    the second run reads them without tagging and gets the same names in the same order, and an
    unreadable file is tagged again."""
    import jieba.posseg

    text = "\n".join(sources.load("sanguo"))[:20_000]  # from the sources cache, before moving it
    monkeypatch.setenv("ZH_MINILAB_CACHE", str(tmp_path))
    first = longdocs.name_counts([text])
    assert first["玄德"] > 0 and first["曹操"] > 0
    assert list(tmp_path.glob("derived/person-names-*.json"))

    def untagged(*_a, **_k):
        raise AssertionError("tagged again")

    monkeypatch.setattr(jieba.posseg, "cut", untagged)
    again = longdocs.name_counts([text])
    assert list(again.items()) == list(first.items())
    for broken in ("{", "null", '["玄德"]'):  # unreadable, or not a table of counts
        next(tmp_path.glob("derived/person-names-*.json")).write_text(broken, encoding="utf-8")
        with pytest.raises(AssertionError, match="tagged again"):
            longdocs.name_counts([text])


def uniform(tokenizer):
    """A BERT whose every prediction is uniform over the vocabulary (-ln p = ln V per token): its
    output projection, tied to the word embeddings, and the output bias are zero."""
    model = models.build("L2_H32_A2", len(tokenizer), seed=0, dropout=0.0)
    with torch.no_grad():
        model.get_output_embeddings().weight.zero_()
        model.get_output_embeddings().bias.zero_()
    return model


@pytest.mark.parametrize("which", ["full", "compact"])
def test_bits_per_character_by_hand(tok, which):
    """One definition for both vocabularies: -log2 p over the masked tokens / their characters, the
    special tokens from the tokenizer (whatever their ids), [UNK] one character."""
    from lab.core.metrics import mlm_metrics, token_chars

    t = tok if which == "full" else vocab.make_tokenizer(
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "北", "京", "##京", "the", "##ing"]
    )  # fmt: skip
    pieces = ["[CLS]", "北", "##京", "the", "[UNK]", "[SEP]"]
    ids = np.array(t.convert_tokens_to_ids(pieces))
    chars = token_chars(t)[ids]
    assert chars.tolist() == [0, 1, 1, 3, 1, 0]  # [CLS] is 101 in one vocab and 2 in the other
    masks = [np.array([False, True, True, True, True, False])]
    nats, covered = document_nats(uniform(t), [ids[1:-1]], [chars[1:-1]], [masks[0][1:-1]],
                                  window=16, cls_id=t.cls_token_id, sep_id=t.sep_token_id,
                                  mask_id=t.mask_token_id, bf16=False)  # fmt: skip
    assert covered == 6
    assert bits_per_char(nats, covered) == pytest.approx(4 * np.log2(len(t)) / 6)
    # the held-out metric of the evaluate stage counts the same way
    words = np.arange(len(ids))
    m = mlm_metrics(uniform(t), ids[None].repeat(50, 0), words[None].repeat(50, 0), t)
    assert m["bpc"] == pytest.approx(np.log2(len(t)) * m["masked"] / m["masked_chars"])


class Recorder(torch.nn.Module):
    """A stand-in masked LM that notes every input, and whose prediction at a position depends on
    that position's own token only (it attends to nothing but itself)."""

    config = type("Config", (), {"model_type": "bert"})()

    def __init__(self, vocab_size: int = 5000):
        super().__init__()
        self.vocab_size, self.seen = vocab_size, []
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None, **_):
        self.seen.append((input_ids.clone(), attention_mask.clone()))
        logits = torch.nn.functional.one_hot(input_ids % self.vocab_size, self.vocab_size).float()
        return type("Out", (), {"logits": logits})()


KW = dict(cls_id=101, sep_id=102, mask_id=103, bf16=False)


def test_the_scored_span_never_moves_with_the_context_length():
    """Every context length sees the same input at the same positions, the same tokens masked:
    only the attention mask differs, and only over tokens before the context."""
    rng = np.random.default_rng(0)
    ids, chars = rng.integers(1000, 5000, 700), np.ones(700, dtype=np.int64)
    model = Recorder()
    contexts = [0, 64, 128, 256]
    longdocs.context_gain(model, [ids], [chars], contexts=contexts, span=32, length=320, spans_per_doc=2,
                          mask_share=0.25, **KW)  # fmt: skip
    assert len(model.seen) == 2 * 4  # two windows of the document, four maskings of each span
    scored = set()
    for x, keys in model.seen:
        assert (x == x[0]).all()  # one input for every context length
        masked = (x[0] == 103).nonzero().flatten().tolist()
        assert (
            masked and min(masked) >= 320 - 1 - 32 and max(masked) <= 320 - 2
        )  # the span's positions
        scored |= set(masked)
        for b, c in enumerate(contexts):  # hidden: exactly the tokens more than c before the span
            hidden = (keys[b] == 0).nonzero().flatten().tolist()
            assert hidden == list(range(1, 1 + 320 - 2 - 32 - c))
    assert scored == set(
        range(320 - 1 - 32, 320 - 1)
    )  # every token of the span scored once a window


def test_a_model_that_attends_only_to_itself_shows_no_context_gain():
    from lab.core import longeval

    rng = np.random.default_rng(1)
    docs = [rng.integers(1000, 5000, 900) for _ in range(6)]
    test = {"ids": docs, "chars": [np.ones(900, dtype=np.int64)] * 6}
    c = longeval.curve(Recorder(), test, contexts=[0, 128, 512, 760], span=64, length=830, spans_per_doc=2,
                       mask_share=0.15, global_ids=None, bf16=False,
                       specials={k: v for k, v in KW.items() if k != "bf16"})  # fmt: skip
    found = longeval.gain(c["per_doc"], 512, 760, claim="more context helps")
    assert found["difference"] == 0 and found["verdict"] == "inconclusive" and found["units"] == 6
    assert c["mean"]["0"]["bpc"] == c["mean"]["760"]["bpc"]


def test_hidden_context_is_hidden_from_a_real_bert_and_a_converted_longformer(tok, bert):
    """Tokens more than c before the span change nothing at context c (they are masked as keys),
    and do change the scores at a context that reaches them; the same for the Longformer, whose
    global [CLS] must not carry them either."""
    rng = np.random.default_rng(2)
    ids = rng.integers(1000, 5000, 600)
    chars = np.ones(600, dtype=np.int64)
    other = ids.copy()
    other[: 600 - 32 - 64] = rng.integers(
        1000, 5000, 600 - 32 - 64
    )  # differs before the last 64 + span
    long = convert(bert, max_positions=1024, attention_window=64)
    block_attention(long)
    for model, extra in ((bert, {}), (long, {"global_ids": [101]})):
        kw = dict(
            contexts=[0, 64, 200],
            span=32,
            length=512,
            spans_per_doc=1,
            mask_share=0.25,
            **KW,
            **extra,
        )
        a = longdocs.context_gain(model, [ids], [chars], **kw)
        b = longdocs.context_gain(model, [other], [chars], **kw)
        nats = {c: (a[c][0][0], b[c][0][0]) for c in a}  # one document: its (nats, characters)
        same = {c: abs(x - y) < 1e-7 for c, (x, y) in nats.items()}  # a random model: small effects
        assert same == {0: True, 64: True, 200: False}
        assert a[0][0][1] == 32  # characters of the span: every token scored
