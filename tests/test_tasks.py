import numpy as np
import pytest
import torch
from datasets import Dataset

from lab.core import dropout, finetune, sources, taskbatches, tasks, vocab
from lab.core.metrics import fill_mask, spread


@pytest.fixture(scope="module")
def tok():
    return vocab.make_tokenizer(sources.load("bert_vocab"))


def test_ner_outcomes_are_entity_counts_as_seqeval_counts_them():
    from seqeval.metrics import f1_score

    t = tasks.TASKS["msra_ner"]
    gold = [1, 2, 0, 3, 6]  # B-PER I-PER O B-LOC I-ORG: an I- without its B- starts an entity
    examples = [{"labels": [-100, *gold, -100], "gold": gold}]
    assert tasks.outcomes(t, examples, [gold]) == [[3, 0, 0]]
    assert tasks.outcomes(t, examples, [[1, 0, 0, 3, 0]]) == [
        [1, 1, 2]
    ]  # PER cut short: a miss and a false one
    # a sentence longer than the input: its cut-off tokens count as predicted O
    assert tasks.outcomes(t, examples, [[1, 2, 0]]) == [[1, 0, 2]]
    rng = np.random.default_rng(0)
    golds = [list(rng.integers(0, 7, 12)) for _ in range(200)]
    preds = [[x if rng.random() > 0.2 else int(rng.integers(0, 7)) for x in g] for g in golds]
    runs = [tasks.outcomes(t, [{"labels": [], "gold": g} for g in golds], preds)]
    names = tasks.NER_LABELS
    expected = f1_score(
        [[names[x] for x in g] for g in golds], [[names[x] for x in p] for p in preds]
    )
    assert tasks.metrics(t, runs)["entity_f1"][0] == pytest.approx(expected)


def test_encode_every_kind(tok):
    cls = tasks.encode(
        tasks.TASKS["sentiment"],
        [{"text": "很好", "label": 1}, {"text": "不好", "label": 0}],
        tok,
        16,
    )
    assert cls[0]["labels"] == 1 and cls[0]["input_ids"][0] == tok.cls_token_id
    sts = tasks.encode(
        tasks.TASKS["stsb"], [{"sentence1": "a", "sentence2": "b", "score": 4}], tok, 16
    )
    assert sts[0]["labels"] == 4.0 and 1 in sts[0]["token_type_ids"]
    ner = tasks.encode(
        tasks.TASKS["msra_ner"], [{"tokens": ["北", "京"], "ner_tags": ["B-LOC", "I-LOC"]}], tok, 16
    )
    assert ner[0]["labels"] == [-100, 3, 4, -100] and len(ner[0]["input_ids"]) == 4
    batch = taskbatches.collate(cls, tok.pad_token_id)
    assert batch["labels"].tolist() == [1, 0]


def test_batches_group_similar_lengths_and_cover_every_example_each_epoch():
    rng = np.random.default_rng(0)
    examples = [{"input_ids": [1] * int(n), "labels": 0} for n in rng.integers(3, 60, 500)]
    batches = taskbatches.TaskBatches(examples, batch_size=16, seed=1, pad_id=0, pool=10)
    seen = np.concatenate([batches._batches(0)[j] for j in range(batches.per_epoch)])
    assert sorted(seen.tolist()) == list(range(500))
    padded = sum(batches(j)["input_ids"].numel() for j in range(batches.per_epoch))
    plain = taskbatches.TaskBatches(
        examples, batch_size=16, seed=1, pad_id=0, pool=1
    )  # no sorting to speak of
    assert padded < 0.7 * sum(plain(j)["input_ids"].numel() for j in range(plain.per_epoch))
    assert torch.equal(
        batches(3)["input_ids"],
        taskbatches.TaskBatches(examples, 16, 1, 0, pool=10)(3)["input_ids"],
    )


