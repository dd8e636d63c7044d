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

from lab import contract, runs
from lab.core import mlm, models, names, tasks, vocab
from lab.core.files import write_json
from lab.core.metrics import fill_mask, mlm_metrics, speed, spread
from lab.core.progress import echo
from lab.core.stats import FAILS, HOLDS, OPEN
from lab.findings import OUTCOMES, findings
from lab.params import ConfigError, StageConfig, param


@dataclass(frozen=True)
class EvaluateConfig(StageConfig):
    stage = "evaluate"
    models: list[str] = param(
        "models to evaluate: [all] or names (teacher, assistant, one-stage-s1234, ...)"
    )
    all_seeds: bool = param("every seed's student (else the first seed of each kind)")
    tasks: list[str] = param("downstream tasks: sentiment, thucnews, msra_ner, stsb")
    task_models: list[str] = param(
        "models fine-tuned on the tasks: [all] or names / kinds (teacher, one-stage, ...); "
        "the others get LM metrics, probes, size and speed"
    )
    scratch: bool = param("also fine-tune the teacher's architecture from random init (baseline)")
    seeds: int = param("fine-tuning seeds per model and task", min=1)
    lrs: list[float] = param(
        "fine-tuning learning rates; several: chosen on the valid split", min=0.0
    )
    epochs: float = param("fine-tuning epochs", min=0.0)
    batch_size: int = param("fine-tuning batch size", min=1)
    task_seq_len: int = param("fine-tuning sequence length (tokens)", min=8)
    task_train_examples: int = param("training examples per task", min=1)
    task_eval_examples: int = param("valid / test examples per task", min=1)
    bf16: bool = param("bfloat16 autocast where the hardware supports it")
    workers: int = param(
        "fine-tunings run side by side, each on its share of the cores (1: one after another)",
        min=1,
    )
    lm_sequences: int = param(
        "held-out sequences for accuracy / perplexity / BPC, evenly spaced", min=1
    )
    speed_repeats: int = param("timed forward passes per speed measurement", min=1)
    probes_file: str = param("fill-mask probe file, one sentence a line (empty: the packaged one)")

    def check(self):
        bad = [t for t in self.tasks if t not in tasks.TASKS]
        if bad:
            raise ConfigError(
                f"evaluate.tasks: unknown {bad}; choose from {', '.join(tasks.TASKS)}"
            )
        if not self.lrs:
            raise ConfigError("evaluate.lrs is empty: give at least one learning rate")
        super().check()


def models_of_run(run_id: str, *, all_seeds: bool) -> dict[str, dict]:
    """Every model folder the run produced, by role: teacher, assistant, students, longformer."""
    out: dict[str, dict] = {}
    if runs.read_manifest(runs.stage_dir(run_id, "pretrain")):
        out[names.TEACHER] = {
            "dir": runs.stage_dir(run_id, "pretrain") / "model",
            "role": "teacher",
        }
    if runs.read_manifest(runs.stage_dir(run_id, "distill")):
        folder = runs.stage_dir(run_id, "distill") / "models"
        seen: set[str] = set()
        for name in sorted(p.name for p in folder.iterdir() if p.is_dir()):
            if not all_seeds and names.kind(name) in seen:
                continue
            seen.add(names.kind(name))
            role = "student" if names.is_student(name) else names.kind(name)
            out[name] = {"dir": folder / name, "role": role}
    if runs.read_manifest(runs.stage_dir(run_id, "longify")):
        out[names.LONGFORMER] = {
            "dir": runs.stage_dir(run_id, "longify") / "model",
            "role": "longformer",
        }
    return out


def read_probes(path: str = "") -> list[str]:
    text = (
        Path(path).read_text(encoding="utf-8")
        if path
        else resources.files("lab").joinpath("probes", "fill_mask.txt").read_text("utf-8")
    )
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def packed_vocab(tokenizer, corpus_dir: Path, names: list[str]) -> str:
    """Which of the run's vocabularies a model was trained with (its tokenizer's own vocabulary)."""
    mine = tokenizer.get_vocab()
    for name in names:
        if vocab.load(corpus_dir / "vocab" / name).get_vocab() == mine:
            return name
    raise runs.StageError(
        f"a model's vocabulary ({len(mine):,} tokens) is none of this run's ({', '.join(names)}); "
        "evaluate models trained on this run's corpus"
    )


