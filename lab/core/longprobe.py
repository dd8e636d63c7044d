"""The long-document task read by a linear probe on frozen encoders: the form of the task a CPU can
afford inside the `cpu` hour.

Fine-tuning whole models on 2,048-token documents takes about an hour of a 2-core CPU by itself
(eight runs of 1.6 M tokens each at 1.5-3.9 K tokens/s), while one frozen forward pass over the same
documents takes about a minute and a half. So each encoder reads every document once; its last
hidden states, normalised (no learned scale), feed one linear layer that tags each token with the
topic of the headline it belongs to, or with "none". The tagger learns on the training documents,
where the task's builder knows the headline's tokens; on a test document it reads every token the
encoder produced and answers the topic it finds most probable at any one token.

What this measures: whether the frozen states an encoder computes at the needle carry its topic,
for a linear reader that also has to pick the needle out of the haystack. The reader does the
searching (its maximum over tokens), so the encoder need not carry anything across the document;
[CLS] and [SEP] never vote (the Longformer's [CLS] attends to every token). BERT reads the first
512 tokens, so past them it can only guess; the Longformer's positions past 512 start as copies of
BERT's 512 rows, tiled, and only its continued pretraining (100 steps at 2,048 tokens on `cpu`) has
trained them since: whether its states there still carry the topic is what accuracy by needle
position shows. What it does not measure: a model fine-tuned to find the needle
(`evaluate.longdoc_method = finetune`, as the gpu profile runs it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lab.core.finetune import with_global
from lab.core.progress import tqdm
from lab.core.taskbatches import collate
from lab.core.train import autocast

BACKGROUND_PER_DOC = 64  # tokens of each training document tagged "none", drawn at random
LR, EPOCHS, BATCH_TOKENS = 3e-3, 20, 1024  # fixed in advance: the probe has no selection step


@dataclass
class Document:
    """One document as an encoder reads it: its ids (cut to the encoder's reach), its label, and
    the tokens of its needle that lie inside those ids ([start, end), empty when past the reach)."""

    ids: list[int]
    label: int
    needle: tuple[int, int]


def documents(rows: list[dict], tokenizer, reach: int) -> list[Document]:
    """The task's rows as `reach`-token inputs ([CLS] text [SEP]) with each needle's token span."""
    cut = reach - 2
    out = []
    for r in rows:
        before = len(_ids(tokenizer, r["text"][: r["needle_at"]]))
        after = len(_ids(tokenizer, r["text"][: r["needle_at"] + r["needle_chars"]]))
        ids = _ids(tokenizer, r["text"])[:cut]
        span = (1 + min(before, cut), 1 + min(after, cut))
        out.append(
            Document([tokenizer.cls_token_id, *ids, tokenizer.sep_token_id], r["label"], span)
        )
    return out


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]


@torch.no_grad()
def encode(encoder, docs: list[Document], *, pad_id: int, batch: int, bf16: bool, desc: str):
    """Yield (documents, normalised last hidden states [b, t, d] in float32, mask [b, t]) batch by
    batch: the states are never all held at once (4,000 documents of 4,096 tokens would not fit)."""
    encoder.eval()
    device = next(encoder.parameters()).device
    for i in tqdm(range(0, len(docs), batch), desc=desc, unit="batch"):
        part = docs[i : i + batch]
        inputs = collate([{"input_ids": d.ids, "labels": d.label} for d in part], pad_id)
        del inputs["labels"]
        mask = inputs["attention_mask"].bool()
        # a Longformer reads with global attention on [CLS], as longify trained it
        inputs = with_global(encoder, {k: v.to(device) for k, v in inputs.items()})
        with autocast(device, bf16):
            h = encoder(**inputs).last_hidden_state
        yield part, F.layer_norm(h.float(), h.shape[-1:]).cpu(), mask


def training_tokens(
    batches, *, classes: int, draws: int, seed: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """For each of `draws` probes, its training tokens: from each training document every needle
    token it shows (labelled with its topic) and `BACKGROUND_PER_DOC` other tokens drawn for that
    probe, neither special nor padding nor needle (labelled `classes`, "none"). Only these copies
    outlive the batch (a slice would keep the whole batch's states alive)."""
    rng = np.random.default_rng(seed)
    needles, labels, background = [], [], [[] for _ in range(draws)]
    for part, h, mask in batches:
        for j, d in enumerate(part):
            a, b = d.needle
            others = np.setdiff1d(np.arange(1, int(mask[j].sum()) - 1), np.arange(a, b))
            needles.append(h[j, a:b].clone())
            labels.append(torch.full((b - a,), d.label))
            for k in range(draws):
                pick = rng.choice(others, size=min(BACKGROUND_PER_DOC, len(others)), replace=False)
                background[k].append(h[j, torch.as_tensor(pick)])  # indexing by a tensor copies
    x, y = torch.cat(needles), torch.cat(labels)
    out = []
    for drawn in background:
        none = torch.cat(drawn)
        out.append((torch.cat([x, none]), torch.cat([y, torch.full((len(none),), classes)])))
    return out


def fit(x: torch.Tensor, y: torch.Tensor, *, classes: int, seed: int) -> torch.nn.Linear:
    """The linear tagger (topics + "none") by AdamW on the training tokens; `seed` sets its
    initialisation and the order of its batches."""
    torch.manual_seed(seed)
    head = torch.nn.Linear(x.shape[1], classes + 1)
    opt = torch.optim.AdamW(head.parameters(), lr=LR, weight_decay=0.01)
    order = torch.Generator().manual_seed(seed)
    for _ in range(EPOCHS):
        for idx in torch.randperm(len(y), generator=order).split(BATCH_TOKENS):
            loss = F.cross_entropy(head(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return head.eval()


@torch.no_grad()
def answers(heads: list[torch.nn.Linear], batches, *, classes: int) -> list[list[int]]:
    """Each head's answer for each document: the topic with the highest log-probability at any
    text token the encoder read (not [CLS], [SEP] or padding: the heads never learned them)."""
    out: list[list[int]] = [[] for _ in heads]
    for _, h, mask in batches:
        text = mask.clone()
        text[:, 0] = False
        text[torch.arange(len(text)), mask.sum(1) - 1] = False
        for k, head in enumerate(heads):
            logp = head(h).log_softmax(-1)[..., :classes]
            best = logp.masked_fill(~text[..., None], -torch.inf).amax(1)
            out[k] += best.argmax(-1).tolist()
    return out


def outcomes(encoder, train: list[Document], test: list[Document], *, classes: int, seeds: int, seed: int,
             pad_id: int, batch: int, bf16: bool, name: str) -> list[list[float]]:  # fmt: skip
    """Per probe seed, each test document's outcome ([1.0] correct, [0.0] not): the encoder reads the
    training documents once, `seeds` taggers learn (each its own initialisation, batch order and
    background tokens), and all of them read the test documents in one more pass."""
    drawn = training_tokens(
        encode(
            encoder, train, pad_id=pad_id, batch=batch, bf16=bf16, desc=f"{name}: train documents"
        ),
        classes=classes,
        draws=seeds,
        seed=seed,
    )
    heads = [fit(x, y, classes=classes, seed=seed + k) for k, (x, y) in enumerate(drawn)]
    got = answers(
        heads,
        encode(
            encoder, test, pad_id=pad_id, batch=batch, bf16=bf16, desc=f"{name}: test documents"
        ),
        classes=classes,
    )
    return [[[float(p == d.label)] for p, d in zip(g, test)] for g in got]
