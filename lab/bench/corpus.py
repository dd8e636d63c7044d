"""bench corpus: the corpus and wwm stages on a researcher's own text at 10 M and 100 M characters,
against the pipeline a user would write instead (`datasets.load_dataset("text")`, `.map` with jieba
and the fast tokenizer on every core, then the run_mlm-style grouping into 128-token blocks).

The text is real: sentences of People's Daily, THUCNews headlines and MSRA NER recombined into new
documents of 2-7 sentences (so deduplication cannot shrink it), with a task evaluation text in one
document of 200, as a news crawl holds them. Each arm runs in its own process tree; the bench times
it and samples the memory of the whole tree (the sum of its processes' RSS, and of their PSS, which
counts pages that forked workers share once).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lab.core import sources
from lab.core.segment import quiet_jieba
from lab.core.taskdata import eval_texts, prepare_tasks
from lab.core.text import normalize, sentences

TARGETS = {
    "chars_per_s": 1e6,
    "peak_gb": 3.0,
    "memory_growth": 1.5,
    "time_growth": 12.0,
    "ratio": 2.0,
}


def sentence_pool() -> tuple[list[str], list[str]]:
    """Sentences of the registry's news sources without any task evaluation text, and those texts."""
    raw = {name: sources.load(name) for name in ("reviews", "thucnews", "msra_ner", "stsb")}
    tasks, _ = prepare_tasks(raw, eval_frac=0.1, max_train=0, max_eval=0)
    held = [t for texts in eval_texts(tasks).values() for t in texts if len(t) >= 8]
    held_set = set(held)
    pool = [
        s
        for p in sources.load("peoples_daily")
        for s in sentences(normalize("".join(w for w, _ in p)))
    ]
    pool += [normalize(t) for _, t in raw["thucnews"]]
    pool += ["".join(c) for c, _ in raw["msra_ner"]["train"]]
    return [s for s in pool if len(s) >= 4 and s not in held_set], held


def generate(n_chars: int, pool: list[str], held: list[str], path: Path, seed: int = 0) -> int:
    """About `n_chars` characters of new documents, one a line; returns the characters written."""
    rng = np.random.default_rng(seed)
    total = 0
    with open(path, "w", encoding="utf-8") as f:
        while total < n_chars:
            k = rng.integers(2, 8, size=10_000)
            picks = rng.integers(0, len(pool), size=int(k.sum()))
            leak = rng.random(10_000) < 0.005
            lines, pos = [], 0
            for j, kk in enumerate(k):
                doc = "".join(pool[i] for i in picks[pos : pos + kk])
                pos += kk
                if leak[j]:
                    doc += held[int(rng.integers(len(held)))]
                lines.append(doc)
                total += len(doc)
            f.write("\n".join(lines) + "\n")
    return total


def measure(cmd: list[str], env: dict) -> dict:
    """Wall time and the peak memory of a command's whole process tree (sampled every 0.2 s)."""
    import psutil

    rss = pss = 0
    with tempfile.TemporaryFile(
        mode="w+"
    ) as log:  # not a pipe: a full pipe would stall the command
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log, text=True)
        root = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                tree = [root, *root.children(recursive=True)]
                rss = max(rss, sum(p.memory_info().rss for p in tree))
                pss = max(pss, sum(p.memory_full_info().pss for p in tree))
            except psutil.Error:  # a process ended between listing and reading it
                pass
            time.sleep(0.2)
        seconds = time.perf_counter() - t0
        if proc.returncode:
            log.seek(0)
            raise RuntimeError(f"{' '.join(cmd[:4])} failed: {log.read()[-2000:]}")
    return {
        "seconds": round(seconds, 1),
        "peak_rss_gb": round(rss / 1e9, 2),
        "peak_pss_gb": round(pss / 1e9, 2),
    }


def ours(path: Path, home: Path, run_id: str) -> dict:
    """`python -m lab.corpus` then `python -m lab.wwm`, the cpu profile with the file as the source."""
    env = {**os.environ, "ZH_MINILAB_HOME": str(home)}
    corpus = measure([sys.executable, "-m", "lab.corpus", "--profile", "cpu", "--run-id", run_id,
                      "-p", f"sources=[{path}]"], env)  # fmt: skip
    wwm = measure([sys.executable, "-m", "lab.wwm", "--profile", "cpu", "--run-id", run_id], env)
    return {
        "seconds": round(corpus["seconds"] + wwm["seconds"], 1),
        "peak_rss_gb": max(corpus["peak_rss_gb"], wwm["peak_rss_gb"]),
        "peak_pss_gb": max(corpus["peak_pss_gb"], wwm["peak_pss_gb"]),
        "corpus": corpus,
        "wwm": wwm,
    }


