"""Stage 06, evaluate: every model of the run side by side — downstream tasks against scratch and
n-gram baselines, language-model metrics, fill-mask probes, size and speed, and comparisons across
runs. UER's task scores and MiniRBT's relative-score and speed tables on one page.

    python -m lab.evaluate --run-id X [--profile P] [-p key=value ...]
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from datasets import load_from_disk
from transformers import AutoConfig

from lab import contract, lineup, runs
from lab.core import charlm, mlm, models, modelsource, names, protocol, tasks, vocab
from lab.core.files import digest_path, write_json
from lab.core.metrics import fill_mask, mlm_metrics, speeds, spread
from lab.core.progress import echo
from lab.core.stats import FAILS, HOLDS, OPEN, Arm, above_chance, compare
from lab.findings import OUTCOMES, arm, claim, findings, named
from lab.findings import relative as rel_scores
from lab.groups import segmenter_of
from lab.lineup import models_of_run
from lab.longdoc import METHODS, long_document_task
from lab.params import ConfigError, StageConfig, param

CURVES = "curves.json"  # in the evaluate stage's folder: the data-efficiency curves' outcomes


@dataclass(frozen=True)
class EvaluateConfig(StageConfig):
    stage = "evaluate"
    models: list[str] = param(
        "models to evaluate: [all] or names (teacher, assistant, one-stage-s1234, ...), and model "
        "folders or hub names of your own (each fine-tuned on every task beside the run's)"
    )
    compare: list[str] = param(
        "comparisons of your own, 'A vs B' (model names, kinds, or an outside model's short name)"
    )
    all_seeds: bool = param("every seed's student (else the first seed of each kind)")
    tasks: list[str] = param("downstream tasks: sentiment, thucnews, msra_ner, stsb")
    task_models: list[str] = param(
        "models fine-tuned on the tasks: [all] or names / kinds (teacher, one-stage, ...); "
        "the others get LM metrics, probes, size and speed"
    )
    scratch: bool = param("also fine-tune the teacher's architecture from random init (baseline)")
    seeds: int = param(
        "fresh fine-tuning seeds scored on test per model that stands alone (teacher, scratch)",
        min=1,
    )
    student_seeds: int = param(
        "fresh fine-tuning seeds per distilled model (its distillation run is the outer level)",
        min=1,
    )
    lrs: list[float] = param(
        "fine-tuning learning rates; several: chosen on the valid split with a selection seed",
        min=0.0,
    )
    epochs: float = param("fine-tuning epochs", min=0.0)
    batch_size: int = param("fine-tuning batch size", min=1)
    task_seq_len: int = param("fine-tuning sequence length (tokens)", min=8)
    task_train_examples: int = param("training examples per task", min=1)
    task_eval_examples: int = param("valid / test examples per task", min=1)
    bf16: bool = param("bfloat16 autocast where the hardware supports it")
    length_buckets: bool = param(
        "fine-tuning batches of similar length: about as fast as packed rows, lower on review sentiment (lab/core/finetune.py)"
    )
    workers: int = param(
        "fine-tunings run side by side, each on its share of the cores (1: one after another)",
        min=1,
    )
    lm_sequences: int = param(
        "held-out sequences for accuracy / perplexity / BPC, evenly spaced", min=1
    )
    speed_repeats: int = param("rounds of the speed measurement (every model timed in each)", min=1)
    curve_sizes: list[int] = param(
        "training examples of the data-efficiency curves (below task_train_examples)", min=1
    )
    curve_tasks: list[str] = param("tasks of the data-efficiency curves (classification tasks)")
    longdoc: bool = param(
        "the Longformer against its BERT on the long-document task (a needle past 512?)"
    )
    longdoc_method: str = param(
        "long-document task: finetune (whole models) or probe (a linear token probe on the frozen encoders)",
        choices=METHODS,
    )
    longdoc_batch: int = param("long-document task: documents per batch", min=1)
    longdoc_epochs: float = param("long-document task: fine-tuning epochs", min=0.0)
    probes_file: str = param("fill-mask probe file, one sentence a line (empty: the packaged one)")

    def check(self):
        if "longdoc" in [*self.tasks, *self.curve_tasks]:
            raise self.fail(
                "tasks",
                "the long-document task runs with evaluate.longdoc = true, not in the task list",
            )
        bad = [t for t in [*self.tasks, *self.curve_tasks] if t not in tasks.TASKS]
        if bad:
            raise ConfigError(
                f"evaluate.tasks: unknown {bad}; choose from {', '.join(tasks.TASKS)}"
            )
        if not self.lrs:
            raise ConfigError("evaluate.lrs is empty: give at least one learning rate")
        bad = [c for c in self.compare if len(c.split(" vs ")) != 2]
        if bad:
            raise self.fail(
                "compare", f"{bad}: write each comparison as 'A vs B', say 'teacher vs rbt3'"
            )
        super().check()


def user_inputs(cfg: EvaluateConfig) -> dict[str, str]:
    """The outside models (a folder by its content, a hub name by its revision) and a probe file."""
    out = {spec: modelsource.resolve(spec, param="evaluate.models", weights=False).digest()
           for spec in cfg.models if not lineup.is_own(spec)}  # fmt: skip
    return out | ({"probes_file": digest_path(Path(cfg.probes_file))} if cfg.probes_file else {})


def held_out_pieces(corpus_dir: Path, n: int, chars: int) -> list[str]:
    """`n` pieces of at most `chars` characters from the corpus's test split, evenly spaced."""
    test = load_from_disk(str(corpus_dir / "corpus"))["test"]
    at = np.linspace(0, len(test) - 1, min(n, len(test))).round().astype(int)
    return [t[:chars] for t in test.select(at)["text"] if t.strip()]


