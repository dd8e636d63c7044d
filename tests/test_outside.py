"""Models the lab did not train: checkpoints made with plain transformers (tests/checkpoints.py),
read from folders and from a hub cache laid out offline, evaluated, distilled from and longified
beside the run's own; bad ones stopped before any training with one line naming the fix."""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import checkpoints as ck

from lab import lineup
from lab.core import charlm, finetune, taskbatches, tasks, vocab

CHARS = "北京是中国的首都。我们今天天气很好他她它在有了不人大小上下一二三"


@pytest.fixture(scope="module")
def outside(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("outside")
    bert = ck.chinese_bert(root / "uer-bert")
    return {
        "bert": bert,
        "albert": ck.chinese_albert(root / "albert-zh"),
        "modernbert": ck.small_modernbert(root / "modernbert-zh", CHARS),
        "hf_home": root / "hf",
        "snapshot": ck.hub_cache(root / "hf", "someorg/tiny-bert", bert, commit="ab" * 20),
    }


@pytest.fixture
def offline_hub(outside, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(outside["hf_home"]))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_folders_and_a_cached_hub_name_resolve_under_short_names(outside, offline_hub):
    found = lineup.outside(
        [
            "all",
            "teacher",
            str(outside["bert"]),
            str(outside["albert"]),
            str(outside["modernbert"]),
            "someorg/tiny-bert",
        ]  # fmt: skip
    )
    assert list(found) == ["uer-bert", "albert-zh", "modernbert-zh", "someorg/tiny-bert"]
    hub = found["someorg/tiny-bert"]
    assert hub["dir"] == outside["snapshot"].resolve()
    assert hub["source"] == f"hub model `someorg/tiny-bert` (revision {'ab' * 20})"
    assert found["uer-bert"]["source"].startswith("model folder `uer-bert` (content sha256 ")
    assert {v["role"] for v in found.values()} == {"outside"}


@pytest.mark.parametrize("arch", ["bert", "albert", "modernbert"])
def test_every_architecture_takes_a_task_head_on_every_kind_of_task(outside, arch):
    """The encoder's weights load into each task model exactly (only the MLM head left over), and a
    model without segment embeddings (ModernBERT) is given none."""
    tok = vocab.load(outside[arch])
    rows = {
        "classify": [{"text": "今天天气很好", "label": 1}],
        "regress": [{"sentence1": "北京", "sentence2": "首都", "score": 3.0}],
        "tag": [
            {"tokens": list("北京是中国"), "ner_tags": ["B-LOC", "I-LOC", "O", "B-LOC", "I-LOC"]}
        ],
    }
    for name in ("sentiment", "stsb", "msra_ner"):
        task = tasks.TASKS[name]
        model = finetune.task_model(outside[arch], task, seed=0, max_length=64)
        batch = taskbatches.collate(tasks.encode(task, rows[task.kind], tok, 64), tok.pad_token_id)
        if task.kind != "tag":  # one segment per example: no segment ids to give
            assert ("token_type_ids" in batch) == (arch != "modernbert")
        assert torch.isfinite(model(**batch).loss)


def test_bits_per_character_are_counted_on_the_same_characters_whatever_the_tokenizer(outside):
    """The hidden words are chosen in characters: two tokenizers hide the same characters; a model
    that puts all its mass on the right token scores 0 bits, a uniform one log2(V) per token."""
    texts = ["北京是中国的首都。", "我们今天天气很好", "他在北京上大学"]
    spans = charlm.hidden_words(texts, list, share=0.3, seed=0)
    assert all(spans) and spans == charlm.hidden_words(texts, list, share=0.3, seed=0)
    bert, modern = vocab.load(outside["bert"]), vocab.load(outside["modernbert"])

    class Stub(torch.nn.Module):
        def __init__(self, tok, oracle):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.config = type("C", (), {"max_position_embeddings": 512, "model_type": "stub"})
            self.tok, self.oracle, self.n = tok, oracle, len(tok)

        def forward(self, input_ids, attention_mask):
            logits = torch.zeros(*input_ids.shape, self.n)
            if self.oracle:  # knows each piece: the right token everywhere
                for r, text in enumerate(texts[: len(input_ids)]):
                    ids = self.tok(text)["input_ids"]
                    logits[r, torch.arange(len(ids)), torch.tensor(ids)] = 100.0
            return type("Out", (), {"logits": logits})

    for tok in (bert, modern):
        uniform = charlm.same_chars_bpc(Stub(tok, False), tok, texts, spans, bf16=False)
        oracle = charlm.same_chars_bpc(Stub(tok, True), tok, texts, spans, bf16=False)
        chars = sum(e - s for words in spans for s, e in words)
        assert uniform["hidden_chars"] == chars  # the same characters for both tokenizers
        assert uniform["bpc"] == pytest.approx(np.log2(len(tok)) * uniform["hidden_tokens"] / chars)
        assert oracle["bpc"] == pytest.approx(0.0, abs=1e-6)
    # the ModernBERT's own vocabulary lacks 学: its hidden 学 is an [UNK], and the share says so
    share = charlm.same_chars_bpc(
        Stub(modern, False), modern, ["他在北京上大学"], [[(6, 7)]], bf16=False
    )
    assert share["unknown_share"] == 1.0
    assert (
        charlm.same_chars_bpc(Stub(bert, False), bert, ["他在北京上大学"], [[(6, 7)]], bf16=False)[
            "unknown_share"
        ]
        == 0
    )


def test_a_teacher_vocabulary_is_matched_by_content_not_size(outside, tmp_path):
    from lab.core import sources

    tokens = sources.load("bert_vocab")
    run_vocab = vocab.make_tokenizer(tokens)
    assert vocab.mismatch(outside["bert"], run_vocab) is None
    swapped = list(tokens)
    swapped[1000], swapped[1001] = swapped[1001], swapped[1000]  # same size, two ids moved
    vocab.save(vocab.make_tokenizer(swapped), tmp_path)
    differ = vocab.mismatch(tmp_path, run_vocab)
    assert "21,128 tokens against 21,128" in differ and "2 have another id" in differ


def test_bad_outside_models_stop_with_one_line_naming_the_fix(outside, offline_hub, tmp_path):
    no_weights = tmp_path / "no-weights"
    shutil.copytree(outside["bert"], no_weights)
    (no_weights / "model.safetensors").unlink()
    encoder = ck.chinese_bert(tmp_path / "encoder-only", head=False)
    english = tmp_path / "english"
    shutil.copytree(outside["bert"], english)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    for f in english.glob("tokenizer*"):
        f.unlink()
    (english / "vocab.txt").write_text("\n".join([*specials, "the", "a", "of"]) + "\n")
    cases = {
        str(no_weights): "has a config.json but no weights",
        "someorg/not-cached": "not in the hub cache",
        str(encoder): "an encoder without its masked-LM head",
        str(english): "reads '北京是中国的首都。' as unknown tokens only",
        "nosuch": "Nor is 'nosuch' a model this run makes",
    }
    for spec, message in cases.items():
        problems = lineup.problems(["all", spec])
        assert len(problems) == 1 and message in problems[0], (spec, problems)
    assert lineup.problems(["teacher", "two-stage-s99"], {"teacher": {}}) == [
        "evaluate.models names ['two-stage-s99']; this run has ['teacher']"
    ]


@pytest.mark.slow
def test_the_dry_run_checks_every_model_a_parameter_names(outside, offline_hub, tmp_path):
    from conftest import lab

    empty = tmp_path / "empty.txt"
    empty.write_text("")
    proc = lab("run", "--profile", "smoke", "--dry-run", "-p", "evaluate.models=[teacher,nosuch]",
               "-p", "distill.teacher=/tmp", "-p", f"corpus.sources=[peoples_daily,{empty}]",
               home=tmp_path, check=False)  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    refused = [line for line in proc.stderr.splitlines() if "refused:" in line]
    assert len(refused) == 3, proc.stderr
    assert "distill.teacher = '/tmp' is not a model folder (no config.json)" in proc.stderr
    assert "Nor is 'nosuch' a model this run makes" in proc.stderr
    assert f"corpus.sources: {empty} is an empty file" in proc.stderr
    proc = lab(
        "run",
        "--profile",
        "smoke",
        "-p",
        "evaluate.models=[teacher,nosuch]",
        home=tmp_path,
        check=False,
    )
    assert proc.returncode != 0 and "nothing was run" in proc.stderr
    assert not (
        tmp_path / "data" / "runs" / "smoke" / "corpus"
    ).exists()  # stopped before any stage
    ok = lab("run", "--profile", "smoke", "--dry-run", "-p", f"distill.teacher={outside['bert']}",
             "-p", "distill.vocab=full", home=tmp_path)  # fmt: skip
    assert "dry run: parameters valid" in ok.stdout and "budget" not in ok.stdout


def test_a_tokenizer_folder_packs_under_its_name_and_a_bad_one_is_named(tmp_path):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from lab.core.wordpiece import encode

    own = ck.bert_own_vocab(tmp_path / "my-teacher")
    assert vocab.entry_name(str(own)) == "my-teacher" and vocab.entry_name("full") == "full"
    assert vocab.folder_problem(str(own)) is None
    tok = vocab.load(own)
    texts = ["北京是中国的首都。", "今天天气很好，我们在上海。"]
    for text, example in zip(texts, encode(texts, tok)):  # the packer's ids are the tokenizer's
        assert example["input_ids"] == tok(text)["input_ids"]
    assert "neither compact, full nor a folder" in vocab.folder_problem(str(tmp_path / "nosuch"))
    shutil.copytree(own, tmp_path / "full")
    assert "name of the run's own vocabulary" in vocab.folder_problem(str(tmp_path / "full"))
    (tmp_path / "empty").mkdir()
    assert "holds no tokenizer" in vocab.folder_problem(str(tmp_path / "empty"))
    bpe = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.BPE({"[UNK]": 0, "北": 1}, [], unk_token="[UNK]")),
        unk_token="[UNK]", mask_token="[MASK]", cls_token="[CLS]", sep_token="[SEP]",
    )  # fmt: skip
    bpe.save_pretrained(tmp_path / "bpe")
    assert "BPE tokenizer; the wwm stage packs WordPiece" in vocab.folder_problem(
        str(tmp_path / "bpe")
    )


