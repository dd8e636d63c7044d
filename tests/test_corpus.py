import gzip
import json

import pytest
from datasets import Dataset, load_from_disk

from lab import config, corpus, runs
from lab.core.documents import CorpusError, read_user_source
from lab.core.taskdata import NER_LABELS


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "is empty"),
        (b"\n  \n", "is empty"),
        (
            "今天天气很好，我们去公园散步。\n".encode("gbk") * 5,
            "not valid utf-8.*GB18030.*text_encoding=gb18030",
        ),
        ("中文文本\n".encode("utf-16"), "UTF-16.*text_encoding=utf-16"),
        (bytes(range(256)) * 10, "looks binary"),
        (gzip.compress("中文\n".encode()), "gzip-compressed.*gunzip"),
    ],
    ids=["empty", "blank", "gbk", "utf16", "binary", "gzip"],
)
def test_bad_text_files_fail_clearly(tmp_path, content, message):
    path = tmp_path / "corpus.txt"
    path.write_bytes(content)
    with pytest.raises(CorpusError, match=message) as err:
        read_user_source(str(path))
    assert str(path) in str(err.value)


def test_gbk_reads_when_encoding_given(tmp_path):
    path = tmp_path / "gbk.txt"
    path.write_bytes("今天天气很好。\n明天下雨。\n".encode("gbk"))
    assert read_user_source(str(path), "gb18030") == ["今天天气很好。", "明天下雨。"]


def test_single_huge_line_is_refused(tmp_path):
    path = tmp_path / "one_line.txt"
    path.write_text(
        "中文句子。" * 10_500_000, encoding="utf-8"
    )  # ~52 million characters, no newline
    with pytest.raises(CorpusError, match="a line of 52,500,000 characters"):
        read_user_source(str(path))


