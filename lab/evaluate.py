"""Stage 06, evaluate: every model of the run side by side — downstream tasks against scratch and
n-gram baselines, language-model metrics, fill-mask probes, size and speed, and comparisons across
runs. UER's task scores and MiniRBT's relative-score and speed tables on one page.

    python -m lab.evaluate --run-id X [--profile P] [-p key=value ...]
"""

from __future__ import annotations

import json
import time
from importlib import resources
from pathlib import Path

import numpy as np
from transformers import AutoConfig

from lab import contract, runs
from lab.config import EvaluateConfig
from lab.core import mlm, models, tasks, vocab
from lab.core.files import write_json
from lab.core.metrics import fill_mask, mlm_metrics, speed, spread
from lab.core.progress import echo


def models_of_run(run_id: str, *, all_seeds: bool) -> dict[str, dict]:
    """Every model folder the run produced, by role: teacher, assistant, students, longformer."""
    out: dict[str, dict] = {}
    pre = runs.read_manifest(runs.stage_dir(run_id, "pretrain"))
    if pre:
        out["teacher"] = {"dir": runs.stage_dir(run_id, "pretrain") / "model", "role": "teacher"}
    dist = runs.read_manifest(runs.stage_dir(run_id, "distill"))
    if dist:
        folder = runs.stage_dir(run_id, "distill") / "models"
        names = sorted(p.name for p in folder.iterdir() if p.is_dir())
        seen: set[str] = set()
        for name in names:
            kind = name.split("-s")[0]
            if not all_seeds and kind in seen:
                continue
            seen.add(kind)
            out[name] = {
                "dir": folder / name,
                "role": "assistant" if name == "assistant" else "student",
            }
    lon = runs.read_manifest(runs.stage_dir(run_id, "longify"))
    if lon:
        out["longformer"] = {
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

    # downstream tasks: every model, plus the teacher's architecture trained from scratch
    sources = {name: m["dir"] for name, m in wanted.items()}
    if cfg.scratch and "teacher" in wanted:
        sources["scratch"] = AutoConfig.from_pretrained(str(wanted["teacher"]["dir"]))
        tokenizers["scratch"] = tokenizers["teacher"]
        rows["scratch"] = {"role": "scratch"}
    task_dirs = {t: corpus_m["dir"] / "tasks" / t for t in cfg.tasks}
    scores = tasks.run_all(sources, task_dirs, cfg, work, tokenizers) if cfg.tasks else {}
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
        "findings": findings(cfg.run_id, rows, scores, cfg.params()),
    }
    write_json(work / "results.json", metrics)
    return stage.finish({"results": "results.json"}, metrics)


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


def findings(run_id: str, rows: dict, scores: dict, params: dict) -> dict:
    """Which of the reference recipes' qualitative claims this run reproduces, stated from its own numbers
    (`params`: this evaluate stage's, whose manifest is not written yet)."""
    out = {}
    avg = {n: np.mean([v["mean"] for v in t.values()]) for n, t in scores.items() if t}
    if "teacher" in avg and "scratch" in avg:
        out["pretraining beats scratch"] = {
            "holds": bool(avg["teacher"] > avg["scratch"]),
            "teacher": avg["teacher"],
            "scratch": avg["scratch"],
        }
    students = [n for n in avg if n.startswith(("one-stage", "two-stage"))]
    if "teacher" in avg and students:
        best = max(students, key=lambda n: avg[n])
        out["students keep most of the teacher's score at a fraction of its latency"] = {
            "holds": bool(avg[best] / avg["teacher"] >= 0.85 and rows[best].get("speedup", 0) >= 2),
            "student": best, "relative": avg[best] / avg["teacher"], "speedup": rows[best].get("speedup"),
        }  # fmt: skip
    one = [avg[n] for n in students if n.startswith("one-stage")]
    two = [avg[n] for n in students if n.startswith("two-stage")]
    if one and two:
        out["two-stage beats one-stage"] = {
            "holds": bool(np.mean(two) > np.mean(one)),
            "two_stage": float(np.mean(two)),
            "one_stage": float(np.mean(one)),
        }
    if "teacher" in avg:
        out.update(ablation_findings(run_id, float(avg["teacher"]), params))
    return out


# the reference recipes' ablation claims: (the one parameter that differs, the value the claim favours, claim)
ABLATIONS = (
    ("pretrain.masking", "wwm", "whole-word masking beats token-level masking"),
    ("pretrain.vocab", "compact", "the compact vocabulary keeps the full vocabulary's score"),
)
# parameters that do not change the teacher or how it is scored
_NOT_THE_TEACHER = {"run_id", "profile", "models", "scratch", "all_seeds", "lm_sequences",
                    "speed_repeats", "probes_file"}  # fmt: skip


def _teacher_params(run_id: str, evaluate_params: dict | None = None) -> dict | None:
    """Everything that shapes a run's teacher and its scores: corpus, wwm, pretrain and evaluate
    parameters (the evaluate ones given, or read from the run's evaluate manifest)."""
    out = {}
    for stage in ("corpus", "wwm", "pretrain", "evaluate"):
        if stage == "evaluate" and evaluate_params is not None:
            params = evaluate_params
        else:
            m = runs.read_manifest(runs.stage_dir(run_id, stage))
            if not m:
                return None
            params = m["params"]
        out.update({f"{stage}.{k}": v for k, v in params.items() if k not in _NOT_THE_TEACHER})
    return out


