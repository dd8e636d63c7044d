"""Stage 04, knowledge distillation: MiniRBT's two-stage recipe with TextBrewer-style losses and
the roberta-wwm-ext-distill recipe's cached top-k teacher logits, on the common training loop.

  teacher ──(teacher layers copied, then distilled)──> teacher assistant ──> student   (two-stage)
  teacher ─────────────────────────────────────────────────────────────────> student   (one-stage)

Both students have the same size and the same token budget; each is trained with several seeds.
In `cached` mode the teacher's top-k log-probabilities are computed once (`lab.core.kdcache`); in
`online` mode the teacher runs every step, which also allows hidden-state and attention losses.

    python -m lab.distill --run-id X [--profile P] [-p key=value ...]
"""

from __future__ import annotations

import json
import shutil
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig

from lab import cards, contract
from lab.config import DistillConfig
from lab.core import kd, mlm, models, plan, shapes, train, vocab
from lab.core.errors import LabError
from lab.core.files import hash_tree, sha256_json
from lab.core.kd import DistillError
from lab.core.kdcache import CachedBatches, build_cache
from lab.core.masking import WholeWordMaskCollator
from lab.core.metrics import mlm_metrics, speed
from lab.core.progress import echo

MASK_SHARE = 0.15  # distillation masks 15% of the tokens (the collator's default)


def load_teacher(cfg: DistillConfig):
    """The teacher: this run's pretrained model, or a model folder given as `distill.teacher`."""
    folder = teacher_dir(cfg)
    teacher = mlm.load(folder, attn="eager" if cfg.attention_weight else None)
    if teacher.config.model_type != "bert":
        raise DistillError(
            f"the teacher in {folder} is a {teacher.config.model_type} model; distillation here takes BERT teachers"
        )
    return teacher, folder


def teacher_dir(cfg: DistillConfig) -> Path:
    folder = (
        Path(cfg.teacher)
        if cfg.teacher
        else STAGE.upstream_manifest(cfg, "pretrain")["dir"] / "model"
    )
    if not (folder / "config.json").exists():
        raise DistillError(
            f"distill.teacher = {str(folder)!r} is not a model folder (no config.json)"
        )
    return folder


