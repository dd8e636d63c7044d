"""Knowledge distillation: students and layer maps (MiniRBT), weight selection, and the losses.

Soft-target KD with temperature (Hinton; TextBrewer leaves out the T^2), the hard MLM loss,
hidden-state and attention MSE through projections (online teacher only), and the top-k
cross-entropy + (1 - cosine) of roberta-wwm-ext-base-distill, all in one module the training loop
trains.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lab.core import models
from lab.core.attention import padded_uncompiled, with_bias
from lab.core.errors import LabError
from lab.core.mlm import MaskedCE

LOSSES = ("kd", "mlm", "hidden", "attention", "topk")


class DistillError(LabError, ValueError):
    """A distillation setting that cannot work; the message names the parameter."""


def uniform_map(student_layers: int, teacher_layers: int) -> list[int]:
    """Teacher layer for each student layer, spread evenly and ending at the top layer."""
    return [round((i + 1) * teacher_layers / student_layers) - 1 for i in range(student_layers)]


def check_layer_map(
    layer_map: list[int], student_layers: int, teacher_layers: int, what: str
) -> list[int]:
    if not layer_map:
        return uniform_map(student_layers, teacher_layers)
    if len(layer_map) != student_layers:
        raise DistillError(
            f"{what} has {len(layer_map)} entries; the student has {student_layers} layers"
        )
    bad = [i for i in layer_map if not 0 <= i < teacher_layers]
    if bad:
        raise DistillError(
            f"{what} names teacher layers {bad}; the teacher has layers 0..{teacher_layers - 1}"
        )
    return list(layer_map)


def student_from_teacher(teacher, layers: list[int], *, seed: int):
    """A student with the teacher's width whose layers are copies of `layers` of the teacher
    (MiniRBT's teacher-assistant initialisation: layers [0, 2, 4, 7, 9, 11] of 12)."""
    from transformers import BertForMaskedLM

    cfg = teacher.config.__class__.from_dict(teacher.config.to_dict())
    cfg.num_hidden_layers = len(layers)
    torch.manual_seed(seed)
    student = BertForMaskedLM(cfg)
    state = teacher.state_dict()
    mine = student.state_dict()
    for key in mine:
        src = key
        if ".encoder.layer." in key:
            head, rest = key.split(".encoder.layer.", 1)
            i, tail = rest.split(".", 1)
            src = f"{head}.encoder.layer.{layers[int(i)]}.{tail}"
        mine[key] = state[src].clone()
    student.load_state_dict(mine)
    return student


def _evenly(n_from: int, n_to: int) -> torch.Tensor:
    return torch.linspace(0, n_from - 1, n_to).round().long()


def select_weights(student, source, layers: list[int]) -> list[int]:
    """Initialise a narrower `student` with a selection of `source`'s weights ("weight selection",
    Xu et al. 2023, Initializing Models with Larger Ones): student layer i takes source layer
    `layers[i]`; of every weight it keeps evenly spaced residual dimensions, whole attention heads
    (evenly spaced; the head size must match) and evenly spaced feed-forward units. Returns the
    source heads kept. The student stays a plain BERT of its own shape."""
    sc, tc = student.config, source.config
    head = tc.hidden_size // tc.num_attention_heads
    if sc.hidden_size // sc.num_attention_heads != head:
        raise DistillError(
            f"weight selection keeps whole heads: the student's heads are {sc.hidden_size // sc.num_attention_heads} "
            f"wide, the teacher's {head}; use distill.student_init = random"
        )
    hid = _evenly(tc.hidden_size, sc.hidden_size)
    heads = _evenly(tc.num_attention_heads, sc.num_attention_heads)
    qkv = (heads[:, None] * head + torch.arange(head)[None]).flatten()
    ffn = _evenly(tc.intermediate_size, sc.intermediate_size)
    rules = (  # (name ending, selection per dimension of the weight / of the bias)
        ("attention.self.query", (qkv, hid)), ("attention.self.key", (qkv, hid)),
        ("attention.self.value", (qkv, hid)), ("attention.output.dense", (hid, qkv)),
        ("intermediate.dense", (ffn, hid)), ("output.dense", (hid, ffn)),
        ("transform.dense", (hid, hid)), ("LayerNorm", (hid,)), ("decoder", (slice(None), hid)),
        ("embeddings", (slice(None), hid)),
    )  # fmt: skip
    src = source.state_dict()
    mine = student.state_dict()
    for key, value in mine.items():
        if not value.is_floating_point():
            continue
        name = key
        if ".encoder.layer." in key:
            pre, rest = key.split(".encoder.layer.", 1)
            i, tail = rest.split(".", 1)
            name = f"{pre}.encoder.layer.{layers[int(i)]}.{tail}"
        w = src[name]
        stem = key.rsplit(".", 1)[0]
        for ending, dims in rules:
            if stem.endswith(ending) or (ending == "embeddings" and ".embeddings." in key):
                if key.endswith(".bias") and ending != "embeddings":
                    dims = dims[:1]
                for axis, pick in enumerate(dims):
                    if not isinstance(pick, slice):
                        w = w.index_select(axis, pick)
                break
        if w.shape != value.shape:
            raise DistillError(
                f"weight selection: {key} is {tuple(value.shape)}, selected {tuple(w.shape)}"
            )
        mine[key] = w.clone()
    student.load_state_dict(mine)
    return heads.tolist()


def new_student(preset: str, teacher, *, seed: int, dropout: float):
    return models.build(
        preset, teacher.config.vocab_size, seed=seed, max_positions=teacher.config.max_position_embeddings,
        dropout=dropout, pad_token_id=teacher.config.pad_token_id,
    )  # fmt: skip


def kd_loss(
    student_logits, teacher_logp, teacher_idx, temperature: float, t2: bool
) -> torch.Tensor:
    """Soft-target KD at temperature T over the teacher's top-k entries, as KL divergence.

    teacher_logp / teacher_idx: (N, k) log-probabilities (at T = 1) and vocab ids. Both
    distributions are renormalised over those k entries: the cache knows nothing of the rest, and
    a full-vocabulary student softmax would learn to push every token outside the teacher's top k
    (the true one too, where the teacher missed it) towards zero probability. With k = V this is
    Hinton's KD exactly. Multiplied by T^2 when `t2` (Hinton's scaling, which keeps its gradient
    size independent of T; TextBrewer omits it: github.com/airaria/TextBrewer/issues/39)."""
    gathered = student_logits.float().gather(-1, teacher_idx.long())
    return _kd(gathered, teacher_logp, temperature, t2)


def _kd(gathered, teacher_logp, temperature: float, t2: bool) -> torch.Tensor:
    """`kd_loss` from the student's logits at the teacher's k ids, (N, k) in float32."""
    log_target = F.log_softmax(teacher_logp.float() / temperature, dim=-1)
    log_student = F.log_softmax(gathered / temperature, dim=-1)
    # KL(target || student): the cross-entropy's gradient, but 0 at a perfect match, so the logged
    # value shows how far the student is (at a high T the target's entropy would swamp the CE)
    loss = (log_target.exp() * (log_target - log_student)).sum(-1).mean()
    return loss * temperature**2 if t2 else loss


def topk_loss(student_logits, teacher_logp, teacher_idx) -> torch.Tensor:
    """The roberta-wwm-ext-distill seed's loss: cross-entropy against the teacher's top-k
    distribution plus (1 - cosine) between the student's and the teacher's top-k probabilities,
    both renormalised over the k entries."""
    return _topk(student_logits.float().gather(-1, teacher_idx.long()), teacher_logp)


def _topk(gathered, teacher_logp) -> torch.Tensor:
    """`topk_loss` from the student's logits at the teacher's k ids, (N, k) in float32."""
    target = teacher_logp.float().softmax(-1)
    log_student = F.log_softmax(gathered, dim=-1)
    ce = -(target * log_student).sum(-1).mean()
    cos = F.cosine_similarity(log_student.exp(), target, dim=-1).mean()
    return ce + (1 - cos)


class Distiller(nn.Module):
    """The module the training loop trains: the student, the width projections, and the losses.

    forward(**batch) returns {"loss", and each term}. A batch holds input_ids, attention_mask,
    labels and, in cached mode, topk_logp / topk_idx rows for its masked positions (row-major).
    The MLM term, the accuracy (ties with the top logit count as right) and the student's logits at
    the cached top k come from one pass over the (N, V) logits (`mlm.MaskedCE`; compiled when
    `fused_loss`, which `train.compile_encoders` sets)."""

    def __init__(self, student, teacher=None, *, weights: dict[str, float], temperature: float, t2: bool,
                 layer_map: list[int], topk: int):  # fmt: skip
        super().__init__()
        self.student = student
        self.teacher = teacher  # None in cached mode; never trained
        if teacher is not None:
            teacher.requires_grad_(False)
            teacher.eval()
        self.weights = {k: v for k, v in weights.items() if v}
        self.temperature = temperature
        self.t2 = t2
        self.layer_map = layer_map
        self.topk = topk
        self.fused_loss = False
        hs = student.config.hidden_size
        ht = teacher.config.hidden_size if teacher is not None else hs
        n = len(layer_map) + 1  # embeddings output + mapped layers
        self.proj = nn.ModuleList(
            nn.Linear(hs, ht) if hs != ht else nn.Identity() for _ in range(n)
        )
        if teacher is None and {"hidden", "attention"} & set(self.weights):
            raise DistillError(
                "hidden-state and attention losses need the teacher online (distill.mode = online)"
            )

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # the teacher stays in eval mode (no dropout)
        return self

    def forward(self, input_ids, attention_mask=None, labels=None, topk_logp=None, topk_idx=None,
                attention_bias=None):  # fmt: skip
        want_hidden = "hidden" in self.weights
        want_attn = "attention" in self.weights
        with padded_uncompiled(self, attention_mask):
            s_out = self.student.bert(  # a locality warm-up bias reaches the student only
                input_ids=input_ids, attention_mask=with_bias(attention_mask, attention_bias),
                output_hidden_states=want_hidden, output_attentions=want_attn,
            )  # fmt: skip
        chosen = labels != -100
        target = labels[chosen]
        s_logits = self.student.cls(s_out.last_hidden_state[chosen])  # (N, V)
        cached = (  # the teacher's top k from the cache, and a term that reads them
            self.teacher is None
            and topk_idx is not None
            and bool({"kd", "topk"} & set(self.weights))
        )
        mlm, acc, gathered = MaskedCE.apply(
            s_logits, target, self.fused_loss, topk_idx.long() if cached else None
        )
        terms: dict[str, torch.Tensor] = {}
        if self.teacher is not None:
            with torch.no_grad(), padded_uncompiled(self.teacher, attention_mask):
                t_out = self.teacher.bert(
                    input_ids=input_ids, attention_mask=attention_mask,
                    output_hidden_states=want_hidden, output_attentions=want_attn,
                )  # fmt: skip
                t_logits = self.teacher.cls(t_out.last_hidden_state[chosen]).float()
                k = min(self.topk, t_logits.shape[-1])
                t_logp_full = F.log_softmax(t_logits, -1)
                topk_logp, topk_idx = t_logp_full.topk(k, dim=-1)
            if "kd" in self.weights:  # online: KD over the full vocabulary
                terms["kd"] = _kd(s_logits.float(), t_logp_full, self.temperature, self.t2)
        elif "kd" in self.weights:
            terms["kd"] = _kd(gathered, topk_logp, self.temperature, self.t2)
        if "topk" in self.weights:
            terms["topk"] = (
                _topk(gathered, topk_logp) if cached else topk_loss(s_logits, topk_logp, topk_idx)
            )
        if "mlm" in self.weights:
            terms["mlm"] = mlm
        mask = (
            attention_mask.bool()
            if attention_mask is not None
            else torch.ones_like(input_ids, dtype=torch.bool)
        )
        if want_hidden:
            pairs = [(0, 0)] + [(i + 1, t + 1) for i, t in enumerate(self.layer_map)]
            terms["hidden"] = sum(
                F.mse_loss(
                    proj(s_out.hidden_states[s][mask]).float(), t_out.hidden_states[t][mask].float()
                )
                for proj, (s, t) in zip(self.proj, pairs)
            ) / len(pairs)
        if want_attn:  # head-averaged attention maps, so student and teacher head counts may differ
            terms["attention"] = sum(
                F.mse_loss(s_out.attentions[i].float().mean(1), t_out.attentions[t].float().mean(1))
                for i, t in enumerate(self.layer_map)
            ) / len(self.layer_map)
        loss = sum(self.weights[k] * v for k, v in terms.items())
        return {"loss": loss, "acc": acc.detach(), **{k: v.detach() for k, v in terms.items()}}


def kd_sanity(log: list[dict], window: float = 0.15) -> dict:
    """Relative drop of each loss term from the first to the last `window` of training; flags a
    KD term that stays flat while the others fall (TextBrewer's #33 / #56 complaint)."""
    rows = [r for r in log if "loss" in r and "eval" not in r]
    if len(rows) < 4:
        return {"flag": False, "drops": {}}
    k = max(1, int(len(rows) * window))
    drops = {}
    for term in ("kd", "mlm", "topk", "hidden", "attention"):
        if term in rows[0]:
            a = np.mean([r[term] for r in rows[:k]])
            b = np.mean([r[term] for r in rows[-k:]])
            drops[term] = float((a - b) / max(abs(a), 1e-9))
    others = [v for t, v in drops.items() if t != "kd"]
    flag = "kd" in drops and drops["kd"] < 0.05 and bool(others) and max(others) > 0.1
    return {"flag": bool(flag), "drops": drops}
