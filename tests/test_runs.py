import dataclasses
import json
import os

import pytest

from lab import config, runs
from lab.core import files


@dataclasses.dataclass(frozen=True)
class FakeConfig:
    run_id: str = "r1"
    profile: str = "smoke"
    seed: int = 0
    size: int = 1
    stage = "fake"

    def params(self):
        return {"profile": self.profile, "seed": self.seed, "size": self.size}


def _finish(cfg, inputs=None, payload="x"):
    st = runs.Stage(cfg, inputs or {"up": "abc"})
    work = st.begin()
    (work / "out.txt").write_text(payload)
    return st.finish({"out": "out.txt"}, {"n": 1})


def test_manifest_has_required_keys_and_caches(lab_home):
    m = _finish(FakeConfig())
    for key in ("stage", "params", "inputs", "outputs", "metrics", "versions", "git", "seed",
                "started", "finished", "duration_s"):  # fmt: skip
        assert key in m
    assert m["files"] == {"out.txt": files.sha256_file(m["dir"] / "out.txt")}
    assert runs.Stage(FakeConfig(), {"up": "abc"}).cached
    assert not runs.Stage(FakeConfig(size=2), {"up": "abc"}).cached  # changed parameter
    assert not runs.Stage(FakeConfig(), {"up": "changed"}).cached  # changed upstream


def test_partial_stage_has_no_manifest_and_keeps_previous(lab_home):
    _finish(FakeConfig(run_id="r2"), payload="old")
    st = runs.Stage(FakeConfig(run_id="r2", size=5), {"up": "abc"})
    work = st.begin()
    (work / "out.txt").write_text("half")  # ... and the process dies here
    again = runs.Stage(FakeConfig(run_id="r2", size=5), {"up": "abc"})
    assert not again.cached
    assert (runs.stage_dir("r2", "fake") / "out.txt").read_text() == "old"
    assert runs.read_manifest(work) is None
    assert again.begin() == work and (work / "out.txt").read_text() == "half"  # same key: resumable


def test_crash_while_writing_manifest_leaves_previous_valid(lab_home, monkeypatch):
    first = _finish(FakeConfig(run_id="r3"), payload="v1")
    st = runs.Stage(FakeConfig(run_id="r3", size=9), {"up": "abc"})
    (st.begin() / "out.txt").write_text("v2")

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(runs.StageError, match="disk is full"):
        st.finish({"out": "out.txt"}, {})
    monkeypatch.undo()
    kept = runs.read_manifest(runs.stage_dir("r3", "fake"))
    assert kept["key"] == first["key"]
    assert (runs.stage_dir("r3", "fake") / "out.txt").read_text() == "v1"


def test_write_atomic_failure_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "m.json"
    files.write_json(path, {"a": 1})
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("boom")))
    with pytest.raises(OSError):
        files.write_json(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]  # no temp file left behind


def test_failure_between_the_two_renames_puts_the_previous_result_back(lab_home, monkeypatch):
    first = _finish(FakeConfig(run_id="r5"), payload="v1")
    st = runs.Stage(FakeConfig(run_id="r5", size=3), {"up": "abc"})
    (st.begin() / "out.txt").write_text("v2")
    real = os.replace

    def second_fails(src, dst):  # the previous result has moved aside; the new one cannot move in
        if str(src).endswith(".partial"):
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", second_fails)
    with pytest.raises(runs.StageError, match="disk is full"):
        st.finish({"out": "out.txt"}, {})
    monkeypatch.undo()
    assert runs.read_manifest(runs.stage_dir("r5", "fake"))["key"] == first["key"]
    assert (runs.stage_dir("r5", "fake") / "out.txt").read_text() == "v1"


def test_upstream_detects_tampering_and_missing_stage(lab_home):
    _finish(FakeConfig(run_id="r4"))
    assert runs.upstream("r4", "fake")["digest"]
    (runs.stage_dir("r4", "fake") / "out.txt").write_text("tampered")
    with pytest.raises(runs.StageError, match="does not match the hash"):
        runs.upstream("r4", "fake")
    with pytest.raises(runs.StageError, match="has not finished.*--to nothing"):
        runs.upstream("r4", "nothing")


def test_read_only_folder_gives_clear_error(lab_home, monkeypatch):
    """EROFS from the file system (simulated: the tests may run as root, which ignores modes)."""
    import errno
    from pathlib import Path

    def refuse(self, *a, **k):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    cfg = config.load("corpus", run_id="ro")
    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(
        runs.StageError, match=r"cannot write .*ro/corpus.partial: the folder is not writable"
    ):
        runs.Stage(cfg, {}).begin()
