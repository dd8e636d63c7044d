"""What this machine can do: a device's dense matmul peak, probed once per process, the attention
kernel that is fastest for training on it, whether `torch.compile` can run here, and a C library
allocator told to keep the memory a training step frees.

MFU (model FLOPs utilisation) = model FLOPs per token (`lab.core.budget.flops_per_token`) x tokens
per second / the peak probed here. The peak is the best of a few matmuls at the shapes a miniature
model multiplies (CPU) or of large square ones (CUDA), each timed for a fraction of a second after a
warm-up: the best, because a busy moment only ever makes a probe slower.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import platform
import shutil
import time

import torch

CPU_SHAPES = ((4096, 256, 1024), (4096, 1024, 256), (2048, 512, 2048))
CUDA_SHAPES = ((8192, 8192, 8192), (4096, 4096, 4096))


@functools.cache
def matmul_peak(device: str = "cpu", dtype: str = "bfloat16", seconds: float = 0.15) -> float:
    """Dense matmul FLOP/s of `device` in `dtype` (the best of a few shapes and repeats).

    Its operands come from a generator of its own: the first training loop in a process probes
    after seeding, and a draw from the global generator there would give that loop other dropout
    masks than the same loop run second (a fine-tuning's result would depend on which worker ran
    it and what that worker ran before)."""
    dev = torch.device(device)
    dt = getattr(torch, dtype)
    cuda = dev.type == "cuda"
    own = torch.Generator(device=dev).manual_seed(0)
    best = 0.0
    for m, k, n in CUDA_SHAPES if cuda else CPU_SHAPES:
        a = torch.randn(m, k, dtype=dt, device=dev, generator=own)
        b = torch.randn(k, n, dtype=dt, device=dev, generator=own)
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


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
RETAIN = {M_TRIM_THRESHOLD: 2**31 - 1, M_MMAP_THRESHOLD: 32 << 20}  # 32 MiB: the automatic ceiling
RETAINED = "freed memory stays with the process (glibc's trim and mmap thresholds raised)"
USER_SETTINGS = (
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "MALLOC_MMAP_MAX_",
)


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc on Linux and its malloc is the one in use, else None."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    in_use = ctypes.cast(ctypes.CDLL(None).malloc, ctypes.c_void_p).value
    return libc if in_use == ctypes.cast(libc.malloc, ctypes.c_void_p).value else None


@functools.cache
def retain_freed_memory() -> str:
    """Keep the memory a CPU training step frees in this process rather than give it back to the
    system, so that fewer of the next step's pages fault in fresh; what was done, in words.

    Tensors on a CPU come from the C library's malloc. glibc returns the free top of its heap to the
    system once it exceeds a trim threshold, and maps blocks above a threshold of its own fresh from
    the system; both start small (128 KiB) and slide with what the program frees. With them the
    `cpu` teacher's compiled step still took 550-1,600 minor faults (4 KiB pages, each zeroed by the
    kernel on first touch); with both thresholds at 1 GiB, 60-140. Fixed high here (`mallopt`:
    blocks up to 32 MiB from the heap, a trim only past 2 GiB free), the step ran 1.02-1.07x the
    tokens/s in four side-by-side runs of alternated rounds (medians of the rounds' ratios; every
    run's above 1, one of them significant alone), and 1.08x in a fifth set by glibc's tunables.

    The setting holds for the rest of the process: what a loop frees stays resident until the
    process exits (a stage's kernel, a fine-tuning worker), at the size of its peak; blocks over
    32 MiB are still mapped fresh each time. Handing the memory back as each loop ended
    (`malloc_trim`) measured slower side by side (0.94-0.98x), so it is not done. glibc on Linux
    only; a process whose allocator the user chose (another malloc preloaded, glibc's malloc
    tunables, or the `MALLOC_*` variables for these thresholds, the top pad or the mmap count) is
    left as it is. PyTorch's CPU tuning guide suggests preloading jemalloc or tcmalloc for the same
    reason."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    chosen = [k for k in USER_SETTINGS if k in os.environ]
    chosen += ["GLIBC_TUNABLES"] if "glibc.malloc." in tunables else []
    if chosen:
        return f"left as the user set it ({', '.join(chosen)})"
    libc = _glibc()
    if libc is None:
        return "left as it is: not glibc's malloc on Linux"
    refused = [name for name, (param, value) in zip(("trim", "mmap"), RETAIN.items())
               if libc.mallopt(param, value) != 1]  # fmt: skip
    if refused:
        return f"not fully: mallopt refused the {' and '.join(refused)} threshold"
    return RETAINED