def ablation_findings(run_id: str, teacher_avg: float, evaluate_params: dict) -> dict:
    """Compare this run's teacher with every other run whose teacher differs in exactly one of the
    ABLATIONS parameters (say `python -m lab run --run-id cpu-wwm -p pretrain.masking=wwm`), by the
    average downstream score. A claim holds when the favoured side scores higher; the compact
    vocabulary claim (no loss) holds within 0.01."""
    mine = _teacher_params(run_id, evaluate_params)
    root = runs.data_dir() / "runs"
    if mine is None or not root.exists():
        return {}
    out = {}
    for other in sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != run_id):
        theirs = _teacher_params(other)
        ev = runs.read_manifest(runs.stage_dir(other, "evaluate"))
        if theirs is None or not ev or "teacher" not in ev["metrics"].get("average", {}):
            continue
        keys = {k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k)}
        for key, favoured, claim in ABLATIONS:
            if keys != {key}:
                continue
            scores = {
                mine[key]: teacher_avg,
                theirs[key]: float(ev["metrics"]["average"]["teacher"]),
            }
            rest = next(v for v in scores if v != favoured)
            margin = 0.01 if key == "pretrain.vocab" else 0.0
            out[claim] = {
                "holds": bool(scores[favoured] > scores[rest] - margin),
                favoured: scores[favoured], rest: scores[rest],
                "runs": f"{run_id} vs {other}",
            }  # fmt: skip
    return out


def compare_runs(run_ids: list[str] | None = None) -> list[dict]:
    """Headline metrics of several runs side by side, with the parameters in which they differ."""
    root = runs.data_dir() / "runs"
    ids = run_ids or sorted(p.name for p in root.iterdir() if p.is_dir()) if root.exists() else []
    rows, params = [], {}
    for rid in ids:
        row: dict = {"run": rid}
        for stage in ("pretrain", "distill", "longify", "evaluate"):
            m = runs.read_manifest(runs.stage_dir(rid, stage))
            if not m:
                continue
            params[rid] = {
                **params.get(rid, {}),
                **{f"{stage}.{k}": v for k, v in m["params"].items()},
            }
            mm = m["metrics"]
            if stage == "pretrain":
                row["teacher acc"] = mm["masked_token_accuracy"]
                row["teacher ppl"] = mm["perplexity"]
            elif stage == "distill":
                for kind, s in mm["summary"].items():
                    row[f"{kind} acc"] = s["acc_mean"]
            elif stage == "longify":
                row["BPC after"] = mm["bpc"].get("longformer_after")
            elif stage == "evaluate":
                row.update(
                    {f"avg {k}": v for k, v in mm["average"].items() if k in ("teacher", "scratch")}
                )
        if len(row) > 1:
            rows.append(row)
    keys = sorted({k for p in params.values() for k in p})
    differing = [
        k for k in keys if len({json.dumps(p.get(k), sort_keys=True) for p in params.values()}) > 1
    ]
    for row in rows:
        row["differs in"] = ", ".join(f"{k}={params[row['run']].get(k)}" for k in differing[:6])
    return rows


def headline(manifest: dict) -> dict:
    m = manifest["metrics"]
    out = {}
    for name in ("teacher", "scratch", "char n-gram LR"):
        if name in m["average"]:
            out[f"{name} task average"] = f"{m['average'][name]:.3f}"
    rel = {
        k: v["average"]
        for k, v in m["relative_to_teacher"].items()
        if "average" in v and k != "teacher"
    }
    if rel:
        best = max(rel, key=rel.get)
        out["best relative to teacher"] = f"{best} {rel[best]:.0%}"
    held = [f"{k}: {'yes' if v['holds'] else 'no'}" for k, v in m["findings"].items()]
    if held:
        out["findings reproduced"] = "; ".join(held)
    return out


def describe(cfg: EvaluateConfig, context: dict | None = None) -> dict:
    return {
        "models": ", ".join(cfg.models)
        + (" (every seed)" if cfg.all_seeds else " (first seed of each student)"),
        "tasks": f"{', '.join(cfg.tasks)}; {cfg.task_train_examples:,} train / {cfg.task_eval_examples:,} test examples, {cfg.epochs} epochs, {cfg.seeds} seed(s)",
        "baselines": ("scratch + " if cfg.scratch else "") + "char n-gram logistic regression",
    }


STAGE = contract.Contract(
    name="evaluate",
    notebook="06_evaluate.ipynb",
    description="every model of the run on downstream tasks, LM metrics, probes, size and speed",
    upstream=("corpus", "wwm", "pretrain"),
    verify=("wwm", "pretrain", "distill", "longify"),
    optional=("distill", "longify"),
    headline=headline,
    describe=describe,
)


def main(argv: list[str] | None = None) -> int:
    return contract.main(STAGE, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
