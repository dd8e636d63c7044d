"""Stage 04, knowledge distillation: MiniRBT's two-stage recipe with TextBrewer-style losses and
the roberta-wwm-ext-distill seed's cached top-k teacher logits, on the common training loop.

  teacher ──(teacher layers copied, then distilled)──> teacher assistant ──> student   (two-stage)
  teacher ─────────────────────────────────────────────────────────────────> student   (one-stage)

Both students have the same size and the same token budget; each is trained with several seeds.
In `cached` mode a teacher runs once over statically masked data and its top-k log-probabilities
per masked position are stored (fp16 values, int32 indices, memory-mapped .npy); students then train
without a teacher forward. In `online` mode the teacher runs every step, which also allows the
hidden-state and attention losses.

    python -m lab.distill --run-id X [--profile P] [-p key=value ...]
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lab import models, runs, train, vocab
from lab.mlm import LocalityWarmup, PackedBatches, evaluate, load_packed, with_bias
from lab.wwm import WholeWordMaskCollator, static_copies

CODE = ("distill", "mlm", "train", "models", "wwm")  # modules whose changes rerun the stage
LOSSES = ("kd", "mlm", "hidden", "attention", "topk")


class DistillError(ValueError):
    """A distillation setting that cannot work; the message names the parameter."""


# ---------------------------------------------------------------------------------------------
# students and layer maps


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


# ---------------------------------------------------------------------------------------------
# losses


def kd_loss(
    student_logits, teacher_logp, teacher_idx, temperature: float, t2: bool
) -> torch.Tensor:
    """Soft-target KD at temperature T over the teacher's top-k entries, as KL divergence.

    teacher_logp / teacher_idx: (N, k) log-probabilities (at T = 1) and vocab ids. Both
    distributions are renormalised over those k entries: the cache knows nothing of the rest, and
    a full-vocabulary student softmax would learn to push every token outside the teacher's top k
    (the true one too, where the teacher missed it) towards zero probability. With k = V this is
    Hinton's KD exactly. Multiplied by T^2 when `t2` (Hinton's scaling, which keeps its gradient
    size independent of T; TextBrewer omits it, its issue #39)."""
    log_target = F.log_softmax(teacher_logp.float() / temperature, dim=-1)
    gathered = student_logits.float().gather(-1, teacher_idx.long())
    log_student = F.log_softmax(gathered / temperature, dim=-1)
    # KL(target || student): the cross-entropy's gradient, but 0 at a perfect match, so the logged
    # value shows how far the student is (at a high T the target's entropy would swamp the CE)
    loss = (log_target.exp() * (log_target - log_student)).sum(-1).mean()
    return loss * temperature**2 if t2 else loss


def topk_loss(student_logits, teacher_logp, teacher_idx) -> torch.Tensor:
    """The roberta-wwm-ext-distill seed's loss: cross-entropy against the teacher's top-k
    distribution plus (1 - cosine) between the student's and the teacher's top-k probabilities,
    both renormalised over the k entries."""
    target = teacher_logp.float().softmax(-1)
    gathered = student_logits.float().gather(-1, teacher_idx.long())
    log_student = F.log_softmax(gathered, dim=-1)
    ce = -(target * log_student).sum(-1).mean()
    cos = F.cosine_similarity(log_student.exp(), target, dim=-1).mean()
    return ce + (1 - cos)


