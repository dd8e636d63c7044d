"""`python -m lab bench ...`: ours and the named baseline, side by side on the same input, one run.

Each benchmark prints what it measures and ends with one JSON line: bench, ours, baseline, unit,
ratio (ours over baseline, higher is better), target, and details.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np

from lab import sources
from lab.text import is_cjk, normalize


def main(name: str, *, quick: bool = False) -> int:
    names = ["wwm", "pretrain", "locality", "distill", "longify"] if name == "all" else [name]
    for n in names:
        if n not in BENCHES:
            raise SystemExit(f"unknown benchmark {n!r}: choose from {', '.join(BENCHES)} or all")
        result = BENCHES[n](quick=quick)
        result["measured"] = time.strftime("%Y-%m-%d %H:%M")
        save(result)
        print(json.dumps(result, ensure_ascii=False), flush=True)
    return 0


def save(result: dict) -> None:
    """Keep the latest result of each benchmark in reports/bench/NAME[-quick].json, where the
    notebooks show it; a folder that cannot be written only costs the copy."""
    from lab import runs

    name = result["bench"] + ("-quick" if result.get("quick") else "")
    folder = runs.reports_dir() / "bench"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        runs.write_json(folder / f"{name}.json", result)
    except OSError as err:
        print(f"(bench result not saved: {err})", flush=True)


def latest(name: str) -> dict | None:
    """The last saved full (not --quick) result of benchmark `name`, or None."""
    from lab import runs

    path = runs.reports_dir() / "bench" / f"{name}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def _bench_texts(n_paragraphs: int) -> list[str]:
    """People's Daily paragraphs, cleaned as the corpus stage cleans them."""
    paragraphs = sources.load("peoples_daily")[:n_paragraphs]
    texts = [normalize("".join(w for w, _ in p)) for p in paragraphs]
    return [t for t in texts if t]


def _full_tokenizer():
    from lab import vocab

    return vocab.make_tokenizer(sources.load("bert_vocab"))


# ---------------------------------------------------------------------------------------------
# wwm: end-to-end stage throughput against a run_chinese_ref.py-style baseline