@pytest.mark.parametrize("kind", ["sentiment", "stsb", "msra_ner"])
@pytest.mark.parametrize("attention", ["eager", "sdpa", "lab"])
def test_packed_batches_give_transformers_heads_loss_and_gradients(tok, kind, attention):
    """Several examples to a row, each attending only to itself with its own positions: the loss
    and every gradient equal what transformers' own head computes on the same examples padded one
    to a row (classification, regression on sentence pairs, tags), and fewer rows carry them."""
    from transformers import BertConfig

    rng = np.random.default_rng(0)
    chars = list("今天天气很好我们去公园散步吧这家店的菜太咸了服务一般")
    text = lambda: "".join(rng.choice(chars, int(rng.integers(1, 14))))  # noqa: E731
    tags = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    rows = {
        "sentiment": lambda: {"text": text(), "label": int(rng.integers(2))},
        "stsb": lambda: {
            "sentence1": text(),
            "sentence2": text(),
            "score": float(rng.uniform(0, 5)),
        },
        "msra_ner": lambda: {
            "tokens": (t := list(text())),
            "ner_tags": list(rng.choice(tags, len(t))),
        },
    }
    task = tasks.TASKS[kind]
    examples = tasks.encode(task, [rows[kind]() for _ in range(12)], tok, 32)
    config = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, type_vocab_size=2)  # fmt: skip
    model = finetune.task_model(config, task, seed=0, max_length=32)
    model.set_attn_implementation("eager" if attention == "lab" else attention)
    if attention == "lab":  # the attention the training loop installs on a CPU (lab.core.dropout)
        assert dropout.install(model) and model.config._attn_implementation == dropout.NAME
    model.eval()  # no dropout

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    padded = taskbatches.collate(examples, tok.pad_token_id)
    packed = taskbatches.pack(examples, tok.pad_token_id)
    loss, g = grads(model(**padded).loss)
    loss_packed, g_packed = grads(finetune.Finetune(model)(**packed)["loss"])
    assert len(packed["input_ids"]) < len(examples)
    assert loss_packed == pytest.approx(float(loss), rel=1e-5)
    assert len(g) == len(g_packed)
    for a, b in zip(g, g_packed):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # as fits train: close
        bf16 = [float(model(**padded).loss), float(finetune.Finetune(model)(**packed)["loss"])]
    assert bf16[1] == pytest.approx(bf16[0], rel=0.02)
    longest = [e for e in examples if len(e["input_ids"]) == len(padded["input_ids"][0])]
    alone = taskbatches.pack(longest * 2, tok.pad_token_id)  # no two share a row: no mask at all
    assert alone.keys() == taskbatches.collate(longest * 2, tok.pad_token_id).keys()


def test_samples_follow_the_hash_not_the_order_of_the_split():
    rows = Dataset.from_dict(
        {"text": [f"{i:04d} 评论" for i in range(1000)], "label": [i % 2 for i in range(1000)]}
    )
    picked = tasks.sample(tasks.TASKS["sentiment"], rows, 100)
    numbers = sorted(int(r["text"][:4]) for r in picked)
    assert (
        len(picked) == 100 and numbers[-1] > 900 and numbers[0] < 100
    )  # spread, not the first 100
    assert picked == tasks.sample(tasks.TASKS["sentiment"], rows, 100)


def test_ngram_baseline_is_tuned_on_valid_and_generalises_to_texts_it_never_saw():
    from lab.core.protocol import ngram_baseline

    rng = np.random.default_rng(0)
    filler = list("我们这个东西今天用了一下觉得还有点")

    def texts(word: str, n: int) -> list[str]:
        return [
            "".join(rng.choice(filler, 6)) + word + "".join(rng.choice(filler, 4)) for _ in range(n)
        ]

    rows = {s: [{"text": t, "label": 1} for t in texts("很好", n)] + [{"text": t, "label": 0} for t in texts("太差", n)]
            for s, n in (("train", 40), ("valid", 20), ("test", 20))}  # fmt: skip
    assert not {r["text"] for r in rows["train"]} & {r["text"] for r in rows["test"]}
    found = ngram_baseline(rows, max_chars=64)
    assert np.mean(found["test"]) > 0.9  # the filler carries no signal: it learned the two words
    assert found["tuned"]["grid"] == 8 and found["tuned"]["reads_chars"] == 64
    cut = ngram_baseline(rows, max_chars=6)  # reading only the filler, it can only guess
    assert np.mean(cut["test"]) < 0.75