@pytest.mark.slow
@pytest.mark.notebook
def test_outside_models_are_evaluated_distilled_from_and_longified_beside_the_runs(
    smoke_run, outside, offline_hub, tmp_path
):
    """On a copy of the smoke run: students distilled from an outside BERT, a Longformer converted
    from it, and evaluate with three outside models and a hub name beside the run's own, one
    comparison named by the user. The run's own teacher keeps its numbers."""
    from conftest import lab

    home = tmp_path / "home"
    shutil.copytree(smoke_run[0], home)
    runs = home / "data" / "runs" / "nb"
    before = json.loads((runs / "evaluate" / "outcomes.json").read_text())
    models = (
        f"[all,{outside['bert']},{outside['albert']},{outside['modernbert']},someorg/tiny-bert]"
    )
    lab("run", "--profile", "smoke", "--run-id", "nb", "--from", "distill",
        "-p", f"distill.teacher={outside['bert']}", "-p", "distill.vocab=full",
        "-p", f"longify.source={outside['bert']}", "-p", f"evaluate.models={models}",
        "-p", "evaluate.compare=[uer-bert vs teacher]", home=home)  # fmt: skip
    metrics = json.loads((runs / "evaluate" / "manifest.json").read_text())["metrics"]
    for name in ("uer-bert", "albert-zh", "modernbert-zh", "someorg/tiny-bert"):
        row = metrics["models"][name]
        assert row["role"] == "outside" and row["bpc_same_chars"] > 0 and row["latency_ms_b1"] > 0
        assert set(metrics["tasks"][name]) == {"sentiment", "thucnews", "msra_ner", "stsb"}
    assert metrics["models"]["uer-bert"]["vocab"] == "full"  # the run's full vocabulary, by content
    assert metrics["models"]["modernbert-zh"]["acc"] is None  # another tokenizer: no token metrics
    found = metrics["findings"]["this uer-bert beats this teacher"]
    assert found["named_by"] == "evaluate.compare" and found["verdict"] in (
        "holds",
        "does not hold",
        "inconclusive",
    )
    after = json.loads((runs / "evaluate" / "outcomes.json").read_text())
    assert after["teacher"] == before["teacher"]  # outside models add rows, never change the run's
    card = (runs / "distill" / "models" / "one-stage-s1234" / "README.md").read_text(
        encoding="utf-8"
    )
    assert "model folder `uer-bert`" in card
    long_card = (runs / "longify" / "model" / "README.md").read_text(encoding="utf-8")
    assert "uer-bert" in long_card
    index = (home / "reports" / "nb" / "index.html").read_text(encoding="utf-8")
    assert "this uer-bert beats this teacher" in index