def check_setup(cfg: DistillConfig, teacher, tokenizer) -> dict:
    """Everything that can be wrong with the plan, raised before any training; returns the plan."""
    if teacher.config.vocab_size != len(tokenizer):
        raise DistillError(
            f"the teacher's vocabulary has {teacher.config.vocab_size:,} tokens but the {cfg.vocab} vocab of "
            f"this run has {len(tokenizer):,}: distill with the vocab the teacher was trained on (distill.vocab)"
        )
    t_layers, t_hidden = teacher.config.num_hidden_layers, teacher.config.hidden_size
    s = shapes.arch(cfg.student)
    if s.hidden > t_hidden:
        raise DistillError(
            f"distill.student = {cfg.student} is {s.hidden} wide, wider than the teacher ({t_hidden}); the "
            "hidden-state projection maps a narrower student onto the teacher. Choose a smaller student."
        )
    t_head = t_hidden // teacher.config.num_attention_heads
    if cfg.student_init == "select" and s.hidden // s.heads != t_head:
        raise DistillError(
            f"distill.student_init = select keeps whole heads, but {cfg.student}'s heads are "
            f"{s.hidden // s.heads} wide and the teacher's {t_head}: choose a student with {t_head}-wide "
            "heads or distill.student_init = random"
        )
    plan = {
        "teacher_layers": t_layers,
        "student_map": kd.check_layer_map(cfg.layer_map, s.layers, t_layers, "distill.layer_map"),
        "student_init": cfg.student_init,
    }
    if cfg.assistant_layers or cfg.assistant_steps:
        n = len(cfg.assistant_layers) or max(1, t_layers // 2)
        plan["assistant_init"] = kd.check_layer_map(
            cfg.assistant_layers, n, t_layers, "distill.assistant_layers"
        )
        plan["student_map_from_assistant"] = kd.uniform_map(s.layers, n)
    return plan


class Distillation:
    """One distillation stage's data and settings: caches a teacher, trains one model from it."""

    def __init__(self, cfg: DistillConfig, tokenizer, packed: Path, work: Path):
        self.cfg, self.tokenizer, self.work = cfg, tokenizer, work
        self.train_ids, self.train_wids = mlm.load_packed(packed, "train")
        valid = mlm.load_packed(packed, "valid")
        self.eval = [a[: cfg.eval_sequences] for a in valid]
        self.collator = WholeWordMaskCollator(
            tokenizer, seed=cfg.seed, whole_word=cfg.masking == "wwm"
        )
        self.cache_root = Path(cfg.cache_dir) if cfg.cache_dir else work / "cache"

    def cache(self, model, digest: str, name: str) -> dict | None:
        """The teacher's top-k over the statically masked data (cached mode), or None (online)."""
        cfg = self.cfg
        if cfg.mode != "cached":
            return None
        acc = train.accelerator()
        n = cfg.steps * cfg.batch_size * acc.num_processes  # every process's batches, once
        need = plan.cache_disk(n, cfg.seq_len, MASK_SHARE, cfg.topk)
        self.cache_root.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.cache_root).free
        if need > free and not (self.cache_root / name / "meta.json").exists():
            raise DistillError(cache_refusal(need, free))
        meta = None
        if acc.is_main_process:  # one process writes the cache; every process reads it
            echo(
                f"caching {name}'s top-{cfg.topk} over {n:,} statically masked sequences ({plan.gb(need)}) ..."
            )
            meta = build_cache(
                model, self.train_ids, self.train_wids, self.collator, self.cache_root / name,
                dupe_factor=cfg.dupe_factor, n_sequences=n, topk=cfg.topk, seed=cfg.seed,
                teacher_digest=digest, bf16=cfg.bf16,
            )  # fmt: skip
        acc.wait_for_everyone()
        return meta or json.loads(
            (self.cache_root / name / "meta.json").read_text(encoding="utf-8")
        )

    def train(self, student, teacher, layer_map: list[int], cache: str | None, out: Path, *,
              steps: int, lr: float, seed: int, warm_up: bool) -> dict:  # fmt: skip
        """One model through the common loop from a teacher (or its cache `cache`); `warm_up`: start
        with the locality warm-up, for students from random init (one built from a larger model's
        weights already attends locally)."""
        cfg = self.cfg
        module = kd.Distiller(
            student, None if cache else teacher,
            weights={k: getattr(cfg, f"{k}_weight") for k in kd.LOSSES}, temperature=cfg.temperature,
            t2=cfg.kd_t2, layer_map=layer_map, topk=cfg.topk,
        )  # fmt: skip
        if cache:
            batches = CachedBatches(self.cache_root / cache, cfg.batch_size, seed)
        else:
            collator = WholeWordMaskCollator(self.tokenizer, whole_word=cfg.masking == "wwm")
            batches = mlm.PackedBatches(
                self.train_ids, self.train_wids, collator, cfg.batch_size, seed
            )
        if warm_up and cfg.locality_bias and cfg.locality_steps:
            batches = mlm.LocalityWarmup(
                batches, heads=student.config.num_attention_heads, slope=cfg.locality_bias,
                steps=int(cfg.locality_steps * steps),
            )  # fmt: skip
        tc = train.TrainConfig(
            steps=steps, lr=lr, warmup_steps=max(1, int(cfg.warmup * steps)), bf16=cfg.bf16,
            eval_every=cfg.eval_every, ckpt_every=cfg.ckpt_every, seed=seed, weight_decay=0.01,
        )  # fmt: skip

        def held_out(m) -> dict:
            return mlm_metrics(m.student, *self.eval, self.tokenizer, seed=cfg.seed)

        fit = partial(
            train.train, module, batches, tc, out, evaluate=held_out, desc=f"distill {out.name}"
        )
        return train.train_once(student, out, fit)