def read_probes(path: str = "") -> list[str]:
    text = (
        Path(path).read_text(encoding="utf-8")
        if path
        else resources.files("lab").joinpath("probes", "fill_mask.txt").read_text("utf-8")
    )
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


@contract.locked
def run(cfg: EvaluateConfig) -> dict:
    stage = STAGE.stage(cfg)
    if stage.cached:
        echo(f"evaluate: cached ({stage.dir})")
        return stage.manifest
    corpus_m = STAGE.upstream_manifest(cfg, "corpus")
    wwm_m = STAGE.upstream_manifest(cfg, "wwm")
    found = models_of_run(cfg.run_id, all_seeds=cfg.all_seeds)
    if problems := lineup.problems(cfg.models, found):
        raise runs.StageError("; ".join(problems))
    wanted = {k: v for k, v in found.items() if "all" in cfg.models or k in cfg.models}
    wanted |= lineup.outside(cfg.models)
    unmatched = [
        k for k in cfg.task_models if k != "all" and not any(names.selected(n, [k]) for n in wanted)
    ]
    if unmatched:
        raise runs.StageError(
            f"evaluate.task_models names {unmatched}; the models evaluated are {list(wanted)}"
        )
    tasked = [
        n for n, m in wanted.items() if names.selected(n, cfg.task_models) or m["role"] == "outside"
    ]
    scored = {*tasked, *map(names.kind, tasked), names.NGRAM} | (
        {names.SCRATCH} if cfg.scratch else set()
    )
    if bad := [s.strip() for c in cfg.compare for s in c.split(" vs ") if s.strip() not in scored]:
        raise runs.StageError(
            f"evaluate.compare names {bad}, which get no task scores; choose from {sorted(scored)}"
        )
    work = stage.begin()
    t0 = time.time()

    tokenizers = {name: vocab.load(m["dir"]) for name, m in wanted.items()}
    rows, probe_out, loaded = {}, {}, {}
    probes = read_probes(cfg.probes_file)
    length = str(min(wwm_m["params"]["seq_lengths"]))
    pieces = held_out_pieces(corpus_m["dir"], cfg.lm_sequences, int(length) - 2)
    hidden = charlm.hidden_words(pieces, segmenter_of(wwm_m["params"]).cut, seed=cfg.seed)
    for name, m in wanted.items():
        model, tok = mlm.load(m["dir"]), tokenizers[name]
        vocab_name = lineup.packed_vocab(tok, lineup.packed_vocabs(corpus_m, wwm_m))
        lm = {"acc": None, "ppl": None, "bpc": None}  # another vocabulary: no token-level metrics
        if vocab_name:
            ids, wids = spread(
                *mlm.load_packed(wwm_m["dir"] / "packed" / vocab_name / length, "test"),
                cfg.lm_sequences,
            )
            lm = mlm_metrics(model, ids, wids, tok, seed=cfg.seed)
        same = charlm.same_chars_bpc(model, tok, pieces, hidden, bf16=cfg.bf16)
        c = models.count(model)
        rows[name] = {
            "role": m["role"], "layers": model.config.num_hidden_layers, "hidden": model.config.hidden_size,
            "params": c["total"], "non_embedding": c["non_embedding"], "acc": lm["acc"], "ppl": lm["ppl"],
            "bpc": lm["bpc"], "bpc_same_chars": same["bpc"], "unknown_share": same["unknown_share"], "vocab": vocab_name or f"its own ({len(tok):,})",
        } | ({"source": m["source"]} if "source" in m else {})  # fmt: skip
        probe_out[name] = {p: fill_mask(model, tok, p) for p in probes}
        loaded[name] = model
        echo(
            f"{name}: bits per hidden character {same['bpc']:.3f}"
            + (f", acc {lm['acc']:.3f}" if vocab_name else "")
        )
    reference = names.TEACHER if names.TEACHER in loaded else None
    for name, s in speeds(
        loaded, reference=reference, repeats=cfg.speed_repeats, seed=cfg.seed
    ).items():
        rows[name] |= s
    del loaded

    # downstream tasks: the task_models, plus the teacher's architecture trained from scratch
    sources = {name: wanted[name]["dir"] for name in tasked}
    if cfg.scratch and names.TEACHER in wanted:
        sources[names.SCRATCH] = AutoConfig.from_pretrained(str(wanted[names.TEACHER]["dir"]))
        tokenizers[names.SCRATCH] = tokenizers[names.TEACHER]
        rows[names.SCRATCH] = {"role": "scratch"}
    p = protocol.Protocol(
        lrs=tuple(cfg.lrs), epochs=cfg.epochs, seeds=cfg.seeds, student_seeds=cfg.student_seeds,
        batch_size=cfg.batch_size, seq_len=cfg.task_seq_len, train_examples=cfg.task_train_examples,
        eval_examples=cfg.task_eval_examples, bf16=cfg.bf16, seed=cfg.seed,
        curve_sizes=tuple(cfg.curve_sizes), curve_tasks=tuple(cfg.curve_tasks),
        length_buckets=cfg.length_buckets,
    )  # fmt: skip
    data = {t: load_from_disk(str(corpus_m["dir"] / "tasks" / t)) for t in cfg.tasks}
    done = protocol.run_all(sources, data, p, work, tokenizers, workers=cfg.workers, progress=echo)
    scores, outcomes, chance = done["results"], done["outcomes"], done["chance"]
    write_json(work / OUTCOMES, outcomes)
    write_json(work / CURVES, {str(n): v for n, v in done["curves"].items()})
    relative = rel_scores(scores, chance)
    longdoc = long_document_task(cfg, wanted, tokenizers, corpus_m, work) if cfg.longdoc else None
    found = (
        findings(outcomes, rows, chance) | long_context(cfg.run_id) | named(cfg.compare, outcomes)
    )
    metrics = {
        "models": rows,
        "tasks": scores,
        "chance": chance,
        "selection": done["selection"],
        "relative_to_teacher": relative,
        "average": {
            name: float(np.mean([v["mean"] for v in t.values()]))
            for name, t in scores.items()
            if len(t) == len(cfg.tasks)
        },  # fmt: skip
        "probes": probe_out,
        "curves": curve_findings(
            done["curves"], outcomes, done["curve_models"], cfg.task_train_examples
        ),
        "seconds": time.time() - t0,
        "findings": found,
    }
    if longdoc:
        metrics["longdoc"] = longdoc
        if "finding" in longdoc:
            metrics["findings"][longdoc["finding"]["claim"]] = longdoc["finding"]
    write_json(work / "results.json", metrics)
    return stage.finish(
        {"results": "results.json", "outcomes": OUTCOMES, "curves": CURVES}, metrics
    )