@contract.locked
def run(cfg: EvaluateConfig) -> dict:
    stage = STAGE.stage(cfg)
    if stage.cached:
        echo(f"evaluate: cached ({stage.dir})")
        return stage.manifest
    corpus_m = STAGE.upstream_manifest(cfg, "corpus")
    wwm_m = STAGE.upstream_manifest(cfg, "wwm")
    found = models_of_run(cfg.run_id, all_seeds=cfg.all_seeds)
    wanted = found if cfg.models == ["all"] else {k: v for k, v in found.items() if k in cfg.models}
    missing = [k for k in cfg.models if k != "all" and k not in found]
    if missing:
        raise runs.StageError(f"evaluate.models names {missing}; this run has {list(found)}")
    unmatched = [
        k for k in cfg.task_models if k != "all" and not any(names.selected(n, [k]) for n in wanted)
    ]
    if unmatched:
        raise runs.StageError(
            f"evaluate.task_models names {unmatched}; the models evaluated are {list(wanted)}"
        )
    work = stage.begin()
    t0 = time.time()

    tokenizers = {name: vocab.load(m["dir"]) for name, m in wanted.items()}
    rows: dict[str, dict] = {}
    probes = read_probes(cfg.probes_file)
    probe_out: dict[str, dict] = {}
    length = str(min(wwm_m["params"]["seq_lengths"]))
    for name, m in wanted.items():
        model, tok = mlm.load(m["dir"]), tokenizers[name]
        vocab_name = packed_vocab(tok, corpus_m["dir"], wwm_m["params"]["vocabs"])
        ids, wids = spread(
            *mlm.load_packed(wwm_m["dir"] / "packed" / vocab_name / length, "test"),
            cfg.lm_sequences,
        )
        c = models.count(model)
        lm = mlm_metrics(model, ids, wids, tok, seed=cfg.seed)
        rows[name] = {
            "role": m["role"], "layers": model.config.num_hidden_layers, "hidden": model.config.hidden_size,
            "params": c["total"], "non_embedding": c["non_embedding"],
            "acc": lm["acc"], "ppl": lm["ppl"], "bpc": lm["bpc"],
            **speed(model, repeats=cfg.speed_repeats),
        }  # fmt: skip
        probe_out[name] = {p: fill_mask(model, tok, p) for p in probes}
        echo(
            f"{name}: acc {lm['acc']:.3f}, ppl {lm['ppl']:.1f}, {rows[name]['latency_ms_b1']:.1f} ms at batch 1"
        )
    if teacher := rows.get("teacher"):
        for r in rows.values():
            r["speedup"] = teacher["latency_ms_b1"] / r["latency_ms_b1"]
            r["throughput_speedup"] = r["throughput_seq_s_b32"] / teacher["throughput_seq_s_b32"]

    # downstream tasks: the task_models, plus the teacher's architecture trained from scratch
    sources = {
        name: m["dir"] for name, m in wanted.items() if names.selected(name, cfg.task_models)
    }
    if cfg.scratch and "teacher" in wanted:
        sources["scratch"] = AutoConfig.from_pretrained(str(wanted["teacher"]["dir"]))
        tokenizers["scratch"] = tokenizers["teacher"]
        rows["scratch"] = {"role": "scratch"}
    protocol = tasks.Protocol(
        lrs=tuple(cfg.lrs), epochs=cfg.epochs, seeds=cfg.seeds, batch_size=cfg.batch_size,
        seq_len=cfg.task_seq_len, train_examples=cfg.task_train_examples,
        eval_examples=cfg.task_eval_examples, bf16=cfg.bf16, seed=cfg.seed,
    )  # fmt: skip
    data = {t: load_from_disk(str(corpus_m["dir"] / "tasks" / t)) for t in cfg.tasks}
    scores, outcomes = tasks.run_all(
        sources, data, protocol, work, tokenizers, workers=cfg.workers, progress=echo
    )
    write_json(work / OUTCOMES, outcomes)
    metrics = {
        "models": rows,
        "tasks": scores,
        "relative_to_teacher": relative_scores(scores),
        "average": {
            name: float(np.mean([v["mean"] for v in t.values()]))
            for name, t in scores.items()
            if len(t) == len(cfg.tasks)
        },
        "probes": probe_out,
        "seconds": time.time() - t0,
        "findings": findings(outcomes, rows) | long_context(cfg.run_id),
    }
    write_json(work / "results.json", metrics)
    return stage.finish({"results": "results.json", "outcomes": OUTCOMES}, metrics)


def long_context(run_id: str) -> dict:
    """The longify stage's finding: does the Longformer use context beyond 512 tokens?"""
    m = runs.read_manifest(runs.stage_dir(run_id, "longify"))
    gain = m and m["metrics"].get("context_gain", {}).get("gain_beyond_512")
    return (
        {gain["claim"]: gain | {"documents": m["metrics"]["context_gain"]["documents"]}}
        if gain
        else {}
    )


def relative_scores(scores: dict) -> dict:
    """Each model's task scores as a share of the teacher's (MiniRBT's relative table)."""
    if "teacher" not in scores:
        return {}
    out = {}
    for name, t in scores.items():
        out[name] = {
            task: v["mean"] / scores["teacher"][task]["mean"]
            for task, v in t.items()
            if task in scores["teacher"] and scores["teacher"][task]["mean"]
        }
        if out[name]:
            out[name]["average"] = float(np.mean(list(out[name].values())))
    return out


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
    rel = {
        k: v["average"]
        for k, v in m["relative_to_teacher"].items()
        if "average" in v
        and m["models"].get(k, {}).get("role") in ("student", "assistant", "longformer")
    }
    if rel:
        best = max(rel, key=rel.get)
        out["best relative to teacher"] = f"{best} {rel[best]:.0%}"
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
)


def main(argv: list[str] | None = None) -> int:
    return contract.main(STAGE, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
