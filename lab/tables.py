"""HTML tables for the stage notebooks, drawn from artifacts only; every cell is escaped (corpus text
is untrusted and must never run as markup)."""

from __future__ import annotations

import html

from IPython.display import HTML


def table(rows: list[dict], title: str | None = None):
    """An HTML table with every cell escaped (corpus text is untrusted), for a notebook."""
    return HTML(html_table(rows, title))


def html_table(rows: list[dict], title: str | None = None) -> str:
    if not rows:
        return f"<p><em>{html.escape(title) + ': ' if title else ''}(empty)</em></p>"
    cols = list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in cols) + "</tr>"
        for r in rows
    )
    caption = f"<caption>{html.escape(title)}</caption>" if title else ""
    return f'<table class="lab-table">{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def plan(lines: dict, title: str = "Plan (what --dry-run prints for this stage)"):
    """A stage's plan lines (`lab.dryrun.describe`) as a two-column table."""
    rows = [{"": k, "plan": v if isinstance(v, str) else "; ".join(map(str, v)) if isinstance(v, list)
             else _fmt(v)} for k, v in lines.items()]  # fmt: skip
    return table(rows, title)


def note(text: str):
    """A line of prose for the reader (never a quoted Python string)."""
    return HTML(f"<p>{html.escape(text)}</p>")


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return "" if v is None else str(v)


# ---------------------------------------------------------------------------------------------
# 02 whole-word masking


def mask_table(stats: dict):
    rows = [
        {
            "mode": mode,
            "mask rate": s["mask_rate"],
            **s["shares"],
            "multi-token words": s["multi_token_word_share"],
            "masked words": s["masked_words"],
        }
        for mode, s in (("whole word", stats["wwm"]), ("token", stats["token"]))
    ]
    return table(rows, "Masking on the valid split ([MASK] / random / kept shares per chosen word)")


def builtin_table(stats: dict):
    b, o = stats["builtin"], stats["ours_on_sentences"]
    rows = [
        {
            "collator": "transformers whole_word_mask=True",
            "all or nothing": b["all_or_nothing"],
            "fully masked": b["all_masked"],
            "none masked": b["none_masked"],
            "mean rate": b["mean_mask_rate"],
            "[MASK] share": b["mask_token_share"],
        },
        {
            "collator": "lab WholeWordMaskCollator",
            "all or nothing": o["all_or_nothing"],
            "mean rate": o["mean_mask_rate"],
            "[MASK] share": o["shares"]["mask"],
        },
    ]
    return table(rows, f"The same {b['sequences']:,} valid sentences")


# ---------------------------------------------------------------------------------------------
# 03 pretraining


def training_table(train: dict):
    """Each stage's steps, tokens and time, with its MFU over the loop (evaluations and checkpoints
    included) and over the training steps alone where the run recorded them."""
    cols = ("steps", "tokens", "seconds", "tokens_per_s", "mfu", "step_mfu")
    rows = [{"stage": k, **{c: v[c] for c in cols if c in v}} for k, v in train.items()]
    return table(rows, "Training")


def neighbour_table(info: dict):
    """Each head's share of attention on its 4 nearest neighbours."""
    rows = [
        {"layer": r["layer"], "head": r["head"], "share of attention on the 4 nearest neighbours": r["neighbour_share"]}
        for r in info["rows"]
    ]  # fmt: skip
    return table(rows, f"Uniform attention would give {4 * info['uniform']:.3f}")


def locality_bench(result: dict | None):
    """The saved result of `python -m lab bench locality`, or how to make one."""
    if not result:
        return table([], "no saved result yet (python -m lab bench locality)")
    rows = [
        {
            "arm": arm,
            "held-out accuracy": result[key],
            "curve (every 1/8 of the run)": " ".join(f"{v:.3f}" for v in result[f"curve_{key}"]),
            "中国的首都是[MASK]京。": result[f"probe_{key}"],
        }
        for arm, key in (("locality warm-up", "ours"), ("plain", "baseline"))
    ]
    return table(
        rows,
        f"bench locality, {result['tokens']:,} tokens per arm, measured {result.get('measured', '?')}",
    )