def curve_findings(curves: dict, outcomes: dict, curve_models: list[str], full: int) -> dict:
    """The data-efficiency curves: for each task, each curve model's score at each training-set size
    (the full one from the main results) with its 95% interval over its runs and the test examples,
    and the claim "the teacher beats the n-gram baseline" at each size."""
    sizes = {**{int(n): by_model for n, by_model in curves.items()}, full: outcomes}
    kinds = list(dict.fromkeys(names.kind(m) for m in curve_models))
    points: dict = {}
    claims: dict = {}
    for n in sorted(sizes):
        by_model = sizes[n]
        for k in kinds:
            members = [m for m in curve_models if names.kind(m) == k and m in by_model]
            if not members:
                continue
            label = f"{k} students" if names.is_student(members[0]) else k
            a = arm(by_model, members, label, recipe="distillation run")
            for t in sorted(a.tasks):
                one = Arm(
                    label,
                    [{t: u[t]} for u in a.units],
                    level=a.level,
                    deterministic=a.deterministic,
                )
                r = above_chance(one, {})
                points.setdefault(t, {}).setdefault(label, []).append(
                    {"examples": n, "score": r["difference"], "ci95": r["ci95"]}
                )
        if names.TEACHER in by_model and names.NGRAM in by_model:
            tasks_ = sorted(by_model[names.NGRAM])
            a = arm(by_model, [names.TEACHER], "teacher", recipe="pretraining run", tasks=tasks_)
            b = arm(by_model, [names.NGRAM], names.NGRAM, recipe="", tasks=tasks_)
            claims[str(n)] = claim("pretraining beats a character n-gram baseline",
                                   f"this teacher beats the n-gram baseline with {n:,} training examples",
                                   a, b, compare(a, b), recipe_runs=False,
                                   fixed=[f"the pretraining run (1: {names.TEACHER})"])  # fmt: skip
    return {"points": points, "teacher_vs_ngram": claims}