@contract.locked
def run(cfg: DistillConfig) -> dict:
    """Teacher assistant, one-stage and two-stage students over seeds; returns the manifest."""
    stage = STAGE.stage(cfg)
    if stage.cached:
        echo(f"distill: cached ({stage.dir})")
        return stage.manifest
    corpus_m = STAGE.upstream_manifest(cfg, "corpus")
    wwm_m = STAGE.upstream_manifest(cfg, "wwm")
    tokenizer = vocab.load(corpus_m["dir"] / "vocab" / cfg.vocab)
    teacher, folder = load_teacher(cfg)
    plan = check_setup(cfg, teacher, tokenizer)
    packed = wwm_m["dir"] / "packed" / cfg.vocab / str(cfg.seq_len)
    if not packed.exists():
        raise DistillError(
            f"the wwm stage packed no {cfg.vocab} sequences of length {cfg.seq_len} ({packed})"
        )
    teacher_digest = sha256_json(hash_tree(folder))

    work = stage.begin()
    job = Distillation(cfg, tokenizer, packed, work)
    t0 = time.time()
    caches = {"teacher": job.cache(teacher, teacher_digest, "teacher")}
    summaries: dict[str, dict] = {}
    trained: dict[str, object] = {}

    assistant = None
    if "assistant_init" in plan:  # its layers come from the teacher: no warm-up
        assistant = kd.student_from_teacher(teacher, plan["assistant_init"], seed=cfg.seed)
        summaries["assistant"] = job.train(
            assistant, teacher, plan["assistant_init"], "teacher" if caches["teacher"] else None,
            work / "assistant", steps=cfg.assistant_steps, lr=cfg.assistant_lr, seed=cfg.seed,
            warm_up=False,
        )  # fmt: skip
        trained["assistant"] = assistant
        a_digest = sha256_json({"assistant": summaries["assistant"], "teacher": teacher_digest})
        caches["assistant"] = job.cache(assistant, a_digest, "assistant")

    kinds = [("one-stage", teacher, "student_map", "teacher")]
    if assistant is not None:
        kinds.append(("two-stage", assistant, "student_map_from_assistant", "assistant"))
    for k in range(cfg.seeds):
        seed = cfg.seed + k
        for kind, source, map_key, cache in kinds:
            name = f"{kind}-s{seed}"
            student = kd.new_student(cfg.student, teacher, seed=seed, dropout=cfg.dropout)
            if cfg.student_init == "select":
                plan["heads_kept"] = kd.select_weights(student, source, plan[map_key])
            summaries[name] = job.train(
                student, source, plan[map_key], cache if caches.get(cache) else None,
                work / "students" / name, steps=cfg.steps, lr=cfg.lr, seed=seed,
                warm_up=cfg.student_init == "random",
            )  # fmt: skip
            trained[name] = student

    echo(
        f"distillation trained {len(trained)} models in {(time.time() - t0) / 60:.1f} min; evaluating ..."
    )
    valid_ids, valid_wids = mlm.load_packed(packed, "valid")
    table = compare(cfg, teacher, trained, tokenizer, valid_ids, valid_wids)
    for name, model in trained.items():
        card = cards.student(
            cfg, name, model, table[name], summaries[name], init_text(cfg, plan, name)
        )
        cards.save(model, tokenizer, work / "models" / name, card)
    metrics = {
        "plan": plan,
        "models": table,
        "summary": summarize(table),
        "caches": {k: v for k, v in caches.items() if v},
        "kd_sanity": {
            name: kd.kd_sanity(train.read_log(log_dir(work, name) / "metrics.jsonl"))
            for name in trained
        },
        "train": summaries,
    }
    if not cfg.keep_cache and not cfg.cache_dir:
        shutil.rmtree(work / "cache", ignore_errors=True)
    return stage.finish({"models": "models"}, metrics)


def init_text(cfg: DistillConfig, plan: dict, name: str) -> str:
    """How a model's weights started, for its model card."""
    if name == "assistant":
        return f"initialised from teacher layers {plan.get('assistant_init')}"
    if cfg.student_init == "select":
        two = name.startswith("two-stage")
        layers = plan["student_map_from_assistant" if two else "student_map"]
        source = "assistant" if two else "teacher"
        return f"initialised by weight selection from the {source}'s layers {layers} (heads {plan.get('heads_kept')})"
    warm = cfg.locality_bias and cfg.locality_steps
    return "initialised randomly" + (
        f", locality warm-up over {cfg.locality_steps:.0%} of the steps" if warm else ""
    )


def log_dir(stage_dir: Path, name: str) -> Path:
    """Where the training log of model `name` of a distill stage folder is."""
    return stage_dir / "assistant" if name == "assistant" else stage_dir / "students" / name


def training_logs(manifest: dict) -> dict[str, list[dict]]:
    """Every distilled model's training log (for the KD-sanity panel)."""
    return {
        name: train.read_log(log_dir(manifest["dir"], name) / "metrics.jsonl")
        for name in manifest["metrics"]["train"]
    }


