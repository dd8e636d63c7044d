"""Bad inputs end in a clear error before heavy work, or in a documented, tested normalisation."""

import dataclasses
import re
import typing
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lab import config, corpus
from lab.config import ConfigError
from lab.core import documents, wordpiece
from lab.core.kd import DistillError
from lab.core.text import normalize, normalize_many, to_simplified

ROOT = Path(__file__).resolve().parents[1]


def _wrong_value(hint):
    return {int: "seven", float: "fast", bool: "yes", str: 42}.get(hint, 3.5)


@pytest.mark.parametrize(
    "stage, name",
    [
        (s, f.name)
        for s, cls in config.CONFIGS.items()
        for f in dataclasses.fields(cls)
        if f.name not in ("run_id", "profile")
    ],
)
def test_every_parameter_with_a_wrong_type_is_refused_by_name(stage, name):
    hint = typing.get_type_hints(config.CONFIGS[stage])[name]
    with pytest.raises(ConfigError, match=re.escape(f"{stage}.{name}")):
        config.load(stage, overrides={name: _wrong_value(hint)})


@pytest.mark.parametrize(
    "stage, overrides, message",
    [
        ("pretrain", {"model": "L2_H200"}, "not divisible by 3 heads"),
        ("pretrain", {"model": "Gigantic"}, "unknown model preset"),
        ("pretrain", {"seq_len": 1024}, "longer than the model's"),
        ("pretrain", {"mlm_probability": 1.5}, "between 0 and 1"),
        ("pretrain", {"probes": ["没有空"]}, "needs a \\[MASK\\]"),
        ("distill", {"mode": "cached", "hidden_weight": 1.0}, "need the teacher's hidden states"),
        ("distill", {"kd_weight": 0.0, "mlm_weight": 0.0}, "every loss weight is 0"),
        ("longify", {"attention_window": 255}, "must be even"),
        ("longify", {"seq_len": 8192}, "exceeds longify.max_positions"),
        ("wwm", {"vocabs": ["huge"]}, "neither compact, full nor a folder"),
        ("evaluate", {"tasks": ["squad"]}, "unknown \\['squad'\\]"),
        ("evaluate", {"lrs": []}, "at least one learning rate"),
    ],
)
def test_impossible_values_are_refused(stage, overrides, message):
    with pytest.raises(ConfigError, match=message):
        config.load(stage, overrides=overrides)


@pytest.mark.parametrize(
    "text", ["😀🎉🔥" * 100, "Only English words, nothing else." * 20, "1234567890 " * 50]
)
def test_corpus_of_emoji_english_or_digits_is_refused(tmp_path, text):
    path = tmp_path / "c.txt"
    path.write_text((text + "\n") * 5, encoding="utf-8")
    with pytest.raises(documents.CorpusError, match="Chinese"):
        documents.check_chinese(str(path), documents.read_user_source(str(path)))


@pytest.mark.slow
def test_traditional_chinese_is_kept_or_converted(lab_home, tmp_path):
    import opencc
    from datasets import load_from_disk

    from lab.core import sources

    paras = ["".join(w for w, _ in p) for p in sources.load("peoples_daily")[:300]]
    traditional = [opencc.OpenCC("s2t").convert(p) for p in paras if len(p) > 20][:120]
    path = tmp_path / "trad.txt"
    path.write_text("\n".join(traditional) + "\n", encoding="utf-8")

    def corpus_texts(simplified: bool) -> set[str]:
        cfg = config.load("corpus", run_id=f"trad-{simplified}", profile="smoke",
                          overrides={"sources": [str(path)], "to_simplified": simplified})  # fmt: skip
        dd = load_from_disk(str(corpus.run(cfg)["dir"] / "corpus"))
        return {t for s in ("train", "valid", "test") for t in dd[s]["text"]}

    kept = corpus_texts(False)  # Traditional text is Chinese: accepted as it is ...
    assert normalize(traditional[0]) in kept and "國" in "".join(kept)
    converted = corpus_texts(True)  # ... or converted with OpenCC t2s
    assert to_simplified(normalize(traditional[0])) in converted and "國" not in "".join(converted)


def test_model_folder_without_config_or_weights(tmp_path):
    from lab import distill, longify
    from lab.core.modelsource import ModelSourceError

    cfg = config.load("distill", run_id="x", overrides={"teacher": str(tmp_path)})
    with pytest.raises(ModelSourceError, match="distill.teacher = .* is not a model folder"):
        distill.teacher_source(cfg)
    (tmp_path / "config.json").write_text("{}", encoding="utf-8")
    lcfg = config.load("longify", run_id="x", overrides={"source": str(tmp_path)})
    with pytest.raises(
        ModelSourceError, match="longify.source = .* has a config.json but no weights"
    ):
        longify.model_source(lcfg)
    with pytest.raises(ModelSourceError, match="distill.teacher is empty .* run the stage"):
        distill.teacher_source(config.load("distill", run_id="no-such-run"))
    from lab.core import modelsource

    with pytest.raises(ModelSourceError, match="x.teacher = 'a..b': not a valid hub name"):
        modelsource.resolve("a..b", param="x.teacher")


def test_teacher_with_another_vocabulary_is_refused():
    from lab import distill
    from lab.core import models, sources, vocab

    tok = vocab.make_tokenizer(sources.load("bert_vocab"))
    teacher = models.build("L2_H64", 8000)
    cfg = config.load("distill", run_id="x", profile="smoke")
    with pytest.raises(DistillError, match="vocabulary has 8,000 tokens but the compact vocab"):
        distill.check_setup(cfg, teacher, tok)
    wide = config.load("distill", run_id="x", profile="smoke", overrides={"student": "L2_H128"})
    with pytest.raises(DistillError, match="wider than the teacher"):
        distill.check_setup(wide, models.build("L2_H64", len(tok)), tok)
    select = config.load(
        "distill", run_id="x", profile="smoke", overrides={"student_init": "select"}
    )
    with pytest.raises(DistillError, match="heads are 16 wide and the teacher's 64"):
        distill.check_setup(select, models.build("L2_H64", len(tok)), tok)


# --- property-based: cleaning and word boundaries on arbitrary Unicode --------------------------


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_normalize_on_arbitrary_unicode(text):
    out = normalize(text)
    assert normalize(out) == out  # idempotent
    out.encode("utf-8")  # no lone surrogates left
    assert not any(ord(c) < 32 for c in out)  # no control characters
    assert "\ufffd" not in out and out == out.strip()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=12), max_size=30))
def test_normalize_many_is_normalize_on_each(texts):
    assert normalize_many(texts) == [normalize(t) for t in texts]


@pytest.fixture(scope="module")
def tok():
    from lab.core import sources, vocab

    return vocab.make_tokenizer(sources.load("bert_vocab"))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(max_size=80), min_size=1, max_size=4))
def test_encode_on_arbitrary_unicode(tok, texts):
    for ex in wordpiece.encode(texts, tok, max_length=64):
        ids, w = ex["input_ids"], ex["word_ids"]
        assert len(ids) == len(w) <= 64
        assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id and w[0] == w[-1] == -1
        body = w[1:-1]
        assert all(b >= 0 for b in body) and all(0 <= y - x <= 1 for x, y in zip(body, body[1:]))
        assert not body or body[0] == 0


# --- untrusted content -------------------------------------------------------------------------


def test_no_pickle_loading_and_no_remote_code():
    sources = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "lab").rglob("*.py"))
    for call in re.findall(r"torch\.load\([^)]*\)", sources):
        assert "weights_only=True" in call, call
    assert "trust_remote_code=True" not in sources
    assert "pickle.load" not in sources
