"""`--dry-run`: every stage's plan without running anything. Per stage, what it will read and make,
and for the training stages tokens (every factor), epochs over the corpus, FLOPs, time, memory and
disk (`lab.core.budget`); a plan that cannot run is refused with its reasons (exit 2).

The notebooks show the same lines for their own stage (`describe(cfg)`).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch

from lab import lineup, runs
from lab.core import budget, documents, hardware, kd, models, modelsource, presets, sources, vocab
from lab.core.errors import LabError
from lab.groups import cache_refusal
from lab.params import STAGES, StageConfig, profile_values

Lines = dict[str, object]  # a stage's plan: label -> text (and "refused" -> reasons)


def context_of(cfgs: dict[str, StageConfig]) -> dict:
    """What the stages' plans share. `cfgs` are the stages planned now; a stage not planned is read
    from the run's finished stage when there is one (a notebook describes its stage after the ones
    before it ran), else from the profile. Also the corpus's training tokens (estimated from its
    sources, or read from the finished corpus stage) and the free disk."""
    first = next(iter(cfgs.values()))
    run_id, profile = first.run_id, first.profile
    values, done = {}, {}
    for s in STAGES:
        done[s] = runs.read_manifest(runs.stage_dir(run_id, s))
        if s in cfgs:
            values[s] = cfgs[s].params()
        else:
            values[s] = done[s]["params"] if done[s] else profile_values(profile)[s]
    chars = None
    if "corpus" not in cfgs and done["corpus"]:
        chars = done["corpus"]["metrics"]["chars"]["train"]
    elif (estimate := estimate_chars(values["corpus"])) is not None:
        chars = round(
            estimate * (1 - values["corpus"]["valid_frac"] - values["corpus"]["test_frac"])
        )
    folder = runs.data_dir()
    while not folder.exists():
        folder = folder.parent
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return {
        "run_id": run_id, "params": values, "planned": set(cfgs),
        "here": (device, hardware.matmul_peak(device, "bfloat16")),
        "corpus_tokens": round(chars * budget.TOKENS_PER_CHAR) if chars else None,
        "compact_vocab": values["corpus"]["compact_vocab_size"],
        "free_disk": shutil.disk_usage(folder).free,
    }  # fmt: skip


def describe(cfg: StageConfig, context: dict | None = None) -> Lines:
    """One stage's plan lines."""
    return DESCRIBE[cfg.stage](cfg, context or context_of({cfg.stage: cfg}))


def input_problems(cfgs: dict[str, StageConfig]) -> list[str]:
    """What is wrong with the inputs the planned stages name, found before any stage runs: every
    model a parameter names (`pretrain.init_from`, `distill.teacher`, `longify.source`: config and
    tokenizer; `evaluate.models`: a name this run makes, or a masked LM that reads Chinese) and
    every text file in `corpus.sources` (an empty one)."""
    out = []
    for stage, name in (("pretrain", "init_from"), ("distill", "teacher"), ("longify", "source")):
        if stage in cfgs and (spec := getattr(cfgs[stage], name)):
            try:
                modelsource.resolve(spec, param=f"{stage}.{name}", weights=False)
            except LabError as err:
                out.append(str(err))
    if "evaluate" in cfgs:
        ev = cfgs["evaluate"]
        makes = {"pretrain", "distill", "longify"} & set(cfgs)
        # before the stages that make the run's models run, any name of theirs passes
        found = None if makes else lineup.models_of_run(ev.run_id, all_seeds=True)
        out += lineup.problems(ev.models, found)
    if "corpus" in cfgs:
        for spec in cfgs["corpus"].sources:
            path = Path(spec).expanduser()
            if spec not in sources.REGISTRY and path.is_file() and path.stat().st_size == 0:
                out.append(
                    f"corpus.sources: {spec} is an empty file; give a file with text, or leave it out"
                )
    return out


def print_plan(
    cfgs: dict[str, StageConfig], notebooks: dict[str, str], problems: list[str] = ()
) -> int:
    """Every planned stage's plan; 2 (and the reasons) if a stage cannot run as planned."""
    context = context_of(cfgs)
    refused = list(problems)
    for stage, cfg in cfgs.items():
        print(f"{notebooks[stage]}  [{stage}]")
        for key, value in describe(cfg, context).items():
            if key == "refused":
                refused += value
            else:
                print(f"    {key}: {value}")
    if refused:
        print("dry run: the plan cannot run as it stands:", file=sys.stderr)
        for reason in refused:
            print(f"  refused: {reason}", file=sys.stderr)
        return 2
    print("dry run: parameters valid; nothing was executed.")
    return 0


# ---------------------------------------------------------------------------------------------
# per stage