def long_context(run_id: str) -> dict:
    """The longify stage's findings: does the Longformer use context beyond 512 tokens, and does it
    beat the same continued pretraining at 512?"""
    m = runs.read_manifest(runs.stage_dir(run_id, "longify"))
    if not m:
        return {}
    found = [
        m["metrics"].get("context_gain", {}).get("gain_beyond_512"),
        m["metrics"].get("controlled_bpc"),
    ]
    return {f["claim"]: f for f in found if f}


def headline(manifest: dict) -> dict:
    m = manifest["metrics"]
    verdicts = [f["verdict"] for f in m["findings"].values()]
    out = {
        "findings": ", ".join(
            f"{verdicts.count(v)} {v}" for v in (HOLDS, FAILS, OPEN) if v in verdicts
        )
        or "none"
    }
    for name in ("teacher", "scratch"):
        if name in m["average"]:
            out[f"{name} task average"] = f"{m['average'][name]:.3f}"
    kept = next((f for f in m["findings"].values() if "teacher_above_chance" in f), None)
    if kept and kept.get("score_a"):  # the retention finding's own quantity, above chance
        chance = kept["chance"]
        gain = {t: (kept["score_a"][t] - chance[t]) / (kept["score_b"][t] - chance[t]) for t in kept["score_a"]
                if kept["score_b"][t] - chance[t] > 0}  # fmt: skip
        if gain:
            out[f"{kept['a']} keep, above chance"] = (
                f"{np.mean(list(gain.values())):.0%} of the teacher's gain"
            )
    return out


STAGE = contract.Contract(
    name="evaluate",
    notebook="06_evaluate.ipynb",
    description="every model of the run on downstream tasks, LM metrics, probes, size and speed",
    params=EvaluateConfig,
    upstream=("corpus", "wwm", "pretrain"),
    verify=("wwm", "pretrain", "distill", "longify"),
    optional=("distill", "longify"),
    headline=headline,
    sources=user_inputs,
)


def main(argv: list[str] | None = None) -> int:
    return contract.main(STAGE, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
