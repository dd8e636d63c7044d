"""What this machine can do: a device's dense matmul peak, probed once per process, the attention
kernel that is fastest for training on it, and whether `torch.compile` can run here.

MFU (model FLOPs utilisation) = model FLOPs per token (`lab.core.budget.flops_per_token`) x tokens
per second / the peak probed here. The peak is the best of a few matmuls at the shapes a miniature
model multiplies (CPU) or of large square ones (CUDA), each timed for a fraction of a second after a
warm-up: the best, because a busy moment only ever makes a probe slower.
"""

from __future__ import annotations

import functools
import shutil
import time

import torch

CPU_SHAPES = ((4096, 256, 1024), (4096, 1024, 256), (2048, 512, 2048))
CUDA_SHAPES = ((8192, 8192, 8192), (4096, 4096, 4096))


@functools.cache
def matmul_peak(device: str = "cpu", dtype: str = "bfloat16", seconds: float = 0.15) -> float:
    """Dense matmul FLOP/s of `device` in `dtype` (the best of a few shapes and repeats)."""
    dev = torch.device(device)
    dt = getattr(torch, dtype)
    cuda = dev.type == "cuda"
    best = 0.0
    for m, k, n in CUDA_SHAPES if cuda else CPU_SHAPES:
        a = torch.randn(m, k, dtype=dt, device=dev)
        b = torch.randn(k, n, dtype=dt, device=dev)
        for _ in range(3):  # allocation, kernel choice, clocks
            a @ b
        for _ in range(2):
            if cuda:
                torch.cuda.synchronize(dev)
            t0, done = time.perf_counter(), 0
            while time.perf_counter() - t0 < seconds:
                a @ b
                done += 1
                if cuda and done % 8 == 0:
                    torch.cuda.synchronize(dev)
            if cuda:
                torch.cuda.synchronize(dev)
            best = max(best, 2 * m * k * n * done / (time.perf_counter() - t0))
    return best


def mfu(flops_per_token: float, tokens_per_s: float, peak: float) -> float:
    return flops_per_token * tokens_per_s / peak if peak else 0.0


def training_attention(device: torch.device | str) -> str:
    """The attention implementation a BERT trains fastest with here: PyTorch's fused kernel on a GPU;
    on a CPU the plain one (batched matmuls and a softmax), which at 128-512 tokens ran 1.2-1.4x
    the fused CPU kernel's speed for a whole training step (`python -m lab bench pretrain`)."""
    return "sdpa" if torch.device(device).type == "cuda" else "eager"


@functools.cache
def compiler() -> str | None:
    """Why `torch.compile` cannot run here (no C++ compiler for inductor's CPU code), or None."""
    if torch.cuda.is_available():
        return None
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        if shutil.which(get_cpp_compiler()):
            return None
    except Exception:  # an inductor that moved its helpers: look for the usual compilers
        if shutil.which("g++") or shutil.which("clang++"):
            return None
    return "no C++ compiler (g++ or clang++) for torch.compile's CPU code"