@torch.no_grad()
def compare(cfg, teacher, trained: dict, tokenizer, ids: np.ndarray, wids: np.ndarray) -> dict:
    """Held-out accuracy, perplexity, agreement with the teacher's top-1, size and speed, per model."""
    collator = WholeWordMaskCollator(tokenizer, seed=cfg.seed, whole_word=False)
    n = min(len(ids), cfg.eval_sequences * 4)
    batches = []
    for start in range(0, n, 64):
        collator.reseed([cfg.seed, start])
        rows = range(start, min(start + 64, n))
        batches.append(collator([{"input_ids": ids[i], "word_ids": wids[i]} for i in rows]))

    def top1(model):
        out = []
        for b in batches:
            chosen = b["labels"] != -100
            hidden = model.bert(input_ids=b["input_ids"], attention_mask=b["attention_mask"])[0]
            out.append(model.cls(hidden[chosen]).argmax(-1))
        return torch.cat(out)

    def row(model, agreement: float, teacher_ms: float | None = None) -> dict:
        c, ev, s = (
            models.count(model),
            mlm_metrics(model, ids[:n], wids[:n], tokenizer, seed=cfg.seed),
            speed(model),
        )
        return {
            "params": c["total"], "non_embedding": c["non_embedding"], "acc": ev["acc"], "ppl": ev["ppl"],
            "agreement": agreement, "ms_per_batch": s["ms_per_batch"],
            "speedup": (teacher_ms or s["ms_per_batch"]) / s["ms_per_batch"],
        }  # fmt: skip

    teacher.eval()
    t_top1 = top1(teacher)
    rows = {"teacher": row(teacher, 1.0)}
    for name, model in trained.items():
        model.eval()
        agree = float((top1(model) == t_top1).float().mean())
        rows[name] = row(model, agree, rows["teacher"]["ms_per_batch"])
    return rows


def summarize(table: dict) -> dict:
    """Mean and spread over seeds for the one-stage and two-stage students."""
    out = {}
    for kind in ("one-stage", "two-stage"):
        rows = [v for k, v in table.items() if k.startswith(kind)]
        if not rows:
            continue
        accs = np.array([r["acc"] for r in rows])
        out[kind] = {
            "seeds": len(rows),
            "acc_mean": float(accs.mean()),
            "acc_spread": float(accs.max() - accs.min()) if len(rows) > 1 else 0.0,
            "acc_std": float(accs.std(ddof=1)) if len(rows) > 1 else 0.0,
            "ppl_mean": float(np.mean([r["ppl"] for r in rows])),
            "agreement_mean": float(np.mean([r["agreement"] for r in rows])),
            "relative_to_teacher": float(accs.mean() / table["teacher"]["acc"]),
            "speedup": float(np.mean([r["speedup"] for r in rows])),
            "non_embedding_ratio": rows[0]["non_embedding"] / table["teacher"]["non_embedding"],
        }
    return out


def teacher_source(cfg: DistillConfig) -> dict[str, str]:
    return {"teacher": sha256_json(hash_tree(Path(cfg.teacher)))} if cfg.teacher else {}


def headline(manifest: dict) -> dict:
    m = manifest["metrics"]
    out = {}
    for kind, s in m["summary"].items():
        spread = f" ± {s['acc_std']:.1%}" if s["seeds"] > 1 else ""
        out[f"{kind} student accuracy"] = (
            f"{s['acc_mean']:.1%}{spread} ({s['relative_to_teacher']:.0%} of teacher; batch-32 speed-up {s['speedup']:.1f}x)"
        )
    out["teacher accuracy"] = f"{m['models']['teacher']['acc']:.1%}"
    if "teacher" in m["caches"]:
        k = manifest["params"]["topk"]
        out[f"top-{k} truncation mass"] = f"{m['caches']['teacher']['truncation_mass'][str(k)]:.3f}"
    return out


def teacher_shape(cfg: DistillConfig, context: dict) -> tuple[plan.Shape, int]:
    """The teacher's shape and vocabulary size: this plan's pretraining, the run's teacher on disk,
    or the folder given as `distill.teacher`."""
    vocab_size = 21128 if cfg.vocab == "full" else context.get("compact_vocab", 8000)
    pre = context.get("configs", {}).get("pretrain")
    if pre is not None and not cfg.teacher:
        conf = models.config(pre.model, vocab_size, max_positions=pre.max_positions)
        return models.shape(conf), pre.max_positions
    folder = teacher_dir(cfg)
    conf = AutoConfig.from_pretrained(str(folder))
    return models.shape(conf), conf.max_position_embeddings


