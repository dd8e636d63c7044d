"""bench finetune: examples per second of the lab's fine-tuning against transformers' `Trainer` (bf16,
dynamic padding), against the lab's own fine-tuning as it was (PyTorch's fused attention, torch's
dropout masks, one job after another), and beside the lab's with each example a padded row and with
batches of similar length: the same model, examples and work, arms in interleaved rounds. Beside
the speeds, each arm's test accuracy, whether it is above chance, and whether two arms' accuracies
are equal. By default the model is a Mini from random initialisation, which stays at chance (so the
accuracies say nothing); `--model` fine-tunes a pretrained BERT instead."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lab.bench import data, rounds
from lab.core import hardware, models, modelsource, sources, stats, tasks, vocab
from lab.core.finetune import PREDICT_BATCH, Fit, Fitter, task_model

TASK = tasks.TASKS["sentiment"]
LR = 5e-4  # every fit's peak learning rate: the fits of an arm differ in seed alone
EQUAL_WITHIN = 0.03  # test accuracy: arms this close score alike


def _rows(n_train: int, n_test: int) -> dict[str, list[dict]]:
    """Review texts with their labels, train and test apart (every other text of each label)."""
    reviews = sources.load("reviews")
    pos, neg = sorted(set(reviews["pos"])), sorted(set(reviews["neg"]))
    both = set(pos) & set(neg)
    rows = [{"text": t, "label": 1} for t in pos if t not in both]
    rows += [{"text": t, "label": 0} for t in neg if t not in both]
    rng = np.random.default_rng(0)
    rows = [rows[i] for i in rng.permutation(len(rows))]
    return {
        "train": rows[:n_train],
        "valid": rows[n_train : n_train + 8],
        "test": rows[n_train : n_train + n_test],
    }


def _trainer_fits(folder: Path, rows: dict, tokenizer, fits: list[Fit], *, batch: int, epochs: float,
                  seq_len: int) -> list[list[list[float]]]:  # fmt: skip
    """The same fits through transformers' Trainer with bf16 and dynamic padding; each fit's test
    outcomes (1 where a prediction is right)."""
    from datasets import Dataset
    from transformers import (
        AutoModelForSequenceClassification,
        DataCollatorWithPadding,
        PrinterCallback,
        Trainer,  # fmt: skip
        TrainingArguments,
    )

    enc = {s: Dataset.from_dict({**tokenizer([r["text"] for r in rows[s]], truncation=True, max_length=seq_len),
                                 "labels": [r["label"] for r in rows[s]]}) for s in ("train", "test")}  # fmt: skip
    accs = []
    steps = int(np.ceil(len(rows["train"]) / batch * epochs))
    for fit in fits:
        torch.manual_seed(fit.seed)
        model = AutoModelForSequenceClassification.from_pretrained(str(folder), num_labels=2)
        with tempfile.TemporaryDirectory() as tmp:
            args = TrainingArguments(
                output_dir=tmp, per_device_train_batch_size=batch, per_device_eval_batch_size=PREDICT_BATCH,
                num_train_epochs=epochs, learning_rate=fit.lr, warmup_steps=max(1, int(0.1 * steps)),
                weight_decay=0.01, bf16=True,
                use_cpu=not torch.cuda.is_available(), save_strategy="no", report_to=[], disable_tqdm=True,
                logging_strategy="no", seed=fit.seed, dataloader_num_workers=0,
            )  # fmt: skip
            trainer = Trainer(model=model, args=args, train_dataset=enc["train"],
                              data_collator=DataCollatorWithPadding(tokenizer))  # fmt: skip
            trainer.remove_callback(PrinterCallback)
            trainer.train()
            pred = trainer.predict(enc["test"])
        accs.append([[float(c)] for c in pred.predictions.argmax(-1) == pred.label_ids])
    return accs


def run(*, quick: bool = False, model: str = "") -> dict:
    """The evaluate stage's fine-tuning (batches drawn at random, several short examples packed into
    a row; this machine's training attention; two one-thread jobs side by side on 2 cores) against
    the Trainer a careful user runs (bf16, DataCollatorWithPadding, one job after another), the lab's
    fine-tuning before (fused SDPA attention, torch's dropout masks, each example a row padded to the
    batch's longest, one two-thread job after another), the lab's without packing (`lab_padded`) and
    with batches of similar length (`lab_buckets`, `evaluate.length_buckets`): per round each arm
    fine-tunes the same model on the same review examples at the same rate and seeds (new seeds each
    round, so the rounds add fits to the accuracy comparison); examples per second of training, with
    the model built and the test split predicted inside the time. Before the rounds every arm's
    processes run one untimed fit (`_warm_up`), as the evaluate stage's pool has done long before
    most of its fits.

    The model is a Mini from random initialisation, or `model`: a BERT masked-LM folder (one the lab
    pretrained, or a researcher's own) or hub name, with its tokenizer. Where the arms learn the
    task, the bench also says whether the lab's fine-tuning scores as each other arm's does: the
    difference of their test accuracies with a 95% interval over the fits and the test examples
    (`_alike`), judged equal when the interval lies inside +-`EQUAL_WITHIN`. The full bench's 20 fits
    an arm on 500 test examples can resolve that band; `--quick`'s 4 fits on 200 cannot."""
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as work:  # the Mini, the logs
        return _bench(Path(work), quick=quick, model=model)


def _bench(work: Path, *, quick: bool, model: str) -> dict:
    load_start = rounds.loadavg()
    n_train, n_test, seq_len, batch, epochs = (
        (300, 200, 64, 32, 1.0) if quick else (1000, 500, 64, 32, 1.0)
    )
    n_rounds, per_round = (1 if quick else 5), 4
    outcomes: dict[str, list] = {}  # per arm, each fit's per-example test outcomes, every round's
    seeds: dict[str, list] = {}  # per arm, the seeds of those fits

    def fits(arm: str) -> list[Fit]:  # new seeds each round, the same for every arm
        first = len(outcomes.get(arm, []))
        seeds.setdefault(arm, []).extend(range(first, first + per_round))
        return [Fit("sentiment", "model", LR, seed) for seed in seeds[arm][first:]]

    folder, tokenizer, label = _model(model, work)
    rows = _rows(n_train, n_test)
    encoded = {s: tasks.encode(TASK, rows[s], tokenizer, seq_len) for s in rows}
    shared = {"sources": {"model": folder}, "tasks": tasks.TASKS, "examples": {("sentiment", "model"): encoded},
              "pad": {"model": tokenizer.pad_token_id}, "eval_len": {"sentiment": seq_len}, "batch_size": batch,
              "epochs": epochs, "bf16": True, "work": str(work / "logs")}  # fmt: skip
    work_examples = per_round * n_train * epochs
    print(
        f"finetune bench: {label} on {n_train:,} review texts x {per_round} fits a round "
        f"(lr {LR:g}, new seeds each round), {n_rounds} round(s)",
        flush=True,
    )

    def lab_arm(name: str, fitter: Fitter):
        def arm() -> float:
            batch_of_fits = fits(name)
            t0 = time.perf_counter()
            done = fitter.run(batch_of_fits)
            seconds = time.perf_counter() - t0
            outcomes.setdefault(name, []).extend(
                tasks.outcomes(TASK, encoded["test"], done[f]["preds"]["test"])
                for f in batch_of_fits
            )
            return work_examples / seconds

        return arm

    def trainer_fits(batch_of_fits: list[Fit]) -> list:
        return _trainer_fits(folder, rows, tokenizer, batch_of_fits, batch=batch, epochs=epochs,
                             seq_len=seq_len)  # fmt: skip

    def trainer_arm() -> float:
        batch_of_fits = fits("trainer")
        t0 = time.perf_counter()
        outcomes.setdefault("trainer", []).extend(trainer_fits(batch_of_fits))
        return work_examples / (time.perf_counter() - t0)

    hardware.retain_freed_memory()  # every arm in this process alike, from the first round
    t0 = time.perf_counter()
    with (
        Fitter(shared, workers=2) as lab,
        Fitter(shared | {"packed": False}, workers=2) as padded,
        Fitter(shared | {"length_buckets": True}, workers=2) as buckets,
        Fitter(
            shared | {"attention": "sdpa", "fast_dropout": False, "packed": False}, workers=1
        ) as before,
    ):
        # the four pools start and warm up once, outside the rounds, as the evaluate stage's one
        started = time.perf_counter() - t0
        warmup = _warm_up({"lab": lab, "lab_padded": padded, "lab_buckets": buckets, "lab_before": before},
                          trainer_fits)  # fmt: skip
        arms = {
            "lab": lab_arm("lab", lab),
            "trainer": trainer_arm,
            "lab_before": lab_arm("lab_before", before),
            "lab_padded": lab_arm("lab_padded", padded),
            "lab_buckets": lab_arm("lab_buckets", buckets),
        }
        rates = rounds.interleaved(arms, n_rounds)
    med = {k: rounds.median(v) for k, v in rates.items()}
    accuracy = {k: [float(np.mean(o)) for o in v] for k, v in outcomes.items()}
    chance = tasks.chance(TASK, encoded["test"])
    floor = {name: _above_chance(name, outcomes[name], chance) for name in arms}
    for name in arms:
        print(f"  {name:11s} {med[name]:7,.0f} examples/s  test accuracy {np.mean(accuracy[name]):.3f} "
              f"({len(accuracy[name])} fits, {min(accuracy[name]):.3f}-{max(accuracy[name]):.3f}); "
              f"{stats.line(floor[name])}")  # fmt: skip
    if not any(f["verdict"] == stats.HOLDS for f in floor.values()):
        start = "random initialisation" if label == "Mini" else label
        print(f"  no arm is shown above chance ({chance:.3f}) after {epochs:g} epoch(s) from {start}: "
              "the accuracies cannot show that the arms learn alike")  # fmt: skip
    pairs = [
        ("lab", "trainer"),
        ("lab", "lab_before"),
        ("lab", "lab_padded"),
        ("lab_buckets", "lab"),
    ]
    alike = {f"{a} vs {b}": _alike(outcomes, a, b, floor) for a, b in pairs}
    for f in alike.values():
        print(f"  {stats.line(f)}" + (f"; {f['reason']}" if "reason" in f else ""))
    vs_trainer = rounds.paired_ratio(rates["lab"], rates["trainer"])
    vs_before = rounds.paired_ratio(rates["lab"], rates["lab_before"])
    vs_padded = rounds.paired_ratio(rates["lab"], rates["lab_padded"])
    buckets_vs_trainer = rounds.paired_ratio(rates["lab_buckets"], rates["trainer"])
    buckets_vs_lab = rounds.paired_ratio(rates["lab_buckets"], rates["lab"])
    return {
        "bench": "finetune", "ours": round(med["lab"], 1), "baseline": round(med["trainer"], 1),
        "unit": "training examples/s (model built and test predicted inside the time)", **vs_trainer,
        "target": 2.0, "baseline_arm": f"Trainer, bf16=True, DataCollatorWithPadding, one job at a time, predicting in batches of {PREDICT_BATCH} as the lab does",
        "before": round(med["lab_before"], 1), "ratio_vs_before": vs_before["ratio"],
        "ratio_vs_before_iqr": vs_before["ratio_iqr"], "ratio_vs_before_target": 1.5,
        "padded": round(med["lab_padded"], 1), "ratio_vs_padded": vs_padded["ratio"],
        "ratio_vs_padded_iqr": vs_padded["ratio_iqr"],
        "buckets": round(med["lab_buckets"], 1), "ratio_buckets_vs_trainer": buckets_vs_trainer["ratio"],
        "ratio_buckets_vs_trainer_iqr": buckets_vs_trainer["ratio_iqr"],
        "ratio_buckets_vs_lab": buckets_vs_lab["ratio"], "ratio_buckets_vs_lab_iqr": buckets_vs_lab["ratio_iqr"],
        "test_accuracy": {k: round(float(np.mean(v)), 4) for k, v in accuracy.items()},
        "test_chance": round(chance, 4),
        "above_chance": {k: {"difference": round(f["difference"], 4), "ci95": [round(x, 4) for x in f["ci95"]],
                             "verdict": f["verdict"]} for k, f in floor.items()},
        "alike": {k: {"within": EQUAL_WITHIN} | {x: f[x] for x in ("difference", "ci95", "verdict", "reason") if x in f}
                  for k, f in alike.items()},
        "fits": {"per_arm": len(outcomes["lab"]), "lr": LR, "seeds": seeds,
                 "train_examples": n_train, "test_examples": n_test, "epochs": epochs},
        "pool_start_seconds": round(started, 1), "warmup_seconds": warmup,
        "rates_by_round": {k: [round(x, 1) for x in v] for k, v in rates.items()}, "rounds": n_rounds,
        "loadavg": {"start": load_start, "end": rounds.loadavg()}, "model": label, "quick": quick,
        **({"model_folder": str(Path(folder).resolve()), "variant": "model"} if model else {}),
    }  # fmt: skip


WARMUP_SEED = 10_000  # the warm-up fits' seeds, apart from the rounds'


def _warm_up(fitters: dict[str, Fitter], trainer) -> dict[str, float]:
    """One untimed fit in every worker of every lab arm's pool and one through the Trainer, before
    the rounds; each arm's seconds. A process's first fit runs slower than its later ones (the
    bench's Mini in one thread: 5.1 s of training, then 3.6-3.7 s for each of the next seven),
    which the evaluate stage, whose pool runs its 170 fits, pays once a worker."""
    seconds = {}
    for name, fitter in fitters.items():
        t0 = time.perf_counter()
        fitter.run([Fit("sentiment", "model", LR, WARMUP_SEED + w) for w in range(fitter.workers)])
        seconds[name] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    trainer([Fit("sentiment", "model", LR, WARMUP_SEED)])
    return seconds | {"trainer": round(time.perf_counter() - t0, 1)}


def _arm(name: str, fits: list) -> stats.Arm:
    """An arm's fits as the units of a comparison, each with its per-example test outcomes."""
    return stats.Arm(
        name, [{"sentiment": stats.Outcomes.of("accuracy", [f])} for f in fits], "fine-tuning run"
    )


def _above_chance(name: str, fits: list, chance: float) -> dict:
    """An arm's test accuracy over the majority class's share, with a 95% interval over its fits
    (seeds) and the test examples (`lab.core.stats.above_chance`)."""
    return stats.above_chance(_arm(name, fits), {"sentiment": chance}) | {"claim": "above chance"}


def _alike(outcomes: dict, a: str, b: str, floor: dict) -> dict:
    """Arm `a`'s test accuracy minus arm `b`'s with its 95% interval over both arms' fits (seeds)
    and the test examples (`lab.core.stats.compare`, the fits of the two arms taken as independent).
    Equal within +-EQUAL_WITHIN holds when the interval lies inside the band, but only when both
    arms are shown above chance (models that learn nothing score alike whatever their loop); it does
    not hold when the interval lies outside the band. Between two of the lab's arms the interval is
    wider than it need be: a seed starts both with the same head, which pairing would use."""
    claim = f"{a} - {b} test accuracy within +-{EQUAL_WITHIN:g}"
    f = stats.compare(_arm(a, outcomes[a]), _arm(b, outcomes[b]))
    lo, hi = f["ci95"]
    idle = [name for name in (a, b) if floor[name]["verdict"] != stats.HOLDS]
    out = {
        "claim": claim,
        "difference": round(f["difference"], 4),
        "ci95": [round(x, 4) for x in f["ci95"]],
    }
    if lo >= EQUAL_WITHIN or hi <= -EQUAL_WITHIN:
        return out | {"verdict": stats.FAILS}
    if lo > -EQUAL_WITHIN and hi < EQUAL_WITHIN and not idle:
        return out | {"verdict": stats.HOLDS}
    why = f"not judged: {' and '.join(idle)} not shown above chance" if idle else ""
    return out | {"verdict": stats.OPEN} | ({"reason": why} if why else {})  # fmt: skip


def _model(spec: str, work: Path):
    """What the arms fine-tune: (folder, tokenizer, name). `spec` resolved (a BERT masked-LM folder
    with its tokenizer, or a hub name) and checked before any work, or a Mini from random
    initialisation saved under `work`."""
    if not spec:
        tokenizer = data.full_tokenizer()
        folder = work / "mini"
        models.build("Mini", len(tokenizer), seed=0).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        return folder, tokenizer, "Mini"
    what = "bench finetune --model"
    folder = modelsource.resolve(spec, param=what).folder
    modelsource.check_masked_lm(folder, spec, param=what)
    config = json.loads((folder / "config.json").read_text())

    def refuse(problem: str, fix: str, err: Exception | None = None):
        raise modelsource.ModelSourceError(f"{what} {spec}: {problem}; {fix}") from err

    if config["model_type"] != "bert":
        refuse(f"a {config['model_type']} (config.json)",
               "the bench fine-tunes BERT encoders (a converted Longformer is fine-tuned by the evaluate stage)")  # fmt: skip
    tokenizer = vocab.load(folder)
    if len(tokenizer) > config.get("vocab_size", 0):
        refuse(f"its tokenizer has {len(tokenizer):,} tokens and the model {config.get('vocab_size', 0):,}",
               "save the tokenizer the model was trained with beside it")  # fmt: skip
    try:  # the head swap the fits will do: a masked-LM checkpoint's encoder, nothing missing
        task_model(folder, TASK, seed=0, max_length=8)
    except (ValueError, FileNotFoundError) as err:
        refuse(
            str(err),
            "name a BERT masked-LM folder (BertForMaskedLM, as the pretrain stage saves)",
            err,
        )
    return folder, tokenizer, spec