def probe_table(probes: dict, title: str = "Fill-mask probes: top 5 per [MASK]"):
    rows = []
    for sentence, slots in probes.items():
        for i, slot in enumerate(slots):
            rows.append(
                {
                    "sentence": sentence,
                    "mask": i + 1,
                    **{f"#{k + 1}": f"{t} {p:.3f}" for k, (t, p) in enumerate(slot)},
                }
            )
    return table(rows, title)


# ---------------------------------------------------------------------------------------------
# 04 distillation


def distill_table(models: dict):
    def shown(v):  # a ratio with its interval; a quartile pair
        if isinstance(v, dict):
            return "{:.2f}x [{:.2f}, {:.2f}]".format(v["ratio"], *v["ci95"])
        return "{:.2f}–{:.2f}".format(*v) if isinstance(v, list) else v

    rows = [{"model": name, **{k: shown(v) for k, v in r.items()}} for name, r in models.items()]
    return table(rows, "Teacher, assistant and students on the held-out split (speed ratios against the "
                       "teacher with 95% intervals over the rounds; latency IQR in ms)")  # fmt: skip


def seeds_table(summary: dict):
    rows = [{"setting": k, **v} for k, v in summary.items()]
    return table(rows, "One-stage vs two-stage students (mean and spread over seeds)")


# ---------------------------------------------------------------------------------------------
# 05 longify


def longify_bench(result: dict | None):
    """The saved result of `python -m lab bench longify`: seconds, memory growth and GFLOP per arm
    and length, or how to make one."""
    if not result:
        return table([], "no saved result yet (python -m lab bench longify)")
    arms = {
        "longformer": "Longformer (lab block attention)",
        "longformer-hf": "Longformer (transformers)",
        "bert": "BERT, full attention (SDPA)",
        "bert-eager": "BERT, full attention (eager)",
    }

    def cell(key: str) -> str:
        if key not in result["seconds"]:
            return ""
        gflop = result.get("gflop", {}).get(key)
        return f"{result['seconds'][key]:.2f} s · {result['memory_mb'][key]:,.0f} MB" + (
            f" · {gflop:,.0f} GFLOP" if gflop else ""
        )

    rows = [
        {"model": label, **{f"{n:,} tokens": cell(f"{k}@{n}") for n in result["lengths"]}}
        for k, label in arms.items()
        if f"{k}@{result['lengths'][0]}" in result["seconds"]
    ]
    return table(
        rows,
        f"bench longify, measured {result.get('measured', '?')}: {result['ratio']}x faster than full SDPA "
        f"attention at {result['lengths'][-1]:,} tokens, arithmetic ratio {result.get('arithmetic_ratio', '?')}",
    )


# ---------------------------------------------------------------------------------------------
# 06 evaluate


def models_table(rows: dict):
    cols = ("role", "vocab", "layers", "hidden", "params", "non_embedding", "acc", "ppl", "bpc",
            "bpc_same_chars", "unknown_share", "latency_ms_b1", "throughput_seq_s_b32")  # fmt: skip
    out = []
    for n, r in rows.items():
        if "acc" not in r:
            continue
        row = {"model": n, **{c: r.get(c) for c in cols}}
        for key, label in (("latency_vs_teacher", "batch-1 latency vs teacher"),
                           ("throughput_vs_teacher", "batch-32 throughput vs teacher")):  # fmt: skip
            if key in r:
                row[label] = "{:.2f}x [{:.2f}, {:.2f}]".format(r[key]["ratio"], *r[key]["ci95"])
        out.append(row)
    repeats = next((r.get("repeats") for r in rows.values() if r.get("repeats")), "?")
    return table(out, "Models: size; held-out LM metrics: acc / ppl / bpc on the run's token masking (only for "
                      "models with one of the run's vocabularies), bpc_same_chars on the same hidden jieba words "
                      "for every model, whatever its tokenizer (unknown_share: hidden tokens read as [UNK], which are "
                      "cheap to predict: a bpc with a large share is not comparable); speed on this machine: batch-1 latency and batch-32 "
                      f"throughput at 128 tokens, every model timed in each of {repeats} rounds in random order; "
                      "ratios against the teacher with 95% intervals over the rounds")  # fmt: skip


def task_table(scores: dict):
    tasks = sorted({t for v in scores.values() for t in v})
    rows = []
    for name, t in scores.items():
        row = {"model": name}
        for task in tasks:
            if task in t:
                v = t[task]
                row[f"{task} ({v['metric']})"] = f"{v['mean']:.4f}" + (
                    f" ± {v['std']:.4f}" if v.get("std") else ""
                )
        rows.append(row)
    return table(rows, "Downstream tasks (test split; mean ± std over seeds)")