def describe(cfg: DistillConfig, context: dict | None = None) -> dict:
    """The plan: the models, tokens and epochs, compute and time, memory, the teacher cache's disk."""
    context = context or {}
    weights = [
        f"{k} {getattr(cfg, k + '_weight')}" for k in kd.LOSSES if getattr(cfg, k + "_weight")
    ]
    out = {"losses": ", ".join(weights), "teacher outputs": f"{cfg.mode}, top-{cfg.topk}"}
    try:
        teacher, positions = teacher_shape(cfg, context)
    except LabError as err:  # no teacher yet, and none in this plan
        out["plan"] = f"not computed: {err}"
        return out
    student = models.shape(models.config(cfg.student, teacher.vocab, max_positions=positions))
    layers = len(cfg.assistant_layers) or max(1, teacher.layers // 2)
    share = layers / teacher.layers
    assistant = plan.Shape(layers, teacher.hidden, teacher.heads,
                           teacher.params - round((1 - share) * teacher.non_embedding),
                           round(share * teacher.non_embedding), teacher.vocab)  # fmt: skip
    students = (2 if cfg.assistant_steps else 1) * cfg.seeds
    n = plan.tokens(cfg.steps, cfg.batch_size, cfg.seq_len, 1, cfg.processes)
    n_assistant = plan.tokens(cfg.assistant_steps, cfg.batch_size, cfg.seq_len, 1, cfg.processes)
    epochs, too_many = plan.epochs_line(n, context.get("corpus_tokens"))
    out["students"] = (f"{students} x {cfg.student} ({student.params:,} parameters), {cfg.steps:,} steps x "
                       f"{cfg.batch_size} x {cfg.seq_len} tokens x {cfg.processes} process(es) = {n:,} tokens each; {epochs}")  # fmt: skip
    out["teacher assistant"] = (f"{layers} of the teacher's layers, {n_assistant:,} tokens" if cfg.assistant_steps
                                else "none (one-stage only)")  # fmt: skip
    # the models trained, and who teaches how many tokens
    flops = students * plan.train_flops(student, n, cfg.seq_len, MASK_SHARE)
    flops += plan.train_flops(assistant, n_assistant, cfg.seq_len, MASK_SHARE)
    taught = [(teacher, cfg.seeds * n + n_assistant)] + (
        [(assistant, cfg.seeds * n)] if cfg.assistant_steps else []
    )
    sequences = cfg.steps * cfg.batch_size * cfg.processes
    if cfg.mode == "online":  # a teacher forward every step
        flops += sum(plan.forward_flops(t, k, cfg.seq_len) for t, k in taught)
    else:  # each teacher runs once over the cached sequences
        flops += sum(plan.forward_flops(t, sequences * cfg.seq_len, cfg.seq_len) for t, _ in taught)
        cache = len(taught) * plan.cache_disk(sequences, cfg.seq_len, MASK_SHARE, cfg.topk)
        free = context.get("free_disk")
        out["teacher cache"] = (
            f"{plan.gb(cache)} on disk ({plan.gb(free) if free else 'unknown'} free)"
        )
        if free is not None and cache > free:
            out.setdefault("refused", []).append(cache_refusal(cache, free))
    need = plan.memory(student, cfg.batch_size, cfg.seq_len, MASK_SHARE,
                       extra_params=teacher.params if cfg.mode == "online" else 0)  # fmt: skip
    out["compute"] = plan.time_line(flops, cfg.processes)
    out["memory"] = f"{plan.gb(need)} per process (fits {plan.fits(need)})"
    if too_many:
        out["WARNING"] = (
            f"each student reads its corpus more than {plan.MAX_EPOCHS} times: a larger corpus, or fewer steps"
        )
    if plan.fits(need).startswith("none"):
        out.setdefault("refused", []).append(
            f"distill: {plan.gb(need)} per process fits no named accelerator; lower distill.batch_size"
        )
    return out


def cache_refusal(need: float, free: float) -> str:
    return (
        f"distill: the teacher cache needs {plan.gb(need)} but the disk has {plan.gb(free)} free; run the "
        "teacher online (-p distill.mode=online), keep fewer entries (-p distill.topk=...) or take fewer steps"
    )


STAGE = contract.Contract(
    name="distill",
    notebook="04_distill.ipynb",
    description="a teacher assistant and one-stage and two-stage students distilled from the teacher",
    upstream=("corpus", "wwm", "pretrain"),
    verify=("wwm", "pretrain"),
    headline=headline,
    describe=describe,
    sources=teacher_source,
)


def main(argv: list[str] | None = None) -> int:
    return contract.main(STAGE, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