def chinese_ref_baseline(
    texts: list[str], tokenizer, seq_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """The old transformers recipe (examples/research_projects/mlm_wwm/run_chinese_ref.py with
    jieba in place of LTP): one process, one sentence at a time through segmenter and tokenizer,
    Chinese words marked with `##` by longest match, word ids from those marks, packed in Python."""
    import jieba

    jieba.setLogLevel(60)
    jieba.initialize()
    ids_stream: list[int] = []
    wid_stream: list[int] = []
    next_word = 0
    for line in texts:
        words = jieba.lcut(line)
        chinese_words = {w for w in words if len(w) > 1 and all(map(is_cjk, w))}
        ids = tokenizer(line, add_special_tokens=False)["input_ids"]
        tokens = tokenizer.convert_ids_to_tokens(ids)
        marked = _mark_subwords(list(tokens), chinese_words)
        for i, tok in enumerate(marked):
            if i == 0 or not tok.startswith("##"):  # marked Chinese subword or WordPiece piece
                next_word += 1
            ids_stream.append(ids[i])
            wid_stream.append(next_word)
        ids_stream.append(tokenizer.sep_token_id)
        wid_stream.append(-1)
        next_word += 1
    ids_stream, wid_stream = ids_stream[:-1], wid_stream[:-1]  # no separator after the last line
    room = seq_len - 2
    rows_ids, rows_wids = [], []
    for start in range(0, len(ids_stream), room):
        chunk, wchunk = ids_stream[start : start + room], wid_stream[start : start + room]
        pad = room - len(chunk)
        rows_ids.append([tokenizer.cls_token_id, *chunk, tokenizer.sep_token_id] + [0] * pad)
        rows_wids.append([-1, *wchunk, -1] + [-1] * pad)
    return np.asarray(rows_ids), np.asarray(rows_wids)


def _mark_subwords(tokens: list[str], chinese_words: set[str]) -> list[str]:
    """run_chinese_ref.py's add_sub_symbol: prefix `##` to the 2nd.. characters of known words."""
    if not chinese_words:
        return tokens
    longest = max(map(len, chinese_words))
    start = 0
    while start < len(tokens):
        step = 1
        if len(tokens[start]) == 1 and is_cjk(tokens[start]):
            for size in range(min(len(tokens) - start, longest), 1, -1):
                if "".join(tokens[start : start + size]) in chinese_words:
                    for j in range(start + 1, start + size):
                        tokens[j] = "##" + tokens[j]
                    step = size
                    break
        start += step
    return tokens


def bench_wwm(*, quick: bool = False) -> dict:
    from datasets import Dataset

    from lab import vocab, wwm
    from lab.segment import Segmenter

    texts = _bench_texts(4000 if quick else 19484)
    chars = sum(map(len, texts))
    tokenizer = _full_tokenizer()
    print(f"wwm bench: {len(texts):,} People's Daily paragraphs, {chars:,} characters", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        vocab.save(tokenizer, Path(tmp) / "vocab")
        ds = Dataset.from_dict({"text": texts})
        t0 = time.perf_counter()
        segmenter = Segmenter("jieba")
        encoded, _ = wwm.encode_corpus(
            {"train": ds},
            segmenter,
            {"v": str(Path(tmp) / "vocab")},
            num_proc=2,
            check_docs=2000,
            tmp=Path(tmp),
        )
        enc = encoded["train"]
        ids, counts = wwm._flat(enc, "ids_v")
        wids, _ = wwm._flat(enc, "wids_v")
        ours_ids, _ = wwm.pack(
            ids,
            wids,
            counts,
            seq_len=128,
            cls_id=tokenizer.cls_token_id,
            sep_id=tokenizer.sep_token_id,
            pad_id=0,
        )
        t_ours = time.perf_counter() - t0

    t0 = time.perf_counter()
    base_ids, _ = chinese_ref_baseline(texts, tokenizer, 128)
    t_base = time.perf_counter() - t0

    same_tokens = np.array_equal(ours_ids[ours_ids != 0], base_ids[base_ids != 0])
    ours, base = chars / t_ours, chars / t_base
    print(
        f"  ours     {t_ours:7.2f} s  {ours / 1e6:.3f} M chars/s  ({segmenter.engine}, 2 processes)"
    )
    print(
        f"  baseline {t_base:7.2f} s  {base / 1e6:.3f} M chars/s  (jieba + tokenizer per sentence, 1 process)"
    )
    print(f"  same token stream: {same_tokens}")
    return {
        "bench": "wwm",
        "ours": round(ours),
        "baseline": round(base),
        "unit": "chars/s",
        "ratio": round(ours / base, 2),
        "target": 8.0,
        "chars": chars,
        "same_tokens": bool(same_tokens),
        "quick": quick,
    }


# ---------------------------------------------------------------------------------------------
# pretrain: our loop against the stock transformers Trainer


def _packed_bench_data(texts: list[str], tokenizer, seq_len: int):
    from lab import wwm
    from lab.segment import Segmenter

    seg = Segmenter("jieba")
    ids, wids, counts = wwm.WordTokenizer(tokenizer)([seg.cut(t) for t in texts])
    return wwm.pack(ids, wids, counts, seq_len=seq_len, cls_id=tokenizer.cls_token_id,
                    sep_id=tokenizer.sep_token_id, pad_id=tokenizer.pad_token_id)  # fmt: skip


def bench_pretrain(*, quick: bool = False) -> dict:
    """Real (non-pad) tokens per second: our loop (packed sequences, loss only at masked positions,
    bf16 autocast) against BertForMaskedLM + DataCollatorForLanguageModeling + Trainer (fp32,
    padded batches), the same Mini model from the same initialisation, the same texts, token-level
    masking for both; then both models' held-out loss after the same number of real tokens."""
    from datasets import Dataset
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    from lab import models, train
    from lab.mlm import MaskedLM, PackedBatches, evaluate
    from lab.wwm import WholeWordMaskCollator

    texts = _bench_texts(19484)
    held, texts = texts[:400], texts[400:]
    tokenizer = _full_tokenizer()
    steps = 12 if quick else 120
    batch = 32
    preset = "Mini"
    print(
        f"pretrain bench: {preset}, batch {batch}, {steps} steps of the Trainer, then our loop to the same real tokens",
        flush=True,
    )

    # the stock way: one paragraph per example, dynamic padding, token-level masking, fp32
    enc = tokenizer(texts, truncation=True, max_length=128)
    ds = Dataset.from_dict({"input_ids": enc["input_ids"]})
    stock_model = models.build(preset, len(tokenizer), seed=0)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=0.15, seed=0)
    real_tokens = {"n": 0}

    class Counting(DataCollatorForLanguageModeling):
        def __call__(self, features):
            out = super().__call__(features)
            real_tokens["n"] += int(out["attention_mask"].sum())
            return out

    collator = Counting(tokenizer, mlm=True, mlm_probability=0.15, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=batch, max_steps=steps, learning_rate=5e-4,
            warmup_steps=max(1, steps // 10), weight_decay=0.01, logging_steps=max(1, steps // 4),
            save_strategy="no", report_to=[], use_cpu=True, dataloader_num_workers=0, seed=0,
            disable_tqdm=True,
        )  # fmt: skip
        trainer = Trainer(model=stock_model, args=args, train_dataset=ds, data_collator=collator)
        t0 = time.perf_counter()
        trainer.train()
        t_stock = time.perf_counter() - t0
    stock_tokens = real_tokens["n"]

    # ours: the stage's packing and loop
    x, w = _packed_bench_data(texts, tokenizer, 128)
    ours_model = models.build(preset, len(tokenizer), seed=0)
    ours_steps = max(1, round(stock_tokens / (batch * 128)))
    cfg = train.TrainConfig(
        steps=ours_steps,
        lr=5e-4,
        warmup_steps=max(1, ours_steps // 10),
        bf16=True,
        log_every=max(1, ours_steps // 4),
    )
    batches = PackedBatches(x, w, WholeWordMaskCollator(tokenizer, whole_word=False), batch, 0)
    with tempfile.TemporaryDirectory() as tmp:
        res = train.train(MaskedLM(ours_model), batches, cfg, Path(tmp), desc="ours")
    ours_tokens, t_ours = res["tokens"], res["seconds"]

    hx, hw = _packed_bench_data(held, tokenizer, 128)
    loss_stock = evaluate(stock_model.float(), hx, hw, tokenizer, seed=1)["loss"]
    loss_ours = evaluate(ours_model, hx, hw, tokenizer, seed=1)["loss"]
    ours, base = ours_tokens / t_ours, stock_tokens / t_stock
    print(
        f"  stock Trainer {stock_tokens:,} real tokens in {t_stock:6.1f} s = {base:,.0f} tokens/s; held-out loss {loss_stock:.3f}"
    )
    print(
        f"  lab loop      {ours_tokens:,} real tokens in {t_ours:6.1f} s = {ours:,.0f} tokens/s; held-out loss {loss_ours:.3f}"
    )
    return {
        "bench": "pretrain", "ours": round(ours), "baseline": round(base), "unit": "real tokens/s",
        "ratio": round(ours / base, 2), "target": 3.0,
        "loss_ours": round(loss_ours, 4), "loss_baseline": round(loss_stock, 4),
        "tokens_ours": ours_tokens, "tokens_baseline": stock_tokens, "model": preset, "quick": quick,
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------
# locality: pretraining with the locality warm-up against plain pretraining, equal tokens


def _locality_arm(slope: float, steps: int, queue) -> None:
    """One arm of the locality bench, in its own process with one thread: pretrain L2_H128 on
    People's Daily (token-level masking, fp32, lr 3e-3, ANCHORS' plateau setting; a compact vocab of
    the training text's most frequent tokens, as the corpus stage builds one), with the locality
    warm-up over the first half when `slope` > 0; report held-out accuracy as it goes."""
    import os

    os.environ["OMP_NUM_THREADS"] = "1"  # one core per arm; the training loop respects it
    import torch

    torch.set_num_threads(1)
    from lab import models, train, vocab
    from lab.mlm import LocalityWarmup, MaskedLM, PackedBatches, evaluate
    from lab.pretrain import fill_mask
    from lab.wwm import WholeWordMaskCollator

    texts = _bench_texts(19484)
    full = _full_tokenizer()
    tokenizer = vocab.make_tokenizer(
        vocab.compact_tokens(full, vocab.token_counts(full, texts[400:]), 8000)
    )
    hx, hw = _packed_bench_data(texts[:400], tokenizer, 128)
    x, w = _packed_bench_data(texts[400:], tokenizer, 128)
    model = models.build("L2_H128", len(tokenizer), seed=0, dropout=0.0)
    batches = PackedBatches(x, w, WholeWordMaskCollator(tokenizer, whole_word=False), 32, 0)
    if slope:
        batches = LocalityWarmup(
            batches, heads=model.config.num_attention_heads, slope=slope, steps=steps // 2
        )
    cfg = train.TrainConfig(steps=steps, lr=3e-3, warmup_steps=max(1, steps // 20), bf16=False,
                            eval_every=max(1, steps // 8), checkpoints=False, log_every=max(1, steps // 8))  # fmt: skip
    curve = []

    def held_out(module) -> dict:
        r = evaluate(module.model, hx, hw, tokenizer, seed=1)
        curve.append(round(r["acc"], 4))
        return r

    with tempfile.TemporaryDirectory() as tmp:
        res = train.train(MaskedLM(model), batches, cfg, Path(tmp), evaluate=held_out,
                          desc="warm-up" if slope else "plain")  # fmt: skip
    probe = fill_mask(model.eval(), tokenizer, "中国的首都是[MASK]京。")[0][0][0]
    queue.put({"acc": res["eval"]["acc"], "loss": res["eval"]["loss"], "curve": curve,
               "probe": probe, "tokens": res["tokens"], "seconds": res["seconds"]})  # fmt: skip


def bench_locality(*, quick: bool = False) -> dict:
    """Held-out masked-token accuracy after equal tokens: L2_H128 pretrained with the locality
    warm-up (attention bias slope 1 annealed to 0 over the first half) against the same model,
    data and schedule without it. Both arms run at once, one core each."""
    import multiprocessing as mp

    steps = 300 if quick else 2000
    print(
        f"locality bench: L2_H128 on People's Daily, {steps} steps x 32 x 128, both arms side by side",
        flush=True,
    )
    ctx = mp.get_context("spawn")
    arms = {}
    for name, slope in (("warmup", 1.0), ("plain", 0.0)):
        queue = ctx.Queue()
        proc = ctx.Process(target=_locality_arm, args=(slope, steps, queue))
        proc.start()
        arms[name] = (proc, queue)
    out = {}
    for name, (proc, queue) in arms.items():
        out[name] = queue.get()
        proc.join()
    for name, r in out.items():
        print(f"  {name:7s} held-out accuracy {r['acc']:.3f} (loss {r['loss']:.3f}) after {r['tokens']:,} tokens, "
              f"curve {r['curve']}, 中国的首都是[MASK]京。 -> {r['probe']}")  # fmt: skip
    return {
        "bench": "locality", "ours": round(out["warmup"]["acc"], 4), "baseline": round(out["plain"]["acc"], 4),
        "unit": "held-out masked-token accuracy", "ratio": round(out["warmup"]["acc"] / out["plain"]["acc"], 2),
        "target": 1.5, "curve_ours": out["warmup"]["curve"], "curve_baseline": out["plain"]["curve"],
        "probe_ours": out["warmup"]["probe"], "probe_baseline": out["plain"]["probe"],
        "tokens": out["warmup"]["tokens"], "quick": quick,
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------
# distill: cached top-k logits against a teacher forward every step


def bench_distill(*, quick: bool = False) -> dict:
    """Student training tokens/s from cached teacher top-k against online distillation, the same
    Tiny student, the same Mini teacher, the same batches, KD + MLM losses for both."""
    from lab import distill, models, train
    from lab.mlm import PackedBatches
    from lab.wwm import WholeWordMaskCollator

    tokenizer = _full_tokenizer()
    x, w = _packed_bench_data(_bench_texts(3000 if quick else 8000), tokenizer, 128)
    steps, batch = (10, 32) if quick else (80, 32)
    teacher = models.build("Mini", len(tokenizer), seed=0)
    collator = WholeWordMaskCollator(tokenizer, seed=0)
    weights = {"kd": 1.0, "mlm": 1.0}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        meta = distill.build_cache(teacher, x, w, collator, Path(tmp) / "cache", dupe_factor=1,
                                   n_sequences=steps * batch, topk=128, seed=0, teacher_digest="bench")  # fmt: skip
        t_cache = time.perf_counter() - t0
        results = {}
        for mode in ("online", "cached"):
            student = models.build("Tiny", len(tokenizer), seed=1, dropout=0.0)
            module = distill.Distiller(student, teacher if mode == "online" else None, weights=weights,
                                       temperature=8.0, t2=True, layer_map=[1, 3], topk=128)  # fmt: skip
            if mode == "cached":
                batches = distill.CachedBatches(Path(tmp) / "cache", batch, 0)
            else:
                batches = PackedBatches(x, w, collator, batch, 0)
            cfg = train.TrainConfig(
                steps=steps, lr=1e-3, warmup_steps=2, bf16=True, log_every=max(1, steps // 4)
            )
            res = train.train(module, batches, cfg, Path(tmp) / mode, desc=f"distill {mode}")
            results[mode] = res["tokens_per_s"]
    ours, base = results["cached"], results["online"]
    print(f"  online (teacher forward each step) {base:,.0f} tokens/s")
    print(
        f"  from cached top-128 logits         {ours:,.0f} tokens/s (cache built once in {t_cache:.1f} s)"
    )
    return {
        "bench": "distill", "ours": round(ours), "baseline": round(base), "unit": "student tokens/s",
        "ratio": round(ours / base, 2), "target": 1.5, "cache_seconds": round(t_cache, 1),
        "cache_mb_per_million_tokens": round(meta["bytes_per_million_tokens"] / 1e6, 1), "quick": quick,
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------
# longify: sliding-window attention against full attention at growing lengths


def _fwd_bwd_child(kind: str, length: int, window: int, queue) -> None:
    """In a fresh process: one training step as the longify stage takes it (masked-LM loss at 15% of
    the positions, bf16 autocast, forward + backward) at `length`; (seconds, peak MB, growth MB,
    GFLOP). The arithmetic is counted in a second step through SDPA's math backend, which torch's
    FLOP counter sees (its fused CPU kernel it does not)."""
    import resource

    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from lab import longify, models, train
    from lab.mlm import MaskedLM

    torch.manual_seed(0)
    bert = models.build("Mini", 21128, seed=0, dropout=0.0)
    model = longify.convert(bert, max_positions=4096, attention_window=window)
    if kind == "longformer":  # as the lab trains it
        longify.block_attention(model)
    elif kind.startswith("bert"):  # the same BERT, positions tiled out to 4,096, full attention
        model = _full_attention_twin(bert, model, "eager" if kind == "bert-eager" else "sdpa")
    module = MaskedLM(model)

    def step(n: int) -> float:
        g = torch.Generator().manual_seed(n)
        x = torch.randint(5, 21128, (1, n), generator=g)
        batch = {
            "input_ids": x,
            "labels": torch.where(torch.rand(1, n, generator=g) < 0.15, x, -100),
        }
        if kind.startswith("longformer"):
            batch["global_attention_mask"] = (torch.arange(n) == 0).long()[None]
        t0 = time.perf_counter()
        with train.autocast(torch.device("cpu"), True):
            loss = module(**batch)["loss"]
        loss.backward()
        module.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    step(2 * window)  # warm-up on a short input, so the peak below belongs to `length`
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    seconds = step(length)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        step(length)
    gflop = counter.get_total_flops() / 1e9
    queue.put((seconds, peak / 1024, (peak - before) / 1024, gflop))


def _full_attention_twin(bert, long, attn: str):
    """BertForMaskedLM with 4,096 positions (the Longformer's tiled table) and full attention,
    through SDPA (fused kernel, no stored attention maps) or eager (the maps materialised)."""
    from transformers import BertForMaskedLM

    cfg = bert.config.__class__.from_dict(
        {**bert.config.to_dict(), "max_position_embeddings": 4096}
    )
    cfg._attn_implementation = attn
    twin = BertForMaskedLM(cfg)
    state = bert.state_dict()
    offset = bert.config.pad_token_id + 1
    state["bert.embeddings.position_embeddings.weight"] = (
        long.longformer.embeddings.position_embeddings.weight[offset:].detach().clone()
    )
    twin.load_state_dict(state, strict=False)
    return twin


def bench_longify(*, quick: bool = False) -> dict:
    import multiprocessing as mp

    from lab import config

    window = config.profile_values("cpu")["longify"]["attention_window"]
    lengths = [512, 1024] if quick else [512, 1024, 2048, 4096]
    ctx = mp.get_context("spawn")
    rows = {}
    for length in lengths:
        for kind in ("longformer", "longformer-hf", "bert", "bert-eager"):
            q = ctx.Queue()
            p = ctx.Process(target=_fwd_bwd_child, args=(kind, length, window, q))
            p.start()
            seconds, peak_mb, grew_mb, gflop = q.get()
            p.join()
            rows[(kind, length)] = (seconds, grew_mb, gflop)
            print(
                f"  {kind:13s} {length:5d} tokens: forward+backward {seconds:6.2f} s,"
                f" memory +{grew_mb:7.1f} MB, {gflop:6.1f} GFLOP",
                flush=True,
            )
    top = lengths[-1]
    speed = rows[("bert", top)][0] / rows[("longformer", top)][0]
    memory = rows[("longformer", top)][1] / max(1e-9, rows[("bert", top)][1])
    eager_speed = rows[("bert-eager", top)][0] / rows[("longformer", top)][0]
    eager_memory = rows[("longformer", top)][1] / max(1e-9, rows[("bert-eager", top)][1])
    growth = rows[("longformer", top)][0] / rows[("longformer", 1024)][0]
    hf_speed = rows[("bert", top)][0] / rows[("longformer-hf", top)][0]
    # what a sliding window can save at most here: full attention's arithmetic over the Longformer's
    arithmetic = rows[("bert", top)][2] / rows[("longformer", top)][2]
    print(
        f"  at {top} tokens full attention does {arithmetic:.2f}x the Longformer's arithmetic: the most a"
        " sliding window can save when both run at the same FLOP/s"
    )
    return {
        "bench": "longify", "ours": round(rows[("longformer", top)][0], 3), "baseline": round(rows[("bert", top)][0], 3),
        "unit": f"s per forward+backward at {top} tokens (lower is better)", "ratio": round(speed, 2),
        "target": 8.0, "memory_ratio": round(memory, 3), "memory_target": 0.25,
        "ratio_vs_eager": round(eager_speed, 2), "memory_ratio_vs_eager": round(eager_memory, 3),
        "time_growth_1024_to_top": round(growth, 2), "linear_growth_would_be": top / 1024,
        "ratio_transformers_longformer": round(hf_speed, 2), "arithmetic_ratio": round(arithmetic, 2),
        "gflop": {f"{k}@{n}": round(v[2], 1) for (k, n), v in rows.items()},
        "step": "masked-LM loss at 15% of positions, bf16 autocast, forward + backward, batch 1",
        "window": window, "model": "Mini", "lengths": lengths,
        "seconds": {f"{k}@{n}": round(v[0], 3) for (k, n), v in rows.items()},
        "memory_mb": {f"{k}@{n}": round(v[1], 1) for (k, n), v in rows.items()}, "quick": quick,
    }  # fmt: skip


BENCHES = {
    "wwm": bench_wwm,
    "pretrain": bench_pretrain,
    "locality": bench_locality,
    "distill": bench_distill,
    "longify": bench_longify,
}
