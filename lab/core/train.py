"""The training loop: one visible loop on Hugging Face accelerate, used by every training stage.

Pretrain, distill, longify and the downstream tasks each supply
  * a module whose forward(**batch) returns {"loss": tensor, **scalars to log},
  * a batch source: batches(index, rank, world) -> dict of tensors, deterministic in its arguments
    (so the data position is just the step, and resuming replays nothing and skips nothing),
  * optionally an evaluate(module) -> dict of metrics.

The loop adds: bf16 autocast where the hardware supports it, gradient accumulation, warmup + decay,
clipping, periodic evaluation, checkpoints with full state (weights as safetensors, optimizer,
scheduler, RNG, step) written atomically, automatic resume from the latest checkpoint, a guard that
stops on a non-finite loss and keeps the last good checkpoint, progress with tokens/s, MFU and ETA,
and metrics appended to a jsonl file and to TensorBoard event files. On a CPU it keeps the memory
a step frees (`hardware.retain_freed_memory`) and draws dropout masks with `core.dropout` (a
quarter of the random numbers). Optionally it compiles the model's encoders (`torch.compile`; on a
CPU with `core.lookup`'s embedding backward) and a masked-LM loss (`mlm.MaskedCE`); evaluation runs
them uncompiled (`eager`, torch 2.6+). Scalars stay on the device between log steps: no per-step
host sync. Under `accelerate launch` or `torchrun` it runs data-parallel unchanged (DDP; gloo on
CPU).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

from lab.core import dropout, hardware, lookup
from lab.core.errors import LabError
from lab.core.files import write_json
from lab.core.progress import echo, tqdm
from lab.core.resume import latest_checkpoint, load_checkpoint, save_checkpoint


class TrainingError(LabError, RuntimeError):
    """Training cannot go on (a non-finite loss); the message names the step and the checkpoint."""


@dataclass(frozen=True)
class TrainConfig:
    steps: int  # optimizer steps
    lr: float  # peak learning rate
    warmup_steps: int  # linear warmup from 0
    schedule: str = "linear"  # decay after warmup: linear | cosine | constant
    min_lr_ratio: float = 0.0  # the decay ends at lr * min_lr_ratio
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    clip: float = 1.0  # max gradient norm (0: off)
    grad_accum: int = 1  # micro-batches per optimizer step
    bf16: bool = True  # autocast to bfloat16 where supported
    eval_every: int = 0  # steps between evaluations (0: only at the end)
    ckpt_every: int = 0  # steps between checkpoints (0: only at the end)
    log_every: int = 20
    seed: int = 0
    keep_checkpoints: int = 2
    checkpoints: bool = True  # False for short runs (fine-tuning): cheaper to redo than to resume
    tensorboard: bool = True  # event files in out_dir/tensorboard (accelerate's tracker)
    leave: bool = True  # keep the progress bar (batch runs: print its summary line) when done
    flops_per_token: float = 0.0  # model FLOPs of a trained token (budget.flops_per_token): MFU
    compile: bool = (
        False  # torch.compile the model's encoders (falls back to eager without a compiler)
    )
    fast_dropout: bool = True  # on a CPU, dropout masks from a quarter of the random numbers


def lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        t = min(1.0, t)
        shape = 1 - t if cfg.schedule == "linear" else 0.5 * (1 + math.cos(math.pi * t))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * shape

    return f


@functools.cache
def accelerator():
    """The process's Accelerator (one per process: accelerate keeps global state)."""
    from accelerate import Accelerator

    cuda = torch.cuda.is_available()
    acc = Accelerator(cpu=not cuda)
    if not cuda and "OMP_NUM_THREADS" not in os.environ:
        # one intra-op thread pool per process, sized to its share of the cores; an explicit
        # OMP_NUM_THREADS wins (several jobs side by side must not oversubscribe the cores)
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // acc.num_processes))
    return acc


def bf16_active(device: torch.device, bf16: bool) -> bool:
    """Whether bfloat16 autocast runs: asked for, and the device supports it (CPU, Ampere+ GPUs)."""
    return bf16 and (
        device.type == "cpu" or (device.type == "cuda" and torch.cuda.is_bf16_supported())
    )