def estimate_chars(corpus: dict) -> int | None:
    """The corpus's characters (`corpus`: the corpus stage's parameters), estimated without reading
    it: registry sources by what they add, text files by their size and a decoded sample, saved
    datasets by their text column; None where a source's size cannot be known before it is read (a
    hub dataset)."""
    total, cap = 0, corpus["max_docs_per_source"]
    for name in corpus["sources"]:
        if name in sources.REGISTRY:
            n = sources.REGISTRY[name].corpus_chars
            total += min(n, cap * n // 20_000) if cap else n
            continue
        n = documents.estimate_chars(name, corpus["text_encoding"])
        if n is None:
            return None
        total += min(n, corpus["source_max_chars"]) if corpus["source_max_chars"] else n
    return total


def corpus(cfg, context: dict) -> Lines:
    chars = estimate_chars(cfg.params())
    return {
        "sources": ", ".join(cfg.sources),
        "size": f"about {chars:,} characters" if chars else "unknown before the sources are read",
        "documents per source": cfg.max_docs_per_source or "all",
        "splits valid / test": f"{cfg.valid_frac:.0%} / {cfg.test_frac:.0%} by hash of the text",
        "task examples train / eval": f"{cfg.task_max_train or 'all'} / {cfg.task_max_eval or 'all'}",
        "vocabularies": f"bert-base-chinese {budget.FULL_VOCAB:,} + compact {cfg.compact_vocab_size:,}",
        "expected compute": f"about {12 + (chars or 0) / 3.5e6:,.0f} s with 2 processes (measured on 2 cores: "
        "100 M characters in 40 s, 12 s of it set-up)",
    }


def wwm(cfg, context: dict) -> Lines:
    kept = 1 - cfg.mask_replace_prob - cfg.random_replace_prob
    return {
        "segmenter": f"{cfg.segmenter}{' + user dictionary' if cfg.user_dict else ''}",
        "vocabularies": ", ".join(
            v if v in vocab.BUILTIN else f"{vocab.entry_name(v)} ({v})" for v in cfg.vocabs
        ),
        "packed lengths": ", ".join(map(str, cfg.seq_lengths)),
        "masking": f"{cfg.mlm_probability:.0%} of tokens, {cfg.mask_replace_prob:.0%}/"
        f"{cfg.random_replace_prob:.0%}/{kept:.0%} per word",
        "expected compute": "about 1.6 M characters/s with 2 processes and two vocabularies (measured on 2 "
        f"cores: 100 M characters in 62 s); this plan packs {len(cfg.vocabs)}",
    }


def pretrain(cfg, context: dict) -> Lines:
    """The model, tokens and epochs, compute and time, memory and disk, per stage."""
    vocab_size = budget.vocab_size(cfg.vocab, context["compact_vocab"])
    size = models.size(models.config(cfg.model, vocab_size, max_positions=cfg.max_positions))
    a = presets.arch(cfg.model)
    out: Lines = {
        "model": f"{cfg.model} = {a.layers} layers x {a.hidden} hidden, {a.heads} heads; "
        f"{size.params:,} parameters ({size.non_embedding:,} non-embedding) with the {cfg.vocab} vocab",
    }
    for name, L, steps, batch, _ in cfg.phases():
        name = name.replace("stage", "stage ")
        n = budget.tokens(steps, batch, L, cfg.grad_accum, cfg.processes)
        epochs, too_many = budget.epochs_line(n, context.get("corpus_tokens"))
        flops = budget.train_flops(size, n, L, cfg.mlm_probability)
        need = budget.memory(size, batch, L, cfg.mlm_probability)
        out[name] = (
            f"{steps:,} steps x {batch} sequences x {L} tokens x {cfg.grad_accum} accumulation x "
            f"{cfg.processes} process(es) = {n:,} tokens; {epochs}"
        )
        out[f"{name} compute"] = budget.time_line(flops, cfg.processes, context.get("here"))
        out[f"{name} memory"] = f"{budget.gb(need)} per process (fits {budget.fits(need)})"
        if too_many:
            out[f"{name} WARNING"] = (
                f"it reads its corpus more than {budget.MAX_EPOCHS} times: give a corpus of the size the "
                "profile expects (-p corpus.sources='[...]') or fewer steps"
            )
        if budget.fits(need).startswith("none"):
            _refuse(out, f"pretrain {name}: {budget.gb(need)} per process fits no named accelerator; "
                         "lower the batch")  # fmt: skip
    out["disk"] = f"checkpoints {budget.gb(budget.checkpoint_disk(size))} per stage"
    return out


def model_size(spec: str, param: str, context: dict) -> tuple[budget.Size, int]:
    """The size and positions of the model a stage starts from: the one named by `spec` (a folder
    or hub name; its config is read, its weights are not fetched), else this run's pretrained model:
    as this plan trains it, or as it lies on disk, or as the profile would train it."""
    from transformers import AutoConfig

    own = runs.stage_dir(context["run_id"], "pretrain") / "model"
    if spec or ("pretrain" not in context["planned"] and (own / "config.json").is_file()):
        folder = modelsource.resolve(spec, own, param=param, weights=False).folder
        conf = AutoConfig.from_pretrained(str(folder))
        return models.size(conf), conf.max_position_embeddings
    pre = context["params"]["pretrain"]
    vocab_size = budget.vocab_size(pre["vocab"], context["compact_vocab"])
    conf = models.config(pre["model"], vocab_size, max_positions=pre["max_positions"])
    return models.size(conf), pre["max_positions"]


def distill_(cfg, context: dict) -> Lines:
    """The models, tokens and epochs, compute and time, memory, the teacher cache's disk."""
    weights = [
        f"{k} {getattr(cfg, k + '_weight')}" for k in kd.LOSSES if getattr(cfg, k + "_weight")
    ]
    out: Lines = {"losses": ", ".join(weights), "teacher outputs": f"{cfg.mode}, top-{cfg.topk}",
                  "vocabulary": cfg.vocab}  # fmt: skip
    packs = [vocab.entry_name(e) for e in context["params"]["wwm"]["vocabs"]]
    if cfg.vocab not in packs:
        _refuse(
            out,
            f"distill.vocab = {cfg.vocab!r}, but wwm.vocabs packs {packs}: {vocab.packing_fix(cfg.vocab)}",
        )
    try:
        teacher, positions = model_size(cfg.teacher, "distill.teacher", context)
    except LabError as err:  # no teacher yet, and none in this plan
        out["budget"] = f"not computed: {err}"
        return out
    share = cfg.mlm_probability
    student = models.size(models.config(cfg.student, teacher.vocab, max_positions=positions))
    if student.hidden > teacher.hidden:
        _refuse(out, f"distill.student = {cfg.student} is {student.hidden} wide, wider than the teacher "
                     f"({teacher.hidden}): choose a smaller student")  # fmt: skip
    layers = len(cfg.assistant_layers) or max(1, teacher.layers // 2)
    kept = layers / teacher.layers
    assistant = budget.Size(layers, teacher.hidden, teacher.heads,
                            teacher.params - round((1 - kept) * teacher.non_embedding),
                            round(kept * teacher.non_embedding), teacher.vocab, teacher.ffn)  # fmt: skip
    students = (2 if cfg.assistant_steps else 1) * cfg.seeds
    n = budget.tokens(cfg.steps, cfg.batch_size, cfg.seq_len, cfg.grad_accum, cfg.processes)
    n_assistant = budget.tokens(cfg.assistant_steps, cfg.batch_size, cfg.seq_len, cfg.grad_accum,
                                cfg.processes)  # fmt: skip
    epochs, too_many = budget.epochs_line(n, context.get("corpus_tokens"))
    out["students"] = (f"{students} x {cfg.student} ({student.params:,} parameters), {cfg.steps:,} steps x "
                       f"{cfg.batch_size} x {cfg.seq_len} tokens x {cfg.grad_accum} accumulation x "
                       f"{cfg.processes} process(es) = {n:,} tokens each; {epochs}")  # fmt: skip
    out["teacher assistant"] = (f"{layers} of the teacher's layers, {n_assistant:,} tokens"
                                if cfg.assistant_steps else "none (one-stage only)")  # fmt: skip
    # the models trained, and who teaches how many tokens
    flops = students * budget.train_flops(student, n, cfg.seq_len, share)
    flops += budget.train_flops(assistant, n_assistant, cfg.seq_len, share)
    taught = [(teacher, cfg.seeds * n + n_assistant)]
    taught += [(assistant, cfg.seeds * n)] if cfg.assistant_steps else []
    sequences = cfg.steps * cfg.batch_size * cfg.grad_accum * cfg.processes
    if cfg.mode == "online":  # a teacher forward every step
        flops += sum(budget.forward_flops(t, k, cfg.seq_len) for t, k in taught)
    else:  # each teacher runs once over the cached sequences
        flops += sum(
            budget.forward_flops(t, sequences * cfg.seq_len, cfg.seq_len) for t, _ in taught
        )
        cache = len(taught) * budget.cache_disk(sequences, cfg.seq_len, share, cfg.topk)
        free = context.get("free_disk")
        out["teacher cache"] = (
            f"{budget.gb(cache)} on disk ({budget.gb(free) if free else 'unknown'} free)"
        )
        if free is not None and cache > free:
            _refuse(out, cache_refusal(cache, free))
    need = budget.memory(student, cfg.batch_size, cfg.seq_len, share,
                         extra_params=teacher.params if cfg.mode == "online" else 0)  # fmt: skip
    out["compute"] = budget.time_line(flops, cfg.processes, context.get("here"))
    out["memory"] = f"{budget.gb(need)} per process (fits {budget.fits(need)})"
    if too_many:
        out["WARNING"] = (f"each student reads its corpus more than {budget.MAX_EPOCHS} times: a larger "
                          "corpus, or fewer steps")  # fmt: skip
    if budget.fits(need).startswith("none"):
        _refuse(out, f"distill: {budget.gb(need)} per process fits no named accelerator; lower "
                     "distill.batch_size")  # fmt: skip
    return out


def longify(cfg, context: dict) -> Lines:
    """Conversion, continued pretraining's tokens, compute and memory, the evaluation."""
    out: Lines = {
        "conversion": f"{cfg.source or 'this run pretrained model'} -> Longformer, {cfg.max_positions:,} "
        f"positions, window {cfg.attention_window}, global {', '.join(cfg.global_tokens)}",
        "evaluation": f"{cfg.eval_docs or 'every'} held-out document(s) long enough, probe gap > "
        f"{cfg.probe_gap} tokens",
    }
    n = budget.tokens(cfg.steps, cfg.batch_size, cfg.seq_len, cfg.grad_accum, cfg.processes)
    out["continued pretraining"] = (f"{cfg.steps:,} steps x {cfg.batch_size} x {cfg.seq_len} tokens x "
                                    f"{cfg.processes} process(es) = {n:,} tokens")  # fmt: skip
    try:
        size, _ = model_size(cfg.source, "longify.source", context)
    except LabError as err:
        out["budget"] = f"not computed: {err}"
        return out
    # a sliding window: each token attends to window + 1 keys, not the whole sequence
    flops = budget.train_flops(size, n, cfg.attention_window, cfg.mlm_probability)
    need = budget.memory(
        size, cfg.batch_size, cfg.seq_len, cfg.mlm_probability, window=cfg.attention_window
    )
    out["compute"] = budget.time_line(flops, cfg.processes, context.get("here"))
    out["memory"] = f"{budget.gb(need)} per process (fits {budget.fits(need)})"
    return out


def evaluate(cfg, context: dict) -> Lines:
    rates = ", ".join(f"{x:g}" for x in cfg.lrs)
    curves = ", ".join(map(str, cfg.curve_sizes))
    return {
        "models": ", ".join(cfg.models)
        + (
            " (every distillation run)"
            if cfg.all_seeds
            else " (first distillation run of each student kind)"
        )
        + ("" if "all" in cfg.task_models else f"; on the tasks: {', '.join(cfg.task_models)}"),
        "tasks": f"{', '.join(cfg.tasks)}; {cfg.task_train_examples:,} train / "
        f"{cfg.task_eval_examples:,} valid and test examples",
        "protocol": f"rate from {rates} chosen on valid per model group with a selection seed; then "
        f"{cfg.seeds} fresh seed(s) per model ({cfg.student_seeds} per distilled model) scored on test; "
        f"{cfg.epochs:g} epochs, batch {cfg.batch_size} ({'of similar length' if cfg.length_buckets else 'drawn at random; a BERT gets several short examples to a row'}), "
        f"{cfg.task_seq_len} tokens; {cfg.workers} at a time",
        "baselines": ("scratch + " if cfg.scratch else "")
        + "char n-gram logistic regression (C and n-grams "
        f"chosen on valid, reading {cfg.task_seq_len - 2} characters)",
        "data-efficiency curves": f"{curves} examples of {', '.join(cfg.curve_tasks)}"
        if curves
        else "none",
        "speed": f"{cfg.speed_repeats} rounds, every model timed in each",
        "long-document task": _long_document_task(cfg),
    }


def _long_document_task(cfg) -> str:
    if not cfg.longdoc:
        return "off"
    if cfg.longdoc_method == "probe":
        return f"a linear token probe on the frozen teacher (512 tokens) and Longformer, {cfg.seeds} probe seeds"
    return (f"teacher (512 tokens) and Longformer fine-tuned on whole documents, {cfg.longdoc_epochs:g} epochs, "
            f"batch {cfg.longdoc_batch}")  # fmt: skip


def _refuse(out: Lines, reason: str) -> None:
    out.setdefault("refused", []).append(reason)


DESCRIBE = {"corpus": corpus, "wwm": wwm, "pretrain": pretrain, "distill": distill_,
            "longify": longify, "evaluate": evaluate}  # fmt: skip