def baseline(path: Path, out: Path) -> None:
    """The plain `datasets` pipeline, in this process: text -> jieba words + token ids -> blocks."""
    from datasets import load_dataset

    from lab.core import vocab

    jieba = quiet_jieba()
    tokenizer = vocab.make_tokenizer(sources.load("bert_vocab"))
    ds = load_dataset("text", data_files=str(path), split="train", cache_dir=str(out / "cache"))

    def encode(batch):
        enc = tokenizer(batch["text"], add_special_tokens=False)
        return {"input_ids": enc["input_ids"], "words": [jieba.lcut(t) for t in batch["text"]]}

    def group(batch, size=126):  # run_mlm's group_texts, with room for [CLS] and [SEP]
        ids = [i for row in batch["input_ids"] for i in row]
        n = len(ids) // size * size
        return {"input_ids": [[101, *ids[i : i + size], 102] for i in range(0, n, size)]}

    cores = os.cpu_count() or 1
    ds = ds.map(encode, batched=True, num_proc=cores, remove_columns=["text"])
    ds.map(group, batched=True, num_proc=cores, remove_columns=ds.column_names).save_to_disk(
        str(out / "packed")
    )


def run(*, quick: bool = False) -> dict:
    sizes = (1_000_000, 10_000_000) if quick else (10_000_000, 100_000_000)
    pool, held = sentence_pool()
    print(f"corpus bench: {len(pool):,} sentences recombined into documents of "
          f"{', '.join(f'{n / 1e6:g} M' for n in sizes)} characters", flush=True)  # fmt: skip
    arms: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="zh-minilab-bench-") as tmp:
        tmp = Path(tmp)
        for n in sizes:
            path = tmp / f"user-{n}.txt"
            chars = generate(n, pool, held, path)
            mine = ours(path, tmp / "home", f"bench-{n}")
            base_out = tmp / f"baseline-{n}"
            base = measure(
                [sys.executable, "-m", "lab.bench.corpus", str(path), str(base_out)],
                dict(os.environ),
            )
            for name, r in (("ours", mine), ("baseline", base)):
                r["chars_per_s"] = round(chars / r["seconds"])
                arms[f"{name}@{n}"] = r
            print(f"  {n / 1e6:>5g} M chars: ours {mine['seconds']:6.1f} s ({mine['chars_per_s'] / 1e6:.2f} M/s, "
                  f"peak {mine['peak_rss_gb']:.2f} GB RSS / {mine['peak_pss_gb']:.2f} GB PSS); datasets + jieba "
                  f"{base['seconds']:6.1f} s ({base['chars_per_s'] / 1e6:.2f} M/s, peak {base['peak_rss_gb']:.2f} GB "
                  f"RSS / {base['peak_pss_gb']:.2f} GB PSS)", flush=True)  # fmt: skip
            for folder in (tmp / "home", base_out):
                shutil.rmtree(folder, ignore_errors=True)
            path.unlink()
    small, big = (f"ours@{n}" for n in sizes)
    top = arms[big]
    result = {
        "bench": "corpus", "ours": top["chars_per_s"], "baseline": arms[f"baseline@{sizes[1]}"]["chars_per_s"],
        "unit": f"characters/s, corpus + wwm stages at {sizes[1]:,} characters",
        "ratio": round(top["chars_per_s"] / arms[f"baseline@{sizes[1]}"]["chars_per_s"], 2),
        "target": TARGETS["ratio"],
        "chars_per_s_target": TARGETS["chars_per_s"],
        "peak_rss_gb": top["peak_rss_gb"], "peak_pss_gb": top["peak_pss_gb"], "peak_gb_target": TARGETS["peak_gb"],
        "memory_growth": round(top["peak_rss_gb"] / arms[small]["peak_rss_gb"], 2),
        "memory_growth_target": TARGETS["memory_growth"],
        "time_growth": round(top["seconds"] / arms[small]["seconds"], 2),
        "time_growth_target": TARGETS["time_growth"], "size_growth": sizes[1] // sizes[0],
        "arms": arms, "quick": quick,
    }  # fmt: skip
    result["targets_met"] = {
        "chars_per_s": top["chars_per_s"] >= TARGETS["chars_per_s"],
        "peak_gb": top["peak_rss_gb"] <= TARGETS["peak_gb"],
        "memory_growth": result["memory_growth"] <= TARGETS["memory_growth"],
        "time_growth": result["time_growth"] <= TARGETS["time_growth"],
        "ratio": result["ratio"] >= TARGETS["ratio"],
    }
    return result


if __name__ == "__main__":  # the baseline arm, in a process tree of its own
    baseline(Path(sys.argv[1]), Path(sys.argv[2]))
