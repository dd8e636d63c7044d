"""Fine-tuning batches: drawn at random in a seeded order (`TaskBatches`), each example a padded row
(`collate`) or several short examples to a row (`pack`, with `packed_loss` for the task model).

Packing computes what padded rows compute (each example attends only to itself, with its own
positions; the same loss over the same examples: equal in fp32, within rounding in bf16; dropout
draws its masks over other shapes) on fewer rows. In `python -m lab bench finetune --model` on the
`cpu` teacher (dropout 0) that gave 1.29x the examples per second of the same batches padded one
example to a row (3 interleaved rounds, IQR 1.27-1.29; 1.23x on the bench's default Mini), with
equal test accuracy (+0.000, 95% interval [-0.012, +0.012], 12 seeds an arm). Only a BERT running
eager or SDPA attention is packed.

Batches of similar length (`length_buckets`) pad as little, but the same fits scored lower. On
review sentiment, the `cpu` teacher fine-tuned at lr 5e-4 for 1 epoch of 1,000 examples scored 0.632
over 36 seeds against 0.648 with batches drawn at random (-0.017, 95% interval over seeds [-0.029,
-0.004]; sorting pools of 10 or 4 batches instead of 50: -0.020 and -0.019, as much); at the
evaluate stage's 2 epochs of 3,000, 0.770 against 0.781 over 12 seeds (-0.012 [-0.024, +0.001]).
transformers' Trainer, whose batches are drawn at random, scored as the random batches do (-0.001
[-0.020, +0.018] in the bench, 12 seeds an arm). So batches are drawn at random unless asked
(`evaluate.length_buckets`). Only sentiment was measured.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from lab.core import dropout

BUCKET_POOL = 50  # batches sorted together when batches are of similar length (as transformers')


def collate(examples: list[dict], pad_id: int) -> dict:
    width = max(len(e["input_ids"]) for e in examples)
    n = len(examples)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    types = torch.zeros((n, width), dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    tag = isinstance(examples[0]["labels"], list)
    labels = torch.full((n, width), -100, dtype=torch.long) if tag else None
    for b, e in enumerate(examples):
        k = len(e["input_ids"])
        ids[b, :k] = torch.tensor(e["input_ids"])
        mask[b, :k] = 1
        if "token_type_ids" in e:
            types[b, :k] = torch.tensor(e["token_type_ids"])
        if tag:
            labels[b, :k] = torch.tensor(e["labels"])
    if not tag:
        y = [e["labels"] for e in examples]
        labels = torch.tensor(y, dtype=torch.float if isinstance(y[0], float) else torch.long)
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    return batch | ({"token_type_ids": types} if "token_type_ids" in examples[0] else {})


def pack(examples: list[dict], pad_id: int) -> dict:
    """A batch with several short examples to a row, each reading only itself: rows as wide as the
    longest example, filled first fit by decreasing length. `segments` numbers each row's examples
    from 1 (0: padding), which `packed_loss` turns into block-diagonal attention; positions restart
    at each example. A sentence task's labels come in the order of `cls`, the flat positions
    (row x width + column) of the examples' first tokens; a tag task's lie as its tokens do. Where no
    two examples share a row, the batch is `collate`d instead (no mask, so fused attention keeps
    its fastest kernel).

    Each example then computes what it computes alone in a padded batch, and the loss is the same
    mean over the same examples (`tests/test_tasks.py` checks both against transformers' own heads).
    What changes is the padding: random batches of 32 reviews cut at 64 tokens are nearly always
    padded to 64, so 69% of their tokens are text; packed, 95%."""
    lengths = [len(e["input_ids"]) for e in examples]
    width = max(lengths)
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(examples)), key=lambda i: -lengths[i]):
        r = next((r for r, left in enumerate(room) if left >= lengths[i]), len(rows))
        if r == len(rows):
            rows.append([])
            room.append(width)
        rows[r].append(i)
        room[r] -= lengths[i]
    if len(rows) == len(examples):
        return collate(examples, pad_id)
    shape = (len(rows), width)
    ids = torch.full(shape, pad_id, dtype=torch.long)
    types, positions, segments = (torch.zeros(shape, dtype=torch.long) for _ in range(3))
    tag = isinstance(examples[0]["labels"], list)
    labels = torch.full(shape, -100, dtype=torch.long) if tag else None
    cls, y = [], []
    for r, members in enumerate(rows):
        at = 0
        for s, i in enumerate(members, 1):
            e, k = examples[i], lengths[i]
            ids[r, at : at + k] = torch.tensor(e["input_ids"])
            positions[r, at : at + k] = torch.arange(k)
            segments[r, at : at + k] = s
            if "token_type_ids" in e:
                types[r, at : at + k] = torch.tensor(e["token_type_ids"])
            if tag:
                labels[r, at : at + k] = torch.tensor(e["labels"])
            else:
                cls.append(r * width + at)
                y.append(e["labels"])
            at += k
    batch = {"input_ids": ids, "token_type_ids": types, "position_ids": positions,
             "segments": segments}  # fmt: skip
    if tag:
        return batch | {"labels": labels}
    dtype = torch.float if isinstance(y[0], float) else torch.long
    return batch | {"labels": torch.tensor(y, dtype=dtype), "cls": torch.tensor(cls)}


PACKED_ATTENTION = ("eager", dropout.NAME, "sdpa")  # the attentions that take a block-diagonal mask


def packed_loss(model, batch: dict) -> torch.Tensor:
    """A BERT task model's loss on a `pack`ed batch: attention kept inside each example, the
    sentence head (BERT's pooler, dropout, classifier) read at each example's first token, the
    loss of transformers' heads (cross-entropy; squared error for one regression output)."""
    attention = model.config._attn_implementation
    if attention not in PACKED_ATTENTION:
        raise ValueError(f"packed batches need one of the attentions {PACKED_ATTENTION}, not {attention!r} "
                         "(fine-tune with packed=False)")  # fmt: skip
    batch = dict(batch)
    segments, labels, cls = batch.pop("segments"), batch.pop("labels"), batch.pop("cls", None)
    inside = segments[:, None, :, None] == segments[:, None, None, :]  # (rows, 1, T, T)
    if attention != "sdpa":  # the eager attentions add their mask
        blocked = torch.finfo(torch.float32).min
        inside = torch.zeros(inside.shape, device=inside.device).masked_fill_(~inside, blocked)
    if cls is None:  # tags: the model's own head and loss read the rows as they lie
        return model(**batch, attention_mask=inside, labels=labels).loss
    hidden = model.base_model(**batch, attention_mask=inside).last_hidden_state
    first = hidden.flatten(0, 1)[cls][:, None]  # (examples, 1, hidden), as the pooler reads
    logits = model.classifier(model.dropout(model.base_model.pooler(first)))
    if model.config.num_labels == 1:
        return F.mse_loss(logits.squeeze(-1).float(), labels.float())
    return F.cross_entropy(logits, labels)


class TaskBatches:
    """Fine-tuning batches in a seeded order, each padded to its longest example or `packed`: each
    epoch shuffles, sorts pools of `pool` batches by length, cuts them into batches and shuffles the
    batches. `pool` 1 draws batches at random; larger pools give batches of similar length (little
    padding; see the module's note on what they cost). A pure function of (index, rank, world)."""

    def __init__(self, examples: list[dict], batch_size: int, seed: int, pad_id: int,
                 pool: int = 1, packed: bool = False):  # fmt: skip
        self.examples, self.batch_size, self.seed, self.pad_id, self.pool = (
            examples,
            batch_size,
            seed,
            pad_id,
            pool,
        )
        self.lay_out = pack if packed else collate
        self.lengths = np.array([len(e["input_ids"]) for e in examples])
        self.per_epoch = math.ceil(len(examples) / batch_size)
        self._order: dict[int, list[np.ndarray]] = {}

    def _batches(self, epoch: int) -> list[np.ndarray]:
        if epoch not in self._order:
            rng = np.random.default_rng([self.seed, epoch])
            perm = rng.permutation(len(self.examples))
            size = self.pool * self.batch_size
            batches = []
            for start in range(0, len(perm), size):
                chunk = perm[start : start + size]
                chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
                batches += [
                    chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)
                ]
            self._order = {epoch: [batches[i] for i in rng.permutation(len(batches))]}
        return self._order[epoch]

    def __call__(self, index: int, rank: int = 0, world: int = 1) -> dict:
        epoch, j = divmod(index * world + rank, self.per_epoch)
        return self.lay_out([self.examples[r] for r in self._batches(epoch)[j]], self.pad_id)


def text_tokens(batch: dict) -> torch.Tensor:
    """The tokens of text in a batch, packed or padded."""
    return (batch["segments"] > 0).sum() if "segments" in batch else batch["attention_mask"].sum()
