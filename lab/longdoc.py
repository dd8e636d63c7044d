"""The evaluate stage's long-document task: the Longformer (whole documents) against its BERT (their
first 512 tokens) on documents whose answer may lie past 512 tokens (`lab.core.longtask`), read one
of two ways, `evaluate.longdoc_method`:

* `finetune`: both models fine-tuned on whole documents by the tasks' protocol (rate chosen on
  valid, fresh seeds on test), as the seeds evaluate a long reader; the gpu profiles.
* `probe`: both encoders frozen, a linear token tagger on their states (`lab.core.longprobe`),
  minutes instead of an hour on a CPU; the cpu and smoke profiles.

Either way: accuracy by where the needle lies (bins of 256 tokens), and the finding for the
documents whose needle lies wholly past BERT's reach.
"""

from __future__ import annotations

from pathlib import Path

from datasets import load_from_disk
from transformers import AutoConfig

from lab.core import longprobe, longtask, mlm, names, protocol, tasks, train
from lab.core.progress import echo
from lab.core.stats import OPEN, Arm, Outcomes, above_chance, compare
from lab.findings import claim

TASK = tasks.TASKS["longdoc"]
BIN = 256  # tokens per needle-position bin
METHODS = ("finetune", "probe")


def long_document_task(cfg, wanted: dict, tokenizers: dict, corpus_m: dict, work: Path) -> dict:
    """Both readers' test outcomes by the configured method; accuracy by needle position; the
    finding past BERT's reach. `cfg` is the evaluate stage's configuration."""
    if not {names.TEACHER, names.LONGFORMER} <= set(wanted):
        return {"skipped": "the long-document task needs this run's teacher and Longformer"}
    dd = load_from_disk(str(corpus_m["dir"] / "tasks" / "longdoc"))
    length = corpus_m["params"]["longdoc_chars"] + 2
    reach = AutoConfig.from_pretrained(str(wanted[names.TEACHER]["dir"])).max_position_embeddings
    readers = (names.TEACHER, names.LONGFORMER)
    test = tasks.sample(TASK, dd["test"], len(dd["test"]))  # the order both methods score in
    if cfg.longdoc_method == "probe":
        got = _probe(
            cfg, wanted, tokenizers, dd, test, {names.TEACHER: reach, names.LONGFORMER: length}
        )
        level = "probe run"
    else:
        got = _finetune(cfg, wanted, tokenizers, dd, work, reach, length)
        level = "fine-tuning run"
    tok = tokenizers[names.LONGFORMER]
    where = [len(tok(r["text"][: r["needle_at"]], add_special_tokens=False, verbose=False)["input_ids"])
             for r in test]  # fmt: skip
    bins = longtask.bins(where, BIN, length)
    by_bin: dict = {}
    for m in readers:
        for b in sorted(set(bins)):
            idx = [i for i, x in enumerate(bins) if x == b]
            r = above_chance(_arm(m, got["outcomes"][m], idx, level), {})
            by_bin.setdefault(m, []).append({"from": b * BIN, "to": (b + 1) * BIN, "examples": len(idx),
                                             "accuracy": r["difference"], "ci95": r["ci95"]})  # fmt: skip
    past = [i for i, w in enumerate(where) if w >= reach - 2]  # wholly after what BERT reads
    out = {"method": cfg.longdoc_method, "results": got["results"], "chance": got["chance"],
           "by_position": by_bin, "reach": reach, "length": length, "past_reach": len(past),
           "examples": len(test)}  # fmt: skip
    text = (
        f"the frozen Longformer's token states carry the needle's topic past {reach} tokens, where its BERT "
        "reads nothing (a linear token probe)"
        if cfg.longdoc_method == "probe"
        else f"the Longformer beats BERT on the long-document task when the needle lies past {reach} tokens"
    )
    if not past:
        out["finding"] = {"claim": text, "verdict": OPEN, "difference": None, "ci95": None,
                          "reason": f"no test document has its needle past {reach} tokens"}  # fmt: skip
        return out
    a, b = (_arm(m, got["outcomes"][m], past, level) for m in (names.LONGFORMER, names.TEACHER))
    # the haystacks' source chapters: a bootstrap over documents holds them fixed
    chapters = len({test[i]["source"] for i in past})
    fixed = [f"the pretraining run (1: {names.TEACHER})", "one conversion and continued pretraining",
             f"{len(past)} documents past {reach}, their haystacks cut from {chapters} held-out chapters"]  # fmt: skip
    if cfg.longdoc_method == "probe":
        fixed.append("the training documents (each probe draws its own background tokens)")
    out["finding"] = claim(text, text, a, b, compare(a, b), recipe_runs=False, fixed=fixed)
    return out


def _arm(model: str, seeds: list[list], idx: list[int], level: str) -> Arm:
    """One reader's runs (each seed a unit of its own) on the test documents `idx`."""
    return Arm(
        model,
        [{"longdoc": Outcomes.of("accuracy", [[s[i] for i in idx]])} for s in seeds],
        level=level,
    )


def _finetune(cfg, wanted, tokenizers, dd, work, reach, length) -> dict:
    models_ = {m: wanted[m]["dir"] for m in (names.TEACHER, names.LONGFORMER)}
    p = protocol.Protocol(
        lrs=tuple(cfg.lrs), epochs=cfg.longdoc_epochs, seeds=cfg.seeds, student_seeds=cfg.student_seeds,
        batch_size=cfg.longdoc_batch, seq_len=length, train_examples=len(dd["train"]),
        eval_examples=len(dd["test"]), bf16=cfg.bf16, seed=cfg.seed, length_buckets=cfg.length_buckets,
    )  # fmt: skip
    done = protocol.run_all(models_, {"longdoc": dd}, p, work / "longdoc", tokenizers, workers=cfg.workers,
                            limits={names.TEACHER: reach}, progress=echo)  # fmt: skip
    return {"results": done["results"], "chance": done["chance"]["longdoc"],
            "outcomes": {m: done["outcomes"][m]["longdoc"] for m in models_}}  # fmt: skip


def _probe(cfg, wanted, tokenizers, dd, test: list[dict], reach: dict) -> dict:
    device = train.accelerator().device
    train_rows = tasks.sample(TASK, dd["train"], len(dd["train"]))
    out: dict = {"results": {}, "outcomes": {}}
    for m, cap in reach.items():
        tok = tokenizers[m]
        encoder = mlm.load(wanted[m]["dir"]).base_model.to(device)
        seeds = longprobe.outcomes(
            encoder, longprobe.documents(train_rows, tok, cap), longprobe.documents(test, tok, cap),
            classes=TASK.num_labels, seeds=cfg.seeds, seed=cfg.seed, pad_id=tok.pad_token_id,
            batch=cfg.longdoc_batch, bf16=cfg.bf16, name=m,
        )  # fmt: skip
        out["outcomes"][m] = seeds
        out["results"][m] = {"longdoc": tasks.summary(TASK, seeds)}
        echo(
            f"long-document probe, {m} ({cap} tokens): accuracy {out['results'][m]['longdoc']['mean']:.3f}"
        )
    out["chance"] = tasks.chance(TASK, [{"labels": r["label"]} for r in test])
    return out