class NextToken(torch.nn.Module):
    """A stand-in masked LM whose prediction at each position is the token after the one before it
    (id + 1): a masked position shows whether its left neighbour was filled in first."""

    config = type("Config", (), {"model_type": "bert"})()

    def __init__(self, vocab_size: int):
        super().__init__()
        self.vocab_size = vocab_size
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, **_):
        before = torch.roll(input_ids, 1, dims=1)
        logits = torch.nn.functional.one_hot((before + 1) % self.vocab_size, self.vocab_size)
        return type("Out", (), {"logits": 10.0 * logits.float()})()


def test_fill_mask_decodes_several_masks_left_to_right(tok):
    out = fill_mask(NextToken(len(tok)), tok, "[MASK][MASK]是中国的首都。", k=3)
    first, second = (tok.convert_tokens_to_ids(s[0][0]) for s in out["slots"])
    assert first == tok.cls_token_id + 1  # read from [CLS]
    assert second == first + 1  # read from the first blank as filled, not from [MASK]
    assert second != tok.mask_token_id + 1 and all(len(s) == 3 for s in out["slots"])


class Fixed(torch.nn.Module):
    """A stand-in encoder that takes `ms` milliseconds per sequence on a fake clock."""

    def __init__(self, ms: float, clock: list, calls: list, name: str):
        super().__init__()
        self.ms, self.clock, self.calls, self.name = ms, clock, calls, name
        self.unused = torch.nn.Parameter(torch.zeros(1))
        self.config = type("Config", (), {"vocab_size": 100})()

    @property
    def base_model(self):
        return self

    def forward(self, input_ids):
        self.clock[0] += self.ms * input_ids.shape[0] / 1000
        self.calls.append(self.name)


def test_speed_ratios_are_known_ones_and_models_are_timed_in_turn(monkeypatch):
    from lab.core import metrics

    clock, calls = [0.0], []
    monkeypatch.setattr(metrics.time, "perf_counter", lambda: clock[0])
    models_ = {
        "teacher": Fixed(4.0, clock, calls, "teacher"),
        "student": Fixed(1.0, clock, calls, "student"),
    }
    out = metrics.speeds(models_, reference="teacher", repeats=12, batch=8)
    assert out["teacher"]["latency_ms_b1"] == pytest.approx(4.0)
    assert out["student"]["throughput_seq_s_b8"] == pytest.approx(1000.0)
    assert out["student"]["latency_vs_teacher"]["ratio"] == pytest.approx(4.0)
    assert out["student"]["throughput_vs_teacher"]["ci95"] == pytest.approx([4.0, 4.0])
    timed = calls[4:]  # after each model's warm-up at both sizes
    rounds = [timed[i : i + 4] for i in range(0, len(timed), 4)]
    assert all(sorted(r) == ["student", "student", "teacher", "teacher"] for r in rounds)
    assert len({tuple(r) for r in rounds}) > 1  # the order changes from round to round


def test_relative_scores_count_gains_over_chance():
    from lab.findings import relative

    scores = {
        "teacher": {"a": {"mean": 0.8}, "b": {"mean": 0.5}},
        "student": {"a": {"mean": 0.65}, "b": {"mean": 0.5}},
    }
    rel = relative(scores, {"a": 0.5, "b": 0.5})
    assert rel["student"]["a"] == pytest.approx(0.5)  # (0.65 - 0.5) / (0.8 - 0.5)
    assert "b" not in rel["student"]  # a teacher at chance: no share of nothing


def test_lm_sequences_are_spread_over_the_split():
    ids = np.arange(1000)[:, None] * np.ones((1, 4), int)
    picked, wids = spread(ids, ids + 1, 5)
    assert picked[:, 0].tolist() == [0, 250, 500, 749, 999]
    assert (wids == picked + 1).all()
    assert len(spread(ids, ids, 5000)[0]) == 1000