@pytest.mark.slow
@pytest.mark.notebook
def test_a_teacher_with_a_vocabulary_of_its_own_gets_its_own_packed_data(smoke_run, tmp_path):
    """The wwm stage packs for a tokenizer folder; students learn in the teacher's vocabulary."""
    from conftest import lab

    home = tmp_path / "home"
    shutil.copytree(smoke_run[0], home)
    own = ck.bert_own_vocab(tmp_path / "my-teacher")
    dry = lab("run", "--profile", "smoke", "--run-id", "nb", "--dry-run",
              "-p", f"distill.teacher={own}", "-p", "distill.vocab=my-teacher", home=home, check=False)  # fmt: skip
    assert dry.returncode != 0 and "wwm.vocabs packs ['compact', 'full']" in dry.stdout + dry.stderr
    lab("run", "--profile", "smoke", "--run-id", "nb", "--from", "wwm", "--to", "distill",
        "-p", f"wwm.vocabs=[compact,full,{own}]", "-p", f"distill.teacher={own}",
        "-p", "distill.vocab=my-teacher", home=home)  # fmt: skip
    runs = home / "data" / "runs" / "nb"
    wwm = json.loads((runs / "wwm" / "manifest.json").read_text())
    assert wwm["outputs"]["vocab_my-teacher"] == "vocab/my-teacher"
    assert wwm["metrics"]["train_tokens"]["my-teacher"] > 0
    student = vocab.load(runs / "distill" / "models" / "one-stage-s1234")
    assert vocab.mismatch(own, student) is None  # the teacher's tokens at the teacher's ids
    card = (runs / "distill" / "models" / "one-stage-s1234" / "README.md").read_text(
        encoding="utf-8"
    )
    assert "model folder `my-teacher`" in card and "vocabulary my-teacher (3,007 tokens)" in card