class Distiller(nn.Module):
    """The module the training loop trains: the student, the width projections, and the losses.

    forward(**batch) returns {"loss", and each term}. A batch holds input_ids, attention_mask,
    labels and, in cached mode, topk_logp / topk_idx rows for its masked positions (row-major)."""

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
        s_out = self.student.bert(  # a locality warm-up bias reaches the student only
            input_ids=input_ids, attention_mask=with_bias(attention_mask, attention_bias),
            output_hidden_states=want_hidden, output_attentions=want_attn,
        )  # fmt: skip
        chosen = labels != -100
        s_logits = self.student.cls(s_out.last_hidden_state[chosen])  # (N, V)
        terms: dict[str, torch.Tensor] = {}
        if self.teacher is not None:
            with torch.no_grad():
                t_out = self.teacher.bert(
                    input_ids=input_ids, attention_mask=attention_mask,
                    output_hidden_states=want_hidden, output_attentions=want_attn,
                )  # fmt: skip
                t_logits = self.teacher.cls(t_out.last_hidden_state[chosen]).float()
                k = min(self.topk, t_logits.shape[-1])
                t_logp_full = F.log_softmax(t_logits, -1)
                topk_logp, topk_idx = t_logp_full.topk(k, dim=-1)
            if "kd" in self.weights:  # online: KD over the full vocabulary
                full_idx = torch.arange(t_logits.shape[-1], device=t_logits.device).expand_as(
                    t_logits
                )
                terms["kd"] = kd_loss(s_logits, t_logp_full, full_idx, self.temperature, self.t2)
        elif "kd" in self.weights:
            terms["kd"] = kd_loss(s_logits, topk_logp, topk_idx, self.temperature, self.t2)
        if "topk" in self.weights:
            terms["topk"] = topk_loss(s_logits, topk_logp, topk_idx)
        if "mlm" in self.weights:
            terms["mlm"] = F.cross_entropy(s_logits.float(), labels[chosen])
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
        acc = (s_logits.argmax(-1) == labels[chosen]).float().mean()
        return {"loss": loss, "acc": acc.detach(), **{k: v.detach() for k, v in terms.items()}}


# ---------------------------------------------------------------------------------------------
# the cache of teacher top-k logits


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
    from lab.progress import tqdm

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
        with torch.no_grad(), train.autocast(device, bf16):
            hidden = teacher.bert(input_ids=batch["input_ids"].to(device))[0]
            chosen = (batch["labels"] != -100).to(device)
            logp = F.log_softmax(teacher.cls(hidden[chosen]).float(), -1)
        probs = logp.exp()
        for k in sorted({8, 32, topk} | {topk}):
            if k <= probs.shape[-1]:
                mass_sum[k] = mass_sum.get(k, 0.0) + float(probs.topk(k, -1).values.sum())
        values, indices = logp.topk(min(topk, logp.shape[-1]), dim=-1)
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
    tokens = int((masked_in[:] != 0).sum())
    meta = {
        "teacher": teacher_digest,
        "n_sequences": n_sequences,
        "topk": topk,
        "dupe_factor": dupe_factor,
        "masked_positions": n_masked,
        "tokens": tokens,
        "truncation_mass": {str(k): v / max(1, n_masked) for k, v in sorted(mass_sum.items())},
        "logit_bytes": size,
        "bytes_per_million_tokens": size / max(1, tokens) * 1e6,
        "complete": True,
    }
    runs.write_json(meta_path, meta)
    return meta


class CachedBatches:
    """Batches from a teacher cache: masked inputs, labels and the top-k rows of their masks."""

    def __init__(self, folder: Path, batch_size: int, seed: int, pad_id: int = 0):
        self.input_ids = np.load(folder / "input_ids.npy", mmap_mode="r")
        self.labels = np.load(folder / "labels.npy", mmap_mode="r")
        self.logp = np.load(folder / "topk_logp.npy", mmap_mode="r")
        self.idx = np.load(folder / "topk_idx.npy", mmap_mode="r")
        self.offsets = np.load(folder / "offsets.npy")
        self.batch_size, self.seed, self.pad_id = batch_size, seed, pad_id
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


# ---------------------------------------------------------------------------------------------
# the stage


def inputs(cfg) -> dict[str, str]:
    out = {
        s: runs.upstream(cfg.run_id, s, verify=s != "corpus")["digest"] for s in ("corpus", "wwm")
    }
    if cfg.teacher:
        out["teacher"] = runs.sha256_json(runs.hash_tree(Path(cfg.teacher), skip=()))
    else:
        out["pretrain"] = runs.upstream(cfg.run_id, "pretrain")["digest"]
    return out


def load_teacher(cfg):
    """The teacher: this run's pretrained model, or a model folder given as `distill.teacher`."""
    from transformers import AutoModelForMaskedLM

    folder = (
        Path(cfg.teacher)
        if cfg.teacher
        else runs.upstream(cfg.run_id, "pretrain", verify=False)["dir"] / "model"
    )
    if not (folder / "config.json").exists():
        raise DistillError(
            f"distill.teacher = {str(folder)!r} is not a model folder (no config.json)"
        )
    teacher = AutoModelForMaskedLM.from_pretrained(
        str(folder), attn_implementation="eager" if cfg.attention_weight else "sdpa"
    )
    if teacher.config.model_type != "bert":
        raise DistillError(
            f"the teacher in {folder} is a {teacher.config.model_type} model; distillation here takes BERT teachers"
        )
    return teacher, folder