def test_ablation_findings_compare_runs_differing_in_one_parameter(tmp_path, monkeypatch):
    """A run whose teacher differs only in the masking (or only in the vocab) is an ablation of
    this one, compared on the same test examples; a run that differs in two parameters is not."""
    from lab import runs
    from lab.core.files import write_json
    from lab.crossrun import ablations
    from lab.findings import OUTCOMES

    monkeypatch.setenv("ZH_MINILAB_HOME", str(tmp_path))
    base = {"pretrain": {"masking": "token", "vocab": "compact", "steps": 10}, "corpus": {},
            "wwm": {}, "evaluate": {"lrs": [5e-4], "scratch": True}}  # fmt: skip
    rng = np.random.default_rng(0)

    def make_run(run_id, p, **changes):
        for stage, params in base.items():
            folder = runs.stage_dir(run_id, stage)
            folder.mkdir(parents=True)
            params = {**params, **changes.get(stage, {}), "run_id": run_id}
            write_json(
                folder / "manifest.json", {"complete": True, "params": params, "metrics": {}}
            )
        right = (rng.random((3, 400)) < p).astype(float)[..., None].tolist()
        write_json(runs.stage_dir(run_id, "evaluate") / OUTCOMES, {"teacher": {"thucnews": right}})
        return {"teacher": {"thucnews": right}}

    make_run("base", 0.50)
    make_run("wwm", 0.80, pretrain={"masking": "wwm"}, evaluate={"scratch": False})
    make_run("full", 0.52, pretrain={"vocab": "full"})
    make_run("two-changes", 0.90, pretrain={"masking": "wwm", "steps": 20})
    found = ablations("base")  # one pretraining run a side: worded for the two teachers at hand
    assert set(found) == {
        "this whole-word-masked teacher beats this token-masked one",
        "this compact-vocabulary teacher keeps this full-vocabulary teacher's score",
    }
    wwm = found["this whole-word-masked teacher beats this token-masked one"]
    assert wwm["recipe_claim"] == "whole-word masking beats token-level masking"
    assert (
        wwm["verdict"] == "holds"
        and wwm["a"] == "wwm (wwm)"
        and wwm["runs_compared"] == "base vs wwm"
    )
    assert wwm["difference"] == pytest.approx(0.30, abs=0.06) and wwm["ci95"][0] > 0
    vocab = found["this compact-vocabulary teacher keeps this full-vocabulary teacher's score"]
    assert vocab["margin"] == -0.01 and vocab["verdict"] in ("inconclusive", "does not hold")
    assert ablations("two-changes") == {}  # no run differs from it in one parameter only
    make_run("lr", 0.6, pretrain={"masking": "wwm"}, evaluate={"lrs": [1e-3]})
    assert "lr" not in str(ablations("base"))  # scored with another protocol: not an ablation
    # the runs above predate evaluate.length_buckets (their fine-tuning sorted batches by length): a
    # new run that asks for buckets is their ablation, one that draws batches at random is not
    make_run("wwm-buckets", 0.8, pretrain={"masking": "wwm"}, evaluate={"length_buckets": True})
    make_run("wwm-random", 0.8, pretrain={"masking": "wwm"}, evaluate={"length_buckets": False})
    (found,) = ablations("wwm-buckets").values()
    assert found["runs_compared"] == "wwm-buckets vs base"
    assert ablations("wwm-random") == {}  # its scores were made another way than every other's


