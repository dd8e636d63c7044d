import pytest

from lab.core import segment
from lab.core.segment import Segmenter

TEXTS = [
    "中共中央总书记、国家主席江泽民发表1998年新年讲话《迈向充满希望的新世纪》。",
    "纳米电子学超高密度信息存储研究获突破，点阵的点直径为1.3nm，比国外小。",
    "胶州市光大电器有限公司GDF-95型智能报警器，AT&T和C++都是词。",
    "上证指数917.02914.061510.18870.18，部分地段堆积了3-4厘米的雪。",
    "扩展A区的字㐀㐁和兼容字豈更在这里，还有 空格\t和换行\n。",
    "iPhone12很好用！50%的人说OK。",
    "",
]


def test_fast_segmenter_equals_jieba():
    fast, pure = Segmenter("jieba"), Segmenter("jieba-python")
    assert fast.fast and not pure.fast
    for text in TEXTS:
        assert fast.cut(text) == pure.cut(text), text


def test_user_dictionary_and_words_use_pure_jieba(tmp_path):
    d = tmp_path / "dict.txt"
    d.write_text("光大电器 10 n\n", encoding="utf-8")
    seg = Segmenter("jieba", user_dict=str(d))
    assert not seg.fast and seg.engine == "jieba"
    assert "光大电器" in seg.cut("胶州市光大电器有限公司")
    assert "反劫汽车" in Segmenter("jieba", words=("反劫汽车",)).cut("型反劫汽车防盗报警器")


def test_check_falls_back_when_outputs_differ(monkeypatch):
    seg = Segmenter("jieba")
    assert seg.check(TEXTS) == 0 and seg.fast
    monkeypatch.setattr(segment, "_count_differences", lambda s, t: 3)
    assert seg.start_check(TEXTS, background=False)() == 3
    assert not seg.fast


def test_background_check_reports():
    seg = Segmenter("jieba")
    wait = seg.start_check(TEXTS)
    assert wait() == 0 and seg.fast


def test_score_counts_and_disagreement_types():
    gold = [["江", "泽民", "发表", "1998年", "讲话"]]
    pred = [["江泽民", "发表", "1998", "年", "讲话"]]
    q = segment.score(gold, pred, [["nr", "nr", "v", "t", "n"]])
    assert q["precision"] == pytest.approx(2 / 5) and q["recall"] == pytest.approx(2 / 5)
    assert q["missed_by_type"] == {"merged": 2, "split": 1}
    assert q["examples"]["split"][0] == {"gold": "1998年", "tag": "t", "segmenter": "1998 / 年"}
    assert segment.score([["a", "bc"]], [["a", "bc"]])["f1"] == pytest.approx(1.0)
