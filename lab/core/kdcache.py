"""The teacher cache: a teacher's top-k log-probabilities per masked position, computed once.

The teacher runs once over statically masked data (each packed sequence in `dupe_factor` fixed
maskings) and its top-k log-probabilities are stored as fp16 values and int32 indices in
memory-mapped .npy files; students then train from them without a teacher forward.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lab.core.files import write_json
from lab.core.kd import DistillError
from lab.core.masking import static_copies
from lab.core.mlm import PackedBatches
from lab.core.progress import tqdm
from lab.core.train import autocast

MASS_AT = (8, 32)  # the teacher's probability kept by its top 8 and 32, reported beside its top k
ROWS = 256  # masked positions a time through the log-softmax (two float32 blocks: 43 MB at 21,128)


def top_logp(
    logits: torch.Tensor, k: int, *, wide: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The k largest log-probabilities of each row of logits (N, V) and their vocabulary ids, in
    descending order (ties in torch's top-k order), and the max(k, wide) largest values (the same
    tensor when wide <= k); float32, computed a block of ROWS rows at a time, so the float32
    temporaries stay 2 x ROWS x V x 4 bytes whatever N is (a batch of 64 x 128 tokens has about
    1,230 masked rows: 2 x 104 MB at V = 21,128)."""
    k = min(k, logits.shape[-1])
    wide = min(max(k, wide), logits.shape[-1])
    values = logits.new_empty(len(logits), k, dtype=torch.float32)
    ids = torch.empty(len(logits), k, dtype=torch.long, device=logits.device)
    top = values if wide == k else logits.new_empty(len(logits), wide, dtype=torch.float32)
    for s in range(0, len(logits), ROWS):
        logp = F.log_softmax(logits[s : s + ROWS].float(), -1)
        values[s : s + ROWS], ids[s : s + ROWS] = logp.topk(k, dim=-1)
        if wide > k:  # its own top-k: the stored k keep torch's order among tied values
            top[s : s + ROWS] = logp.topk(wide, dim=-1).values
    return values, ids, top


def build_cache(teacher, input_ids: np.ndarray, word_ids: np.ndarray, collator, folder: Path, *,
                dupe_factor: int, n_sequences: int, topk: int, seed: int, teacher_digest: str,
                batch_size: int = 64, bf16: bool = True) -> dict:  # fmt: skip
    """Run the teacher once over `n_sequences` statically masked sequences (each packed sequence in
    `dupe_factor` fixed maskings) and store its top-k per masked position; returns facts."""
    folder.mkdir(parents=True, exist_ok=True)
    meta_path = folder / "meta.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta["teacher"] != teacher_digest:
            raise DistillError(
                f"{folder} holds logits of another teacher (its hash {meta['teacher'][:12]} is not "
                f"{teacher_digest[:12]}): delete the folder or set another cache location"
            )
        if meta.get("complete") and meta["n_sequences"] == n_sequences and meta["topk"] == topk:
            return meta
    seeds = static_copies(len(input_ids), dupe_factor, seed)
    rows = np.arange(n_sequences) % len(input_ids)
    copies = (np.arange(n_sequences) // len(input_ids)) % dupe_factor
    L = input_ids.shape[1]
    masked_in = np.lib.format.open_memmap(
        folder / "input_ids.npy", "w+", np.int32, (n_sequences, L)
    )
    labels_out = np.lib.format.open_memmap(folder / "labels.npy", "w+", np.int32, (n_sequences, L))
    chunks_lp, chunks_idx, counts = [], [], np.zeros(n_sequences, dtype=np.int64)
    mass_sum: dict[int, float] = {}
    device = next(teacher.parameters()).device
    teacher.eval()
    for start in tqdm(range(0, n_sequences, batch_size), desc="teacher top-k cache"):
        idx = range(start, min(start + batch_size, n_sequences))
        examples = [
            {
                "input_ids": input_ids[rows[i]],
                "word_ids": word_ids[rows[i]],
                "mask_seed": int(seeds[rows[i], copies[i]]),
            }
            for i in idx
        ]
        batch = collator(examples)
        with torch.no_grad(), autocast(device, bf16):
            hidden = teacher.bert(input_ids=batch["input_ids"].to(device))[0]
            chosen = (batch["labels"] != -100).to(device)
            logits = teacher.cls(hidden[chosen])
        values, indices, top = top_logp(logits, topk, wide=max(MASS_AT))
        for k in {*MASS_AT, topk}:
            if k <= top.shape[-1]:
                mass_sum[k] = mass_sum.get(k, 0.0) + float(top[:, :k].exp().sum())
        chunks_lp.append(values.to(torch.float16).cpu().numpy())
        chunks_idx.append(indices.to(torch.int32).cpu().numpy())
        masked_in[start : start + len(idx)] = batch["input_ids"].numpy()
        labels_out[start : start + len(idx)] = batch["labels"].numpy()
        counts[start : start + len(idx)] = (batch["labels"] != -100).sum(1).numpy()
    np.save(folder / "topk_logp.npy", np.concatenate(chunks_lp))
    np.save(folder / "topk_idx.npy", np.concatenate(chunks_idx))
    np.save(folder / "offsets.npy", np.concatenate([[0], np.cumsum(counts)]))
    masked_in.flush()
    labels_out.flush()
    n_masked = int(counts.sum())
    size = sum(f.stat().st_size for f in folder.glob("*.npy") if f.name.startswith("topk"))
    tokens = int((masked_in[:] != collator.pad_id).sum())
    meta = {
        "teacher": teacher_digest,
        "n_sequences": n_sequences,
        "topk": topk,
        "dupe_factor": dupe_factor,
        "pad_id": collator.pad_id,
        "masked_positions": n_masked,
        "tokens": tokens,
        "truncation_mass": {str(k): v / max(1, n_masked) for k, v in sorted(mass_sum.items())},
        "logit_bytes": size,
        "bytes_per_million_tokens": size / max(1, tokens) * 1e6,
        "complete": True,
    }
    write_json(meta_path, meta)
    return meta


class CachedBatches:
    """Batches from a teacher cache: masked inputs, labels and the top-k rows of their masks."""

    def __init__(self, folder: Path, batch_size: int, seed: int):
        self.input_ids = np.load(folder / "input_ids.npy", mmap_mode="r")
        self.labels = np.load(folder / "labels.npy", mmap_mode="r")
        self.logp = np.load(folder / "topk_logp.npy", mmap_mode="r")
        self.idx = np.load(folder / "topk_idx.npy", mmap_mode="r")
        self.offsets = np.load(folder / "offsets.npy")
        self.pad_id = json.loads((folder / "meta.json").read_text(encoding="utf-8"))["pad_id"]
        self.batch_size, self.seed = batch_size, seed
        self._order = PackedBatches(self.input_ids, self.input_ids, None, batch_size, seed)

    def __call__(self, index: int, rank: int = 0, world: int = 1) -> dict:
        rows = np.sort(self._order.indices(index, rank, world))  # sorted: contiguous mmap reads
        ids = torch.from_numpy(np.asarray(self.input_ids[rows], dtype=np.int64))
        labels = torch.from_numpy(np.asarray(self.labels[rows], dtype=np.int64))
        spans = [np.arange(self.offsets[r], self.offsets[r + 1]) for r in rows]
        take = np.concatenate(spans) if spans else np.zeros(0, dtype=np.int64)
        return {
            "input_ids": ids,
            "attention_mask": (ids != self.pad_id).long(),
            "labels": labels,
            "topk_logp": torch.from_numpy(np.asarray(self.logp[take])),
            "topk_idx": torch.from_numpy(np.asarray(self.idx[take])),
        }