def test_run_findings_state_their_scope_and_speak_for_the_recipe_only_with_three_runs(
    tmp_path, monkeypatch
):
    from lab.findings import findings

    monkeypatch.setenv("ZH_MINILAB_HOME", str(tmp_path))
    rng = np.random.default_rng(0)

    def right(p, seeds=3):
        return (rng.random((seeds, 500)) < p).astype(float)[..., None].tolist()

    outcomes = {
        "teacher": {"thucnews": right(0.8)},
        "scratch": {"thucnews": right(0.5)},
        **{f"one-stage-s{s}": {"thucnews": right(0.70, 1)} for s in (1, 2, 3)},
        **{f"two-stage-s{s}": {"thucnews": right(0.75, 1)} for s in (1, 2)},
    }
    found = findings(outcomes, {}, {"thucnews": 0.1})
    scratch = found["this pretrained teacher beats training from scratch"]  # one pretraining run
    assert scratch["verdict"] == "holds" and scratch["units"] == {"a": 3, "b": 3}
    assert scratch["scope"]["covers"] == ["test examples", "fine-tuning seeds"]
    assert "pretraining run (1" in scratch["scope"]["fixed"][0]
    kept = next(f for f in found.values() if "keep 85%" in f["claim"])
    assert (
        kept["claim"] == "the distilled students keep 85% of the teacher's score above chance"
    )  # 3 runs
    assert kept["a"] == "one-stage students" and kept["units"] == {"a": 3, "b": 3}
    assert "distillation runs" in kept["scope"]["covers"] and kept["ratio"] == 0.85
    two = found["these two-stage students beat these one-stage students"]  # 2 runs of two-stage
    assert two["speaks_for"] == "networks" and two["per_task"]["thucnews"]["verdict"] is None


def test_fine_tuning_draws_random_batches_packed_unless_asked_otherwise(tok, tmp_path, monkeypatch):
    """Batches of similar length scored lower than batches drawn at random (lab/core/finetune.py),
    so a fit draws at random unless its shared settings ask for buckets (evaluate.length_buckets);
    a BERT's random batches are packed, with eager or fused attention, unless the settings say not
    to; a Longformer's and bucketed ones are not. Packed or not, the loop counts the text tokens."""
    from transformers import BertConfig, LongformerConfig

    made, counted = [], []

    class Recorded(taskbatches.TaskBatches):
        def __init__(self, *args, pool: int = 1, packed: bool = False, **kwargs):
            made.append((pool, packed))
            super().__init__(*args, pool=pool, packed=packed, **kwargs)

    def train(module, batches, cfg, out_dir, *, count_tokens=None, **kwargs):
        count = count_tokens or (lambda b: b["attention_mask"].sum())
        counted.append(sum(int(count(batches(i))) for i in range(batches.per_epoch)))
        return {}

    monkeypatch.setattr(finetune, "TaskBatches", Recorded)
    monkeypatch.setattr(finetune.train, "train", train)
    task = tasks.TASKS["sentiment"]
    rows = [
        {"text": t, "label": i % 2}
        for i, t in enumerate(["很好", "太差了", "还行吧不错", "一般"] * 4)
    ]
    encoded = {s: tasks.encode(task, rows, tok, 16) for s in ("train", "test")}
    size = {"vocab_size": len(tok), "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
            "intermediate_size": 64}  # fmt: skip
    sources = {"bert": BertConfig(**size, max_position_embeddings=32),
               "long": LongformerConfig(**size, max_position_embeddings=40, attention_window=[8])}  # fmt: skip
    shared = {"sources": sources, "tasks": tasks.TASKS, "pad": {m: tok.pad_token_id for m in sources},
              "examples": {("sentiment", m): encoded for m in sources}, "eval_len": {"sentiment": 16},
              "batch_size": 4, "epochs": 1.0, "bf16": False, "work": str(tmp_path)}  # fmt: skip
    cases = {
        ("bert", ()): (1, True),
        ("bert", (("attention", "sdpa"),)): (1, True),
        ("bert", (("packed", False),)): (1, False),
        ("bert", (("length_buckets", True),)): (taskbatches.BUCKET_POOL, False),
        ("long", ()): (1, False),
    }
    for model, settings in cases:
        monkeypatch.setattr(finetune, "_SHARED", shared | dict(settings))
        finetune._run(finetune.Fit("sentiment", model, 1e-3, 0))
    assert made == list(cases.values())
    text = sum(len(e["input_ids"]) for e in encoded["train"])
    assert counted == [text] * len(cases)
