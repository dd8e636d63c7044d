from lab.core.text import Needles, assign_split, cut, normalize, sentences


def test_normalize_folds_fullwidth_alnum_but_keeps_chinese_punctuation():
    assert normalize("１９９８年ＷＴＯ，好！（真）") == "1998年WTO，好！（真）"
    assert normalize("a\u3000b") == "a b"


def test_normalize_drops_control_format_surrogates_and_replacement():
    assert normalize("中\x00文\u200b字\ufffd符\x07") == "中文字符"
    assert normalize("中\ud800文") == "中文"
    assert normalize("  多   空格 \n 换行 ") == "多 空格 换行"


def test_sentences_and_cut():
    text = "第一句。第二句！第三句？"
    assert sentences(text) == ["第一句。", "第二句！", "第三句？"]
    pieces = cut(text * 10, 20)
    assert all(len(p) <= 20 for p in pieces)
    assert "".join(pieces) == text * 10
    assert cut("无标点" * 30, 25) == ["无标点" * 8 + "无", *cut(("无标点" * 30)[25:], 25)]


def test_assign_split_is_deterministic_and_salted():
    keys = [f"文本{i}" for i in range(2000)]
    a = [assign_split(k, 0.1, 0.1, salt="x:") for k in keys]
    assert a == [assign_split(k, 0.1, 0.1, salt="x:") for k in keys]
    b = [assign_split(k, 0.1, 0.1, salt="y:") for k in keys]
    assert a != b
    share = a.count("valid") / len(a)
    assert 0.07 < share < 0.13


def test_needles_are_found_as_substrings_and_short_ones_only_as_whole_documents():
    needles = Needles(["我们去公园散步。", "一九九八年元旦献词", "很好", "一九九八年元旦到了"])
    docs = [
        "今天天气很好，我们去公园散步。",  # contains the first; 很好 only inside a longer text
        "人民日报一九九八年元旦献词发表。一九九八年元旦到了",  # two texts sharing a first window
        "很好",  # a short text counts as a whole document
        "我们去公园散步了。",  # not the same text
        "我们去公园散",  # a prefix is not the text
    ]
    assert needles.find(docs) == {0: {0}, 1: {1, 3}, 2: {2}}
    assert needles.find([]) == {} and Needles([]).find(docs) == {}


def test_near_copies_of_evaluation_texts_are_found_and_unrelated_text_is_not():
    from lab.core.text import Needles

    texts = [
        "这家酒店的服务非常好，房间也很干净，下次还来。",
        "北京时间3月5日，国务院召开常务会议讨论经济",
        "很好",
    ]
    needles = Needles(texts, threshold=0.8)
    docs = [
        "昨天住了这家酒店:这家酒店的服务非常好!房间也很干净~下次还来",  # punctuation changed
        "北京时间4月8日国务院召开常务会议讨论经济形势。",  # digits changed
        "这家酒店的服务一般，房间很小，不会再来了。",  # shares words, not the text
        "很好",
    ]
    assert needles.near(docs) == {0: {0}, 1: {1}}
    assert needles.find(docs) == {3: {2}}  # a short text only where a whole document equals it
    assert Needles(texts, threshold=0.0).near(docs) == {}
    kept, found = needles.scrub("第一行\n" + docs[0] + "\n第三行")
    assert kept == "第一行\n第三行" and found == {0}