def test_blank_line_paragraphs_and_lines(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("第一段第一行\n第一段第二行\n\n第二段\n", encoding="utf-8")
    assert read_user_source(str(path)) == ["第一段第一行 第一段第二行", "第二段"]


def test_jsonl_errors_name_the_line(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "好"}\n{"body": "x"}\n', encoding="utf-8")
    with pytest.raises(CorpusError, match='line 2 has no "text" field'):
        read_user_source(str(path))
    path.write_text('{"text": 3}\n', encoding="utf-8")
    with pytest.raises(CorpusError, match='line 1: "text" is int, not a string'):
        read_user_source(str(path))


def test_datasets_folder_with_wrong_columns(tmp_path):
    Dataset.from_dict({"content": ["中文"]}).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(CorpusError, match=r"columns \['content'\].*'text' column"):
        read_user_source(str(tmp_path / "ds"))


@pytest.mark.slow
@pytest.mark.parametrize(
    "text", ["Only English words here.\n" * 50, "，。！？…——\n" * 50, "12345 678\n" * 50]
)
def test_corpus_without_chinese_is_refused_before_the_run_folder_is_touched(
    lab_home, tmp_path, text
):
    path = tmp_path / "c.txt"
    path.write_text(text, encoding="utf-8")
    cfg = config.load("corpus", run_id="bad", profile="smoke", overrides={"sources": [str(path)]})
    with pytest.raises(CorpusError, match="Chinese"):
        corpus.run(cfg)
    assert not runs.stage_dir("bad", "corpus").with_name("corpus.partial").exists()


@pytest.mark.slow
def test_unknown_source_name(lab_home):
    cfg = config.load(
        "corpus", run_id="bad2", profile="smoke", overrides={"sources": ["wikipedia"]}
    )
    with pytest.raises(CorpusError, match="unknown source 'wikipedia'"):
        corpus.run(cfg)


# --- the smoke corpus, built once for the session ---------------------------------------------


@pytest.mark.slow
def test_manifest_proves_heldout_overlap_is_zero(smoke_corpus):
    m = smoke_corpus["metrics"]
    assert m["heldout_overlap"] == {"sentiment": 0, "thucnews": 0, "msra_ner": 0, "stsb": 0}
    assert all(m["documents"][s] > 0 for s in ("train", "valid", "test"))
    assert set(m["chars_per_source"]) == {"peoples_daily", "msra_ner", "thucnews", "reviews"}


@pytest.mark.slow
def test_task_eval_texts_absent_from_corpus(smoke_corpus):
    d = smoke_corpus["dir"]
    text = "\n".join(
        t for s in ("train", "valid", "test") for t in load_from_disk(str(d / "corpus"))[s]["text"]
    )
    for task in ("sentiment", "thucnews"):
        dd = load_from_disk(str(d / "tasks" / task))
        for split in ("valid", "test"):
            for t in dd[split]["text"]:
                assert len(t) < 8 or t not in text


@pytest.mark.slow
def test_sentiment_has_no_conflicts_or_split_leaks(smoke_corpus):
    dd = load_from_disk(str(smoke_corpus["dir"] / "tasks" / "sentiment"))
    texts = {s: set(dd[s]["text"]) for s in ("train", "valid", "test")}
    assert not texts["train"] & texts["test"] and not texts["train"] & texts["valid"]


@pytest.mark.slow
def test_splits_are_deterministic(lab_home, smoke_corpus):
    cfg = config.load("corpus", run_id="t-smoke-again", profile="smoke")
    again = corpus.run(cfg)
    a = load_from_disk(str(smoke_corpus["dir"] / "corpus"))
    b = load_from_disk(str(again["dir"] / "corpus"))
    for s in ("train", "valid", "test"):
        assert list(a[s]["text"]) == list(b[s]["text"])
    assert again["files"] == smoke_corpus["files"]


@pytest.mark.slow
def test_rerun_is_cached_and_changed_parameter_reruns(lab_home, smoke_corpus):
    cfg = config.load("corpus", run_id="t-smoke", profile="smoke")
    assert corpus.STAGE.stage(cfg).cached
    changed = config.load("corpus", run_id="t-smoke", profile="smoke", overrides={"min_chars": 6})
    assert not corpus.STAGE.stage(changed).cached


@pytest.mark.slow
def test_vocabularies(smoke_corpus):
    from lab.core import vocab

    d = smoke_corpus["dir"]
    full = vocab.load(d / "vocab" / "full")
    compact = vocab.load(d / "vocab" / "compact")
    assert len(full) == 21128 and full.mask_token_id == 103
    assert len(compact) == config.profile_values("smoke")["corpus"]["compact_vocab_size"]
    assert compact.convert_ids_to_tokens(compact("中国")["input_ids"]) == [
        "[CLS]",
        "中",
        "国",
        "[SEP]",
    ]
    v = smoke_corpus["metrics"]["vocab"]
    assert 0 <= v["full"]["unk_rate"] <= v["compact"]["unk_rate"] < 0.2


@pytest.mark.slow
def test_gold_segmentation_and_long_documents(smoke_corpus):
    d = smoke_corpus["dir"]
    gold = load_from_disk(str(d / "gold_segmentation"))
    assert len(gold) > 0
    assert all("".join(w) == t for w, t in zip(gold["words"], gold["text"]))
    long = load_from_disk(str(d / "longdocs"))
    assert len(long["test"]) > 0 and "sanguo" in set(long["train"]["source"])
    ner = load_from_disk(str(d / "tasks" / "msra_ner"))["train"][0]
    assert len(ner["tokens"]) == len(ner["ner_tags"])
    assert set(ner["ner_tags"]) <= set(NER_LABELS)


@pytest.mark.slow
def test_stats_written(smoke_corpus):
    stats = json.loads((smoke_corpus["dir"] / "stats.json").read_text(encoding="utf-8"))
    assert (
        stats["char_profile"]["after"]["fullwidth_share"]
        < stats["char_profile"]["before"]["fullwidth_share"]
    )
    assert stats["licences"]["peoples_daily"]
