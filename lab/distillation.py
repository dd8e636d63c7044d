"""One distillation stage's work on one teacher: its top-k cache over statically masked data, and
each model trained from it (or from the teacher online) through the common training loop."""

from __future__ import annotations

import json
import shutil
from functools import partial
from pathlib import Path

from lab.core import budget, hardware, kd, mlm, models, train
from lab.core.kd import DistillError
from lab.core.kdcache import CachedBatches, build_cache
from lab.core.metrics import mlm_metrics
from lab.core.progress import echo
from lab.groups import cache_refusal


class Distillation:
    """One distillation stage's data and settings: caches a teacher, trains one model from it."""

    def __init__(self, cfg, tokenizer, packed: Path, work: Path):
        self.cfg, self.tokenizer, self.work = cfg, tokenizer, work
        self.train_ids, self.train_wids = mlm.load_packed(packed, "train")
        valid = mlm.load_packed(packed, "valid")
        self.eval = [a[: cfg.eval_sequences] for a in valid]
        self.collator = cfg.mask_rule().collator(tokenizer, cfg.seed)
        self.cache_root = Path(cfg.cache_dir) if cfg.cache_dir else work / "cache"

    def cache(self, model, digest: str, name: str) -> dict | None:
        """The teacher's top-k over the statically masked data (cached mode), or None (online)."""
        cfg = self.cfg
        if cfg.mode != "cached":
            return None
        acc = train.accelerator()
        n = cfg.steps * cfg.grad_accum * cfg.batch_size * acc.num_processes  # every batch, once
        need = budget.cache_disk(n, cfg.seq_len, cfg.mlm_probability, cfg.topk)
        self.cache_root.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.cache_root).free
        if need > free and not (self.cache_root / name / "meta.json").exists():
            raise DistillError(cache_refusal(need, free))
        meta = None
        if acc.is_main_process:  # one process writes the cache; every process reads it
            echo(
                f"caching {name}'s top-{cfg.topk} over {n:,} statically masked sequences ({budget.gb(need)}) ..."
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
            collator = cfg.mask_rule().collator(self.tokenizer)
            batches = mlm.PackedBatches(
                self.train_ids, self.train_wids, collator, cfg.batch_size, seed
            )
        if warm_up and cfg.locality_bias and cfg.locality_steps:
            batches = mlm.LocalityWarmup(
                batches, heads=student.config.num_attention_heads, slope=cfg.locality_bias,
                steps=int(cfg.locality_steps * steps), grad_accum=cfg.grad_accum,
                hold=train.compiles_on_cpu(cfg.compile),
            )  # fmt: skip
        device = train.accelerator().device
        student.set_attn_implementation(
            "eager" if cfg.attention_weight else hardware.training_attention(device)
        )
        fpt = budget.flops_per_token(models.size(student.config), cfg.seq_len, cfg.mlm_probability)
        if not cache:  # the teacher's forward, every step
            fpt += budget.forward_flops(models.size(teacher.config), 1, cfg.seq_len)
        tc = train.TrainConfig(
            **cfg.loop(
                steps=steps, lr=lr, seed=seed, eval_every=cfg.eval_every, flops_per_token=fpt
            )
        )

        def held_out(m) -> dict:
            return mlm_metrics(m.student, *self.eval, self.tokenizer, seed=cfg.seed)

        fit = partial(
            train.train, module, batches, tc, out, evaluate=held_out, desc=f"distill {out.name}"
        )
        return train.train_once(student, out, fit)