def autocast(device: torch.device, bf16: bool):
    """bfloat16 autocast where the device supports it, else a no-op."""
    return torch.autocast(
        device_type=device.type, dtype=torch.bfloat16, enabled=bf16_active(device, bf16)
    )


def optimizer_for(module: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases, LayerNorm weights and embeddings' LayerNorm."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=1e-6, fused=True)


def compiles_on_cpu(compile: bool) -> bool:
    """Whether a loop asked to `compile` compiles on this process's CPU (no GPU, a compiler found):
    where `mlm.LocalityWarmup(hold=...)` was measured to pay."""
    return compile and accelerator().device.type == "cpu" and not hardware.compiler()


def compile_encoders(module: torch.nn.Module) -> str:
    """Compile each transformers encoder inside `module` in place (its weights and state dict keys
    are unchanged), and a masked-LM loss (`fused_loss` of `mlm.MaskedLM` or `kd.Distiller`); what
    was done, for the log."""
    why = hardware.compiler()
    if why:
        return f"uncompiled: {why}"
    from transformers import PreTrainedModel

    done, loss = [], []
    for m in module.modules():
        if (
            isinstance(m, PreTrainedModel)
            and m is m.base_model
            and not getattr(m, "_lab_compiled", False)
        ):
            if m.device.type == "cpu":
                lookup.install(m)  # embedding backward without inductor's atomics
            m.compile(dynamic=None)
            m._lab_compiled = True
            done.append(type(m).__name__)
        if getattr(m, "fused_loss", None) is False:  # MaskedLM, Distiller: compiled loss kernels
            m.fused_loss = True
            loss = ["the masked-LM loss"]
    return f"compiled {' and '.join(done + loss)}" if done or loss else "nothing to compile"


def train(
    module: torch.nn.Module,
    batches: Callable[[int, int, int], dict],
    cfg: TrainConfig,
    out_dir: Path,
    *,
    evaluate: Callable[[torch.nn.Module], dict] | None = None,
    count_tokens: Callable[[dict], int] | None = None,
    desc: str = "train",
    stop_after: int | None = None,
) -> dict:
    """Train `module` for `cfg.steps`, resuming from `out_dir/checkpoints` if there is one.

    Returns {"steps", "tokens", "seconds", "tokens_per_s", "eval": last evaluation, "resumed_from",
    "step_seconds": the seconds less evaluations and checkpoints (compiling stays in), ...}, and
    with `cfg.flops_per_token` the MFU over each time, "mfu" (as the progress bar) and "step_mfu".
    `stop_after` ends the call early after that many steps (tests use it to simulate a kill).
    """
    out_dir = Path(out_dir)
    ckpt_root = out_dir / "checkpoints"
    acc = accelerator()
    torch.manual_seed(cfg.seed)
    optimizer = optimizer_for(module, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    module, optimizer = acc.prepare(module, optimizer)
    count_tokens = count_tokens or (lambda b: b["attention_mask"].sum())
    log_path = out_dir / "metrics.jsonl"

    start, tokens = 0, 0
    latest = latest_checkpoint(ckpt_root) if cfg.checkpoints else None
    if latest is not None:
        state = load_checkpoint(
            latest, acc.unwrap_model(module), optimizer, scheduler, acc.process_index
        )
        start, tokens = state["step"], state["tokens"]
        _truncate_log(log_path, start)
        if acc.is_main_process:
            print(f"{desc}: resuming from {latest} (step {start:,} of {cfg.steps:,})", flush=True)
    elif acc.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        log_path.unlink(missing_ok=True)

    board = _board(out_dir, start) if cfg.tensorboard and acc.is_main_process else None
    precision = "bfloat16" if bf16_active(acc.device, cfg.bf16) else "float32"
    peak = hardware.matmul_peak(acc.device.type, precision) if cfg.flops_per_token else 0.0
    if acc.device.type == "cpu":
        hardware.retain_freed_memory()
    if cfg.fast_dropout and acc.device.type == "cpu":  # a GPU's own dropout is one fused kernel
        dropout.install(acc.unwrap_model(module))
    if cfg.compile:
        what = compile_encoders(acc.unwrap_model(module))
        if acc.is_main_process:
            echo(f"{desc}: {what}")
    last_eval: dict = {}
    t0 = time.time()
    tokens_at_start = tokens
    bar = tqdm(total=cfg.steps, initial=start, desc=desc, disable=not acc.is_main_process,
               unit="step", leave=cfg.leave)  # fmt: skip
    module.train()
    step, pending, unchecked = start, 0, {}
    paused = 0.0  # seconds spent evaluating and saving checkpoints: not training steps
    counted = torch.zeros((), dtype=torch.long, device=acc.device)  # tokens since the last log
    try:
        while step < cfg.steps:
            for micro in range(cfg.grad_accum):
                batch = batches(step * cfg.grad_accum + micro, acc.process_index, acc.num_processes)
                batch = {k: v.to(acc.device) if torch.is_tensor(v) else v for k, v in batch.items()}
                sync = micro == cfg.grad_accum - 1
                with contextlib.nullcontext() if sync else acc.no_sync(module):
                    with autocast(acc.device, cfg.bf16):
                        out = module(**batch)
                    acc.backward(out["loss"] / cfg.grad_accum)
                counted += count_tokens(batch)
                for k, v in out.items():  # kept on the device until the next log step
                    v = v.detach() if torch.is_tensor(v) else torch.tensor(float(v))
                    unchecked[k] = unchecked.get(k, 0.0) + v.float() / cfg.grad_accum
            if cfg.clip:
                acc.clip_grad_norm_(module.parameters(), cfg.clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            pending += 1
            bar.update(1)
            logging = step % cfg.log_every == 0 or step == cfg.steps
            evaluating = evaluate and (
                (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps
            )
            saving = cfg.checkpoints and (
                (cfg.ckpt_every and step % cfg.ckpt_every == 0) or step == cfg.steps
            )
            if logging or evaluating or saving or stop_after is not None:
                # one host sync: the mean of every scalar since the last one, the tokens, the guard
                means = {k: float(v) / pending for k, v in unchecked.items()}
                if not math.isfinite(means["loss"]):
                    raise TrainingError(
                        f"{desc}: the loss became {means['loss']} between steps {step - pending + 1:,} and "
                        f"{step:,}. Nothing after the last good checkpoint "
                        f"({latest_checkpoint(ckpt_root) or 'none yet'}) was kept. Lower the learning "
                        "rate, raise warmup or enable clipping, then run again."
                    )
                tokens += int(counted) * acc.num_processes
                counted.zero_()
                rate = (tokens - tokens_at_start) / max(1e-9, time.time() - t0)
                row = {"lr": scheduler.get_last_lr()[0], "tok_per_s": rate, **means}
                if peak:  # per device: this process's share of the tokens against its peak
                    row["mfu"] = hardware.mfu(cfg.flops_per_token, rate / acc.num_processes, peak)
                bar.set_postfix(loss=f"{means['loss']:.3f}", tok_s=f"{rate:,.0f}",
                                **({"mfu": f"{row['mfu']:.0%}"} if peak else {}), refresh=False)  # fmt: skip
                if acc.is_main_process and logging:
                    _log(log_path, {"step": step, "tokens": tokens, **row})
                    if board:
                        board.log(_scalars(row, "train"), step=step)
                pending, unchecked = 0, {}
            if evaluating or saving:
                pause = time.perf_counter()
                if evaluating:
                    last_eval = _evaluate(module, acc, evaluate, cfg.bf16)
                    if acc.is_main_process:
                        _log(log_path, {"step": step, "tokens": tokens, "eval": last_eval})
                        bar.write(f"{desc} step {step:,}: {_fmt(last_eval)}")
                        if board:
                            board.log(_scalars(last_eval, "eval"), step=step)
                if saving:
                    acc.wait_for_everyone()
                    save_checkpoint(ckpt_root, step, tokens, acc.unwrap_model(module), optimizer,
                                    scheduler, acc, cfg.keep_checkpoints)  # fmt: skip
                paused += time.perf_counter() - pause
            if stop_after is not None and step - start >= stop_after:
                break
    finally:
        bar.close()
        if board:
            board.finish()
    seconds = time.time() - t0
    acc.wait_for_everyone()
    rate = (tokens - tokens_at_start) / max(1e-9, seconds)
    summary = {
        "steps": step,
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": rate,
        "eval": last_eval,
        "resumed_from": start,
        "world_size": acc.num_processes,
        "bf16": bool(cfg.bf16),
        "compiled": bool(cfg.compile and not hardware.compiler()),
    }
    if acc.device.type == "cuda":
        summary["peak_memory_gb"] = torch.cuda.max_memory_allocated(acc.device) / 1e9
    summary["step_seconds"] = seconds - paused  # the same tokens over the steps' time alone
    if peak:  # model FLOPs utilisation against this device's probed matmul peak: over the loop's
        # time (evaluations and checkpoints included) and over its training steps alone
        steps_rate = (tokens - tokens_at_start) / max(1e-9, seconds - paused)
        summary |= {"flops_per_token": cfg.flops_per_token, "peak_flops": peak,
                    "mfu": hardware.mfu(cfg.flops_per_token, rate / acc.num_processes, peak),
                    "step_mfu": hardware.mfu(cfg.flops_per_token, steps_rate / acc.num_processes, peak)}  # fmt: skip
    return summary


def _board(out_dir: Path, start: int):
    """TensorBoard events in out_dir/tensorboard; a resumed run drops the events after its
    checkpoint (they are written again)."""
    from accelerate.tracking import TensorBoardTracker

    tracker = TensorBoardTracker("tensorboard", out_dir, purge_step=start + 1 if start else None)
    tracker.start()
    return tracker


def _scalars(row: dict, group: str) -> dict:
    return {f"{group}/{k}": float(v) for k, v in row.items() if isinstance(v, (int, float))}


@contextlib.contextmanager
def eager():
    """A context in which compiled modules run uncompiled. Evaluation runs in it: a forward pass
    without gradients is a graph of its own (grad mode, autocast and each new length are guards),
    compiled in about 9 s, and at the `cpu` teacher's 256 held-out sequences it ran about as fast
    uncompiled (0.65 s; compiled 0.63 s). A torch before 2.6 has no stance and compiles as before."""
    stance = getattr(torch.compiler, "set_stance", None)
    with stance("force_eager") if stance else contextlib.nullcontext():
        yield


def _evaluate(module, acc, evaluate, bf16: bool) -> dict:
    model = acc.unwrap_model(module)
    model.eval()
    with torch.no_grad(), autocast(acc.device, bf16), eager():
        result = evaluate(model)
    model.train()
    return result


def _fmt(metrics: dict) -> str:
    return ", ".join(
        f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()
    )


def _log(path: Path, row: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _truncate_log(path: Path, step: int) -> None:
    """Drop log rows written after the checkpoint being resumed (they will be written again)."""
    if not path.exists():
        return
    rows = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    kept = [r for r in rows if json.loads(r)["step"] <= step]
    path.write_text("".join(r + "\n" for r in kept), encoding="utf-8")


def read_log(path: Path) -> list[dict]:
    lines = Path(path).read_text(encoding="utf-8").splitlines() if Path(path).exists() else []
    return [json.loads(line) for line in lines if line.strip()]


def train_once(model, folder: Path, fit: Callable[[], dict]) -> dict:
    """One piece of a longer job (a pretraining stage, one student) that a rerun does not repeat:
    if `folder` holds its finished weights and summary, load them; else run `fit()` (which resumes
    from the folder's checkpoints), then keep the weights and summary and drop the checkpoints."""
    folder = Path(folder)
    done = folder / "done.json"
    if done.exists():
        load_model(model, str(folder / "model.safetensors"))
        return json.loads(done.read_text(encoding="utf-8"))
    summary = fit()
    acc = accelerator()
    if acc.is_main_process:
        save_model(model, str(folder / "model.safetensors"))
        write_json(done, summary)
        shutil.rmtree(folder / "checkpoints", ignore_errors=True)
    acc.wait_for_everyone()
    return summary
