"""The arithmetic of a training budget, without running it: tokens, epochs, FLOPs, time on a named
accelerator at a stated utilisation, accelerator memory, and disk. The dry run (`lab.dryrun`) prints it.

FLOPs per trained token (the model FLOPs that MFU counts): 6 x the weights of every layer's matrices
(forward + backward: Q, K, V, the output projection, the two feed-forward matrices; biases, LayerNorm
and the pooler an MLM never uses do not multiply), attention scores and values 12 x layers x hidden x
sequence length, and the MLM head (its H x H transform and the vocabulary projection) at the masked
positions only. `tests/test_budget.py` checks it against torch's FLOP counter on a real step. Memory: fp32 weights, gradients and AdamW's two moments (16 bytes a parameter), and
activations after Korthikanti et al. (2022): per layer, per token, hidden x (34 + 5 x heads x
sequence / hidden) bytes in 16-bit precision, without recomputation.
"""

from __future__ import annotations

from dataclasses import dataclass

# Dense bf16 tensor-core peaks from NVIDIA's data sheets (without sparsity): A100 SXM 312 TFLOP/s,
# 80 GB; H100 SXM 989 TFLOP/s, 80 GB; H200 SXM 989 TFLOP/s, 141 GB.
ACCELERATORS = {"A100": (312e12, 80e9), "H100": (989e12, 80e9), "H200": (989e12, 141e9)}
MFU = 0.4  # model FLOPs utilisation the times assume: what a well-tuned BERT run reaches
# what the lab's loop reached on a CPU against its probed bf16 matmul peak, pretraining L4_H256 at 128
# tokens on 2 AVX-512 cores (`python -m lab bench pretrain`, and the cpu profile's pretrain stage)
CPU_MFU = 0.45
TOKENS_PER_CHAR = (
    0.976  # measured on the offline corpus: BERT's Chinese vocabularies cut ~1 token a char
)
MAX_EPOCHS = 40  # more passes over the same text than this, and the dry run says so
FULL_VOCAB = 21128  # the bert-base-chinese vocabulary
BYTES_PER_PARAM = 16  # fp32 weights + gradients + two AdamW moments
CHECKPOINT_BYTES_PER_PARAM = 12  # fp32 weights + the two moments
KEPT_CHECKPOINTS = 2


@dataclass(frozen=True)
class Size:
    """What the arithmetic needs to know of a model."""

    layers: int
    hidden: int
    heads: int
    params: int  # all, embeddings included
    non_embedding: int
    vocab: int
    ffn: int = 0  # feed-forward width (0: 4 x hidden)

    @property
    def matrix_weights(self) -> int:
        """The weights of one layer's matrices, times the layers: what multiplies every token."""
        return self.layers * (4 * self.hidden**2 + 2 * self.hidden * (self.ffn or 4 * self.hidden))


def vocab_size(vocab: str, compact: int) -> int:
    """Tokens in a run's vocabulary before it exists: `full` is bert-base-chinese's, `compact` the
    size the corpus stage is asked to build."""
    return FULL_VOCAB if vocab == "full" else compact


def tokens(steps: int, batch: int, seq_len: int, grad_accum: int, processes: int) -> int:
    """Tokens one training stage reads: every micro-batch of every process of every step."""
    return steps * batch * seq_len * grad_accum * processes


def flops_per_token(size: Size, seq_len: int, mask_share: float) -> float:
    """Model FLOPs of one trained token (forward + backward): see the module's docstring."""
    per_token = 6 * size.matrix_weights + 12 * size.layers * size.hidden * seq_len
    return per_token + 6 * size.hidden * (size.hidden + size.vocab) * mask_share  # the head


def train_flops(size: Size, n_tokens: int, seq_len: int, mask_share: float) -> float:
    return flops_per_token(size, seq_len, mask_share) * n_tokens


def forward_flops(size: Size, n_tokens: int, seq_len: int) -> float:
    return (2 * size.matrix_weights + 4 * size.layers * size.hidden * seq_len) * n_tokens


def hours(flops: float, processes: int, accelerator: str, mfu: float = MFU) -> float:
    peak, _ = ACCELERATORS[accelerator]
    return flops / (processes * peak * mfu) / 3600


def memory(size: Size, batch: int, seq_len: int, mask_share: float, *, extra_params: int = 0,
           window: int | None = None) -> float:  # fmt: skip
    """Peak accelerator memory of one process (bytes): the trained model's state, a frozen
    `extra_params` (an online teacher, 2 bytes a parameter in bf16), activations (attention maps
    over `window` keys for a sliding window), masked logits."""
    state = BYTES_PER_PARAM * size.params + 2 * extra_params
    keys = min(seq_len, window or seq_len)
    per_layer = seq_len * batch * size.hidden * (34 + 5 * size.heads * keys / size.hidden)
    logits = 4 * batch * seq_len * mask_share * size.vocab
    return state + size.layers * per_layer + logits


def checkpoint_disk(size: Size) -> float:
    return KEPT_CHECKPOINTS * CHECKPOINT_BYTES_PER_PARAM * size.params + 4 * size.params


def cache_disk(sequences: int, seq_len: int, mask_share: float, topk: int) -> float:
    """The teacher cache: masked inputs and labels (int32), and per masked position the top-k
    log-probabilities (fp16) and their ids (int32)."""
    return sequences * (8 * seq_len + mask_share * seq_len * topk * 6)


def gb(n: float) -> str:
    return f"{n / 1e9:,.1f} GB" if n < 1e12 else f"{n / 1e12:,.2f} TB"


def flops_text(flops: float) -> str:
    for unit, size in (("EFLOP", 1e18), ("PFLOP", 1e15), ("TFLOP", 1e12)):
        if flops >= size:
            return f"{flops / size:,.1f} {unit}"
    return f"{flops / 1e9:,.1f} GFLOP"


def duration(h: float) -> str:
    return (
        f"{h:,.1f} h" if h >= 1 else f"{h * 60:,.1f} min" if h * 60 >= 1 else f"{h * 3600:,.0f} s"
    )


def time_line(flops: float, processes: int, here: tuple[str, float] | None = None) -> str:
    """The FLOPs and the time on each named accelerator at the stated utilisation; with `here`
    (this machine's device and probed bf16 peak), the time on this machine too (one process, at
    CPU_MFU on a CPU, MFU on a GPU)."""
    times = ", ".join(f"{name} {duration(hours(flops, processes, name))}" for name in ACCELERATORS)
    line = f"{flops_text(flops)}; {times} ({processes} process(es) at {MFU:.0%} of the bf16 peak)"
    if here:
        device, peak = here
        mfu = CPU_MFU if device == "cpu" else MFU
        line += (f"; this machine ({device}, probed bf16 peak {peak / 1e9:,.0f} GFLOP/s, at {mfu:.0%} of it): "
                 f"{duration(flops / (peak * mfu) / 3600)}")  # fmt: skip
    return line


def fits(need: float) -> str:
    """Which named accelerators hold `need` bytes."""
    ok = [name for name, (_, mem) in ACCELERATORS.items() if need <= mem]
    return ", ".join(ok) if ok else "none of " + ", ".join(ACCELERATORS)


def epochs_line(n_tokens: int, corpus_tokens: int | None) -> tuple[str, bool]:
    """How many passes over the corpus a stage makes; True when that is more than MAX_EPOCHS."""
    if not corpus_tokens:
        return "epochs unknown (the corpus size is not known before it is read)", False
    e = n_tokens / corpus_tokens
    return f"{e:,.1f} epochs over {corpus_tokens:,} corpus tokens", e > MAX_EPOCHS