def check_setup(cfg, teacher, tokenizer) -> dict:
    """Everything that can be wrong with the plan, raised before any training."""
    if teacher.config.vocab_size != len(tokenizer):
        raise DistillError(
            f"the teacher's vocabulary has {teacher.config.vocab_size:,} tokens but the {cfg.vocab} vocab of "
            f"this run has {len(tokenizer):,}: distill with the vocab the teacher was trained on (distill.vocab)"
        )
    t_layers, t_hidden = teacher.config.num_hidden_layers, teacher.config.hidden_size
    s = models.arch(cfg.student)
    if s.hidden > t_hidden:
        raise DistillError(
            f"distill.student = {cfg.student} is {s.hidden} wide, wider than the teacher ({t_hidden}); the "
            "hidden-state projection maps a narrower student onto the teacher. Choose a smaller student."
        )
    t_head = t_hidden // teacher.config.num_attention_heads
    if cfg.student_init == "select" and s.hidden // s.heads != t_head:
        raise DistillError(
            f"distill.student_init = select keeps whole heads, but {cfg.student}'s heads are "
            f"{s.hidden // s.heads} wide and the teacher's {t_head}: choose a student with {t_head}-wide "
            "heads or distill.student_init = random"
        )
    plan = {"student_map": check_layer_map(cfg.layer_map, s.layers, t_layers, "distill.layer_map")}
    plan["student_init"] = cfg.student_init
    if cfg.assistant_layers or cfg.assistant_steps:
        n = len(cfg.assistant_layers) or max(1, t_layers // 2)
        plan["assistant_init"] = check_layer_map(
            cfg.assistant_layers, n, t_layers, "distill.assistant_layers"
        )
        plan["student_map_from_assistant"] = uniform_map(s.layers, n)
    return plan


def run(cfg) -> dict:
    """Teacher assistant, one-stage and two-stage students over seeds; returns the manifest."""
    stage = runs.Stage(cfg, inputs(cfg), CODE)
    if stage.cached:
        runs.echo(f"distill: cached ({stage.dir})")
        return stage.manifest
    corpus_m = runs.upstream(cfg.run_id, "corpus", verify=False)
    wwm_m = runs.upstream(cfg.run_id, "wwm", verify=False)
    tokenizer = vocab.load(corpus_m["dir"] / "vocab" / cfg.vocab)
    teacher, teacher_dir = load_teacher(cfg)
    plan = check_setup(cfg, teacher, tokenizer)
    packed = wwm_m["dir"] / "packed" / cfg.vocab / str(cfg.seq_len)
    if not packed.exists():
        raise DistillError(
            f"the wwm stage packed no {cfg.vocab} sequences of length {cfg.seq_len} ({packed})"
        )
    teacher_digest = runs.sha256_json(runs.hash_tree(teacher_dir, skip=()))

    work = stage.begin()
    train_ids, train_wids = load_packed(packed, "train")
    valid_ids, valid_wids = load_packed(packed, "valid")
    eval_ids, eval_wids = valid_ids[: cfg.eval_sequences], valid_wids[: cfg.eval_sequences]
    collator = WholeWordMaskCollator(tokenizer, seed=cfg.seed, whole_word=cfg.masking == "wwm")
    n_cache = cfg.steps * cfg.batch_size
    cache_root = Path(cfg.cache_dir) if cfg.cache_dir else work / "cache"
    t0 = time.time()

    def cache_for(model, digest, name):
        if cfg.mode != "cached":
            return None
        runs.echo(
            f"caching {name}'s top-{cfg.topk} over {n_cache:,} statically masked sequences ..."
        )
        return build_cache(
            model, train_ids, train_wids, collator, cache_root / name, dupe_factor=cfg.dupe_factor,
            n_sequences=n_cache, topk=cfg.topk, seed=cfg.seed, teacher_digest=digest, bf16=cfg.bf16,
        )  # fmt: skip

    def distill_one(student, teacher_model, layer_map, cache, out: Path, steps: int, lr: float,
                    seed: int, warm_up: bool):  # fmt: skip
        """One student through the common loop; returns its training summary. `warm_up`: start
        with the locality warm-up (lab.mlm.LocalityWarmup), for students from random init; one built
        from a larger model's weights already attends locally."""
        done = out / "done.json"
        if done.exists():
            from safetensors.torch import load_model

            load_model(student, str(out / "student.safetensors"))
            return json.loads(done.read_text())
        module = Distiller(
            student, None if cache else teacher_model,
            weights={k: getattr(cfg, f"{k}_weight") for k in LOSSES}, temperature=cfg.temperature,
            t2=cfg.kd_t2, layer_map=layer_map, topk=cfg.topk,
        )  # fmt: skip
        if cache:
            batches = CachedBatches(cache_root / cache, cfg.batch_size, seed)
        else:
            batches = PackedBatches(
                train_ids,
                train_wids,
                WholeWordMaskCollator(tokenizer, whole_word=cfg.masking == "wwm"),
                cfg.batch_size,
                seed,
            )
        if warm_up and cfg.locality_bias and cfg.locality_steps:
            batches = LocalityWarmup(
                batches, heads=student.config.num_attention_heads, slope=cfg.locality_bias,
                steps=int(cfg.locality_steps * steps),
            )  # fmt: skip
        tc = train.TrainConfig(
            steps=steps, lr=lr, warmup_steps=max(1, int(cfg.warmup * steps)), bf16=cfg.bf16,
            eval_every=cfg.eval_every, ckpt_every=cfg.ckpt_every, seed=seed, weight_decay=0.01,
        )  # fmt: skip
        res = train.train(
            module, batches, tc, out,
            evaluate=lambda m: evaluate(m.student, eval_ids, eval_wids, tokenizer, seed=cfg.seed),
            desc=f"distill {out.name}",
        )  # fmt: skip
        from safetensors.torch import save_model

        save_model(student, str(out / "student.safetensors"))
        runs.write_json(done, res)
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
        return res

    caches = {}
    caches["teacher"] = cache_for(teacher, teacher_digest, "teacher")
    summaries: dict[str, dict] = {}
    trained: dict[str, object] = {}

    assistant = None
    if "assistant_init" in plan:
        assistant = student_from_teacher(teacher, plan["assistant_init"], seed=cfg.seed)
        summaries["assistant"] = distill_one(
            assistant, teacher, plan["assistant_init"],
            "teacher" if caches["teacher"] else None, work / "assistant", cfg.assistant_steps, cfg.assistant_lr, cfg.seed,
            warm_up=False,  # its layers come from the teacher
        )  # fmt: skip
        trained["assistant"] = assistant
        a_digest = runs.sha256_json(
            {"assistant": summaries["assistant"], "teacher": teacher_digest}
        )
        caches["assistant"] = cache_for(assistant, a_digest, "assistant")

    for k in range(cfg.seeds):
        seed = cfg.seed + k
        s1 = new_student(cfg.student, teacher, seed=seed, dropout=cfg.dropout)
        if cfg.student_init == "select":
            plan["heads_kept"] = select_weights(s1, teacher, plan["student_map"])
        summaries[f"one-stage-s{seed}"] = distill_one(
            s1, teacher, plan["student_map"], "teacher" if caches["teacher"] else None,
            work / "students" / f"one-stage-s{seed}", cfg.steps, cfg.lr, seed, warm_up=cfg.student_init == "random",
        )  # fmt: skip
        trained[f"one-stage-s{seed}"] = s1
        if assistant is not None:
            s2 = new_student(cfg.student, teacher, seed=seed, dropout=cfg.dropout)
            if cfg.student_init == "select":
                select_weights(s2, assistant, plan["student_map_from_assistant"])
            summaries[f"two-stage-s{seed}"] = distill_one(
                s2, assistant, plan["student_map_from_assistant"], "assistant" if caches.get("assistant") else None,
                work / "students" / f"two-stage-s{seed}", cfg.steps, cfg.lr, seed, warm_up=cfg.student_init == "random",
            )  # fmt: skip
            trained[f"two-stage-s{seed}"] = s2

    runs.echo(
        f"distillation trained {len(trained)} models in {(time.time() - t0) / 60:.1f} min; evaluating ..."
    )
    table = compare(cfg, teacher, trained, tokenizer, valid_ids, valid_wids)
    for name, model in trained.items():
        save_model_dir(
            model, tokenizer, work / "models" / name, cfg, name, table[name], summaries[name], plan
        )
    metrics = {
        "plan": plan,
        "models": table,
        "summary": summarize(table, cfg.seeds),
        "caches": {k: v for k, v in caches.items() if v},
        "kd_sanity": {
            name: kd_sanity(train.read_log(_log_dir(work, name) / "metrics.jsonl"))
            for name in trained
        },
        "train": summaries,
    }
    if not cfg.keep_cache and not cfg.cache_dir:
        shutil.rmtree(work / "cache", ignore_errors=True)
    return stage.finish({"models": "models"}, metrics)


def _init_text(cfg, plan: dict, name: str) -> str:
    """How a student's weights started, for its model card."""
    if cfg.student_init == "select":
        two = name.startswith("two-stage")
        layers = plan["student_map_from_assistant" if two else "student_map"]
        source = "assistant" if two else "teacher"
        return f"initialised by weight selection from the {source}'s layers {layers} (heads {plan.get('heads_kept')})"
    warm = cfg.locality_bias and cfg.locality_steps
    return "initialised randomly" + (
        f", locality warm-up over {cfg.locality_steps:.0%} of the steps" if warm else ""
    )


def _log_dir(work: Path, name: str) -> Path:
    return work / "assistant" if name == "assistant" else work / "students" / name


@torch.no_grad()
def compare(cfg, teacher, trained: dict, tokenizer, ids: np.ndarray, wids: np.ndarray) -> dict:
    """Held-out accuracy, perplexity, agreement with the teacher's top-1, size and speed, per model."""
    collator = WholeWordMaskCollator(tokenizer, seed=cfg.seed, whole_word=False)
    n = min(len(ids), cfg.eval_sequences * 4)
    batches = []
    for start in range(0, n, 64):
        collator.reseed([cfg.seed, start])
        batches.append(
            collator(
                [
                    {"input_ids": ids[i], "word_ids": wids[i]}
                    for i in range(start, min(start + 64, n))
                ]
            )
        )

    def top1(model):
        out = []
        for b in batches:
            chosen = b["labels"] != -100
            hidden = model.bert(input_ids=b["input_ids"], attention_mask=b["attention_mask"])[0]
            out.append(model.cls(hidden[chosen]).argmax(-1))
        return torch.cat(out)

    teacher.eval()
    t_top1 = top1(teacher)
    t_speed = inference_ms(teacher)
    rows = {
        "teacher": _row(
            teacher,
            evaluate(teacher, ids[:n], wids[:n], tokenizer, seed=cfg.seed),
            1.0,
            t_speed,
            t_speed,
        )
    }
    for name, model in trained.items():
        model.eval()
        agree = float((top1(model) == t_top1).float().mean())
        rows[name] = _row(
            model,
            evaluate(model, ids[:n], wids[:n], tokenizer, seed=cfg.seed),
            agree,
            inference_ms(model),
            t_speed,
        )
    return rows


def _row(model, ev: dict, agreement: float, ms: float, teacher_ms: float) -> dict:
    c = models.count(model)
    return {
        "params": c["total"],
        "non_embedding": c["non_embedding"],
        "acc": ev["acc"],
        "ppl": ev["ppl"],
        "agreement": agreement,
        "ms_per_batch": ms,
        "speedup": teacher_ms / ms,
    }


@torch.no_grad()
def inference_ms(model, batch: int = 32, length: int = 128, repeats: int = 3) -> float:
    """Forward time of a (batch, length) input in milliseconds, best of `repeats`."""
    x = torch.randint(5, model.config.vocab_size, (batch, length))
    model.eval()
    model.bert(input_ids=x)  # warm up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.bert(input_ids=x)
        best = min(best, time.perf_counter() - t0)
    return best * 1000


def summarize(table: dict, seeds: int) -> dict:
    """Mean and spread over seeds for the one-stage and two-stage students."""
    out = {}
    for kind in ("one-stage", "two-stage"):
        rows = [v for k, v in table.items() if k.startswith(kind)]
        if not rows:
            continue
        accs = np.array([r["acc"] for r in rows])
        out[kind] = {
            "seeds": len(rows),
            "acc_mean": float(accs.mean()),
            "acc_spread": float(accs.max() - accs.min()) if len(rows) > 1 else 0.0,
            "acc_std": float(accs.std(ddof=1)) if len(rows) > 1 else 0.0,
            "ppl_mean": float(np.mean([r["ppl"] for r in rows])),
            "agreement_mean": float(np.mean([r["agreement"] for r in rows])),
            "relative_to_teacher": float(accs.mean() / table["teacher"]["acc"]),
            "speedup": float(np.mean([r["speedup"] for r in rows])),
            "non_embedding_ratio": rows[0]["non_embedding"] / table["teacher"]["non_embedding"],
        }
    return out


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


def save_model_dir(
    model, tokenizer, folder: Path, cfg, name: str, row: dict, summary: dict, plan: dict
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    model.config.architectures = ["BertForMaskedLM"]
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    kind = "teacher assistant" if name == "assistant" else f"{name.split('-s')[0]} student"
    a = models.arch(cfg.student) if name != "assistant" else None
    init = _init_text(cfg, plan, name)
    arch_line = (
        f"{a.layers} layers x {a.hidden} hidden, {a.heads} heads, {init}" if a
        else f"{model.config.num_hidden_layers} layers x {model.config.hidden_size} hidden, initialised from teacher layers {plan.get('assistant_init')}"
    )  # fmt: skip
    (folder / "README.md").write_text(
        f"""---
language: zh
tags:
- fill-mask
- distillation
- zh-minilab
pipeline_tag: fill-mask
widget:
- text: "北京是[MASK]国的首都。"
---

# zh-minilab distilled model: {name} ({kind}) — run `{cfg.run_id}`

{arch_line}; {row["params"]:,} parameters ({row["non_embedding"]:,} non-embedding).
Distilled {"from the teacher assistant" if name.startswith("two-stage") else "from the teacher"} with
{cfg.mode} teacher outputs (top-{cfg.topk}), temperature {cfg.temperature}{" (loss x T^2)" if cfg.kd_t2 else ""},
loss weights KD {cfg.kd_weight}, MLM {cfg.mlm_weight}, hidden {cfg.hidden_weight}, attention {cfg.attention_weight}, top-k {cfg.topk_weight};
{summary["steps"]:,} steps, {summary["tokens"]:,} tokens, {summary["seconds"] / 60:.1f} min.

| held-out masked-token accuracy | perplexity | agreement with teacher top-1 | speed-up vs teacher |
|---|---|---|---|
| {row["acc"]:.4f} | {row["ppl"]:.1f} | {row["agreement"]:.3f} | {row["speedup"]:.1f}x |

```python
from transformers import pipeline
pipeline("fill-mask", model="path/to/this/folder")("中国的首都是[MASK]京。")
```
""",
        encoding="utf-8",
    )


def headline(manifest: dict) -> dict:
    m = manifest["metrics"]
    out = {}
    for kind, s in m["summary"].items():
        spread = f" ± {s['acc_std']:.1%}" if s["seeds"] > 1 else ""
        out[f"{kind} student accuracy"] = (
            f"{s['acc_mean']:.1%}{spread} ({s['relative_to_teacher']:.0%} of teacher, {s['speedup']:.1f}x faster)"
        )
    out["teacher accuracy"] = f"{m['models']['teacher']['acc']:.1%}"
    if "teacher" in m["caches"]:
        out[f"top-{manifest['params']['topk']} truncation mass"] = (
            f"{m['caches']['teacher']['truncation_mass'][str(manifest['params']['topk'])]:.3f}"
        )
    return out


def describe(cfg) -> dict:
    s = models.arch(cfg.student)
    return {
        "student": f"{cfg.student} ({s.layers} x {s.hidden}), {cfg.seeds} seed(s), {cfg.steps:,} steps x {cfg.batch_size} x {cfg.seq_len}",
        "teacher assistant": f"teacher layers {cfg.assistant_layers or 'uniform'}, {cfg.assistant_steps:,} steps"
        if cfg.assistant_steps
        else "none (one-stage only)",
        "losses": ", ".join(
            f"{k} {getattr(cfg, k + '_weight')}" for k in LOSSES if getattr(cfg, k + "_weight")
        ),
        "teacher outputs": f"{cfg.mode}, top-{cfg.topk}, dupe factor {cfg.dupe_factor}",
    }


def main(argv: list[str] | None = None) -> int:
    from lab.cli import stage_main

    return stage_main("distill", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
