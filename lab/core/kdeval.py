"""Distilled models beside their teacher: held-out accuracy and perplexity, agreement with the
teacher's top-1, size and speed (MiniRBT's comparison table), and the mean and spread over seeds."""

from __future__ import annotations

import numpy as np
import torch

from lab.core import models, names
from lab.core.masking import WholeWordMaskCollator
from lab.core.metrics import mlm_metrics, speeds


@torch.no_grad()
def compare(teacher, trained: dict, tokenizer, ids: np.ndarray, wids: np.ndarray, *, sequences: int,
            seed: int, repeats: int = 30) -> dict:  # fmt: skip
    """Per model (the teacher first): held-out accuracy and perplexity on `sequences` held-out
    sequences, agreement with the teacher's top-1 at the same masked positions, size, and speed
    (`metrics.speeds`: batch-1 latency and batch-32 throughput, every model timed in each round)."""
    collator = WholeWordMaskCollator(tokenizer, seed=seed, whole_word=False)
    n = min(len(ids), sequences)
    batches = []
    for start in range(0, n, 64):
        collator.reseed([seed, start])
        rows = range(start, min(start + 64, n))
        batches.append(collator([{"input_ids": ids[i], "word_ids": wids[i]} for i in rows]))

    def top1(model):
        out = []
        for b in batches:
            chosen = b["labels"] != -100
            hidden = model.bert(input_ids=b["input_ids"], attention_mask=b["attention_mask"])[0]
            out.append(model.cls(hidden[chosen]).argmax(-1))
        return torch.cat(out)

    def row(model, agreement: float) -> dict:
        c = models.count(model)
        ev = mlm_metrics(model, ids[:n], wids[:n], tokenizer, seed=seed)
        return {"params": c["total"], "non_embedding": c["non_embedding"], "acc": ev["acc"], "ppl": ev["ppl"],
                "agreement": agreement}  # fmt: skip

    teacher.eval()
    t_top1 = top1(teacher)
    rows = {names.TEACHER: row(teacher, 1.0)}
    for name, model in trained.items():
        model.eval()
        rows[name] = row(model, float((top1(model) == t_top1).float().mean()))
    timed = speeds(
        {names.TEACHER: teacher, **trained}, reference=names.TEACHER, repeats=repeats, seed=seed
    )
    for name, s in timed.items():
        rows[name] |= s
    return rows


def summarize(table: dict) -> dict:
    """Mean and spread over seeds for the one-stage and two-stage students."""
    out = {}
    for kind in names.STUDENT_KINDS:
        rows = [v for k, v in table.items() if names.kind(k) == kind]
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
            "relative_to_teacher": float(accs.mean() / t_acc)
            if (t_acc := table[names.TEACHER]["acc"])
            else None,
            "latency_vs_teacher": float(np.mean([r["latency_vs_teacher"]["ratio"] for r in rows])),
            "throughput_vs_teacher": float(
                np.mean([r["throughput_vs_teacher"]["ratio"] for r in rows])
            ),
            "non_embedding_ratio": rows[0]["non_embedding"] / table[names.TEACHER]["non_embedding"],
        }
    return out