def relative_table(relative: dict, chance: dict):
    levels = ", ".join(f"{t} {c:.3f}" for t, c in chance.items())
    return table(
        [{"model": n, **v} for n, v in relative.items()],
        "Task scores relative to the teacher above chance, (model − chance) / (teacher − chance): MiniRBT's "
        f"relative table with what guessing earns taken out (chance: {levels})",
    )


def tuning_table(selection: dict, ngram: dict, lrs: list[float]):
    """What each side's tuning saw: the rates tried on valid per group and task, the n-gram's grid."""
    rows = []
    for group, by_task in selection.items():
        for task, s in by_task.items():
            tried = ", ".join(
                f"{lr}: {v:.3f}" if v is not None else lr for lr, v in s["on_valid"].items()
            )
            rows.append({"model group": group, "task": task, "tuned on valid": f"rate from {tried}",
                         "chosen": f"{s['chosen']:g}", "selection run": f"{s['model']}, seed {s['seed']}",
                         "reads": "the first task_seq_len tokens"})  # fmt: skip
    for task, r in ngram.items():
        t = r.get("tuned", {})
        rows.append({"model group": "char n-gram LR", "task": task,
                     "tuned on valid": f"C and n-gram range, {t.get('grid', '?')} settings",
                     "chosen": f"C {t.get('C')}, n-grams {t.get('ngram_range')}",
                     "selection run": f"valid accuracy {t.get('valid_accuracy', 0):.3f}",
                     "reads": f"the first {t.get('reads_chars')} characters"})  # fmt: skip
    return table(rows, f"Each side's tuning budget: {len(lrs)} rate(s) per model group and task on valid; "
                       "test is scored only with fresh seeds")  # fmt: skip


FINDINGS_TITLE = ("Findings: A − B (or, for retention, A − ratio × B above each task's chance level) minus the margin, "
                  "averaged over the tasks, with a 95% interval over the sources the scope names; a claim holds only "
                  "when its interval lies above 0. Task rows (·) show their difference and interval, and no verdict: "
                  "the claim's verdict is its task mean")  # fmt: skip


def findings_table(findings: dict):
    """Claim, sides, difference, 95% interval, verdict and scope of each finding, and per task."""
    return table(findings_rows(findings), FINDINGS_TITLE)


def findings_rows(findings: dict) -> list[dict]:
    rows = []
    for f in findings.values():
        if f.get("difference") is None or f.get("ci95") is None:
            rows.append(
                {"claim": f["claim"], "verdict": f["verdict"], "difference": f.get("reason")}
            )
            continue
        scope = f.get("scope", {})
        speed = f.get("speedup")
        digits = 4 if max(map(abs, f["ci95"])) < 0.01 else 3
        note = f.get("reason", "")
        if speed:
            lat = speed["latency"]
            note += "; " * bool(note) + "batch-1 latency {:.1f}x the teacher's speed [{:.1f}, {:.1f}]".format(
                lat["ratio"], *lat["ci95"])  # fmt: skip
        if "mde80" in f:
            note += "; " * bool(note) + f"smallest gain found 4 times in 5: {f['mde80']:.{digits}f}"
        rows.append({
            "claim": f["claim"], "A": f["a"], "B": f["b"],
            "difference": f"{f['difference']:+.{digits}f}",
            "95% interval": "[{:+.{d}f}, {:+.{d}f}]".format(*f["ci95"], d=digits),
            "verdict": f["verdict"],
            "runs A / B": f"{scope['a']} / {scope['b']}" if scope else "",
            "interval covers": ", ".join(scope.get("covers", [])) if scope else
            (f"{f['units']} documents" if "units" in f else ""),
            "fixed": ", ".join(scope.get("fixed", [])),
            "examples": ", ".join(f"{t} {n:,}" for t, n in f.get("examples", {}).items()),
            "note": note,
        })  # fmt: skip
        for task, p in f.get("per_task", {}).items():
            rows.append({"claim": f"  · {task}", "difference": f"{p['difference']:+.{digits}f}",
                         "95% interval": "[{:+.{d}f}, {:+.{d}f}]".format(*p["ci95"], d=digits), "verdict": ""})  # fmt: skip
    return rows
