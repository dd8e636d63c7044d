"""Stage 05, longify: a lab BERT becomes a 4,096-token Longformer, is trained on on long documents, and
is checked for using its long context (the working version of Longformer_ZH / allenai's conversion).

Conversion: position embeddings copied out to `max_positions` (a Longformer counts positions from
`pad_token_id + 1`, so BERT's position p becomes row p + 1 + pad), Q/K/V copied into the global-
attention projections, the MLM head renamed; sliding-window attention of `attention_window` tokens,
global attention on [CLS] (which tokens are global is a parameter). Inside one window the converted
model computes exactly what BERT computes: the stage measures the largest logit difference. The stage
runs the sliding window through PyTorch's fused attention, block by block (`block_attention`).

    python -m lab.longify --run-id X [--profile P] [-p key=value ...]
"""

from __future__ import annotations

import math
import shutil
import time
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lab import runs, train, vocab
from lab.mlm import MaskedLM, PackedBatches
from lab.wwm import WholeWordMaskCollator, WordTokenizer

CODE = ("longify", "mlm", "train", "wwm")


class LongifyError(ValueError):
    """A conversion that cannot work; the message names the parameter."""


# ---------------------------------------------------------------------------------------------
# conversion


def convert(model_or_dir, *, max_positions: int = 4096, attention_window: int = 512):
    """A `LongformerForMaskedLM` computing what the BERT MLM computes, for 4,096-token inputs."""
    from transformers import AutoModelForMaskedLM, LongformerConfig, LongformerForMaskedLM

    bert = model_or_dir
    if isinstance(model_or_dir, (str, Path)):
        bert = AutoModelForMaskedLM.from_pretrained(str(model_or_dir))
    c = bert.config
    if c.model_type != "bert":
        raise LongifyError(f"longify converts BERT models; this one is a {c.model_type!r} model")
    if attention_window % 2 or attention_window < 2:
        raise LongifyError(
            f"longify.attention_window = {attention_window}: the window must be a positive even number"
        )
    if attention_window > max_positions:
        raise LongifyError(
            f"longify.attention_window = {attention_window} exceeds longify.max_positions = {max_positions}"
        )
    if max_positions < c.max_position_embeddings:
        raise LongifyError(
            f"longify.max_positions = {max_positions} is below the source model's {c.max_position_embeddings} positions"
        )
    offset = c.pad_token_id + 1  # Longformer position of the first real token
    cfg = LongformerConfig(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads, intermediate_size=c.intermediate_size,
        hidden_act=c.hidden_act, hidden_dropout_prob=c.hidden_dropout_prob,
        attention_probs_dropout_prob=c.attention_probs_dropout_prob,
        max_position_embeddings=max_positions + offset, type_vocab_size=c.type_vocab_size,
        initializer_range=c.initializer_range, layer_norm_eps=c.layer_norm_eps,
        pad_token_id=c.pad_token_id, bos_token_id=None, eos_token_id=None, sep_token_id=None,
        attention_window=[attention_window] * c.num_hidden_layers,
    )  # fmt: skip
    long = LongformerForMaskedLM(cfg)
    src = bert.state_dict()
    dst = long.state_dict()
    for key in dst:
        if key.startswith("longformer.embeddings.position_embeddings"):
            continue
        name = key.replace("longformer.", "bert.", 1)
        name = name.replace("_global.", ".")  # global Q/K/V start as copies of the local ones
        name = {
            "lm_head.dense.weight": "cls.predictions.transform.dense.weight",
            "lm_head.dense.bias": "cls.predictions.transform.dense.bias",
            "lm_head.layer_norm.weight": "cls.predictions.transform.LayerNorm.weight",
            "lm_head.layer_norm.bias": "cls.predictions.transform.LayerNorm.bias",
            "lm_head.decoder.weight": "cls.predictions.decoder.weight",
            "lm_head.decoder.bias": "cls.predictions.bias",
            "lm_head.bias": "cls.predictions.bias",
        }.get(key, name)
        dst[key] = src[name].clone()
    # positions: BERT row p -> Longformer row p + offset, the 512 rows tiled out to max_positions
    old = src["bert.embeddings.position_embeddings.weight"]  # (P, H)
    new = dst[
        "longformer.embeddings.position_embeddings.weight"
    ].clone()  # (max_positions + offset, H)
    for start in range(0, max_positions, len(old)):
        n = min(len(old), max_positions - start)
        new[offset + start : offset + start + n] = old[:n]
    dst["longformer.embeddings.position_embeddings.weight"] = new
    long.load_state_dict(dst)
    return long


# ---------------------------------------------------------------------------------------------
# sliding-window attention through PyTorch's fused attention


def block_attention(long) -> None:
    """Compute each layer's sliding-window attention block by block with
    `F.scaled_dot_product_attention`: every block of w = window/2 queries attends to the keys of
    its own and both neighbouring blocks under a band mask, plus the global tokens. The function is
    transformers' (tested against it, values and gradients), without its chunk copies and with 3w
    scores per query where its chunks compute 4w; weights and what `save_pretrained` writes are
    unchanged, and `output_attentions=True` runs transformers' own code (the viewer needs its maps).
    The model no longer pads every input to a multiple of the window (a 64-token input padded to 512
    costs eight times its own work in every layer); each layer pads only as far as its blocks need."""
    base = long.base_model
    base._pad_to_window_size = types.MethodType(_no_window_padding, base)
    for layer in base.encoder.layer:
        layer.attention.self.forward = types.MethodType(_block_forward, layer.attention.self)


def _no_window_padding(self, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                       pad_token_id):  # fmt: skip
    return 0, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds


def _pad_sequence(
    multiple: int, hidden_states, attention_mask, is_index_masked, is_index_global_attn
):
    """Pad one layer's inputs along the sequence with masked positions to a multiple of `multiple`."""
    r = -hidden_states.shape[1] % multiple
    if r:
        hidden_states = F.pad(hidden_states, (0, 0, 0, r))
        attention_mask = F.pad(attention_mask, (0, r), value=torch.finfo(attention_mask.dtype).min)
        is_index_masked = F.pad(is_index_masked, (0, r), value=True)
        is_index_global_attn = F.pad(is_index_global_attn, (0, r), value=False)
    return hidden_states, attention_mask, is_index_masked, is_index_global_attn


def _block_forward(self, hidden_states, attention_mask=None, is_index_masked=None,
                   is_index_global_attn=None, is_global_attn=None, output_attentions=False):  # fmt: skip
    length = hidden_states.shape[1]
    w, heads, d = self.one_sided_attn_window_size, self.num_heads, self.head_dim
    if output_attentions:  # transformers' code, on an input padded as it expects
        padded = _pad_sequence(2 * w, hidden_states, attention_mask, is_index_masked, is_index_global_attn)  # fmt: skip
        out = type(self).forward(self, *padded, is_global_attn, output_attentions)
        return (out[0][:, :length], out[1][:, :length]) + tuple(o[..., :length] for o in out[2:])
    hidden_states, _, pad, glob = _pad_sequence(w, hidden_states, attention_mask, is_index_masked, is_index_global_attn)  # fmt: skip
    b, t, e = hidden_states.shape
    n = t // w
    p = self.dropout if self.training else 0.0

    def around(x):  # (B, n * w, ...) -> (B, n, 3w, ...): each block with the blocks beside it
        x = F.pad(x.view(b, n, w, -1), (0, 0, 0, 0, 1, 1))
        return torch.cat([x[:, :-2], x[:, 1:-1], x[:, 2:]], 2)

    def blocks(x):  # (B, T, E) -> keys around each block: (B * n, heads, 3w, d)
        return around(x).view(b * n, 3 * w, heads, d).transpose(1, 2)

    q = self.query(hidden_states).view(b * n, w, heads, d).transpose(1, 2)
    k, v = self.key(hidden_states), self.value(hidden_states)
    kb, vb = blocks(k), blocks(v)
    # a key inside a window counts if it is real and not global (global keys come once, below);
    # padded queries (zeroed afterwards) see their whole band so that no row is empty
    keep = around(~(pad | glob)).view(b, n, 3 * w)
    i = torch.arange(w, device=k.device)[:, None]
    band = (torch.arange(3 * w, device=k.device)[None] - w - i).abs() <= w  # (w, 3w)
    allowed = band & (keep[:, :, None, :] | pad.view(b, n, w, 1))  # (B, n, w, 3w)
    if is_global_attn:
        g = int(glob.sum(1).max())
        where = glob.to(torch.uint8).argsort(dim=1, descending=True, stable=True)[:, :g]  # (B, g)
        real = glob.gather(1, where)  # (B, g): False for the slots of a row with fewer globals
        at = where[:, :, None].expand(b, g, e)

        def globals_of(x):  # (B, T, E) -> (B * n, heads, g, d), the global tokens for every block
            x = x.gather(1, at).view(b, 1, g, heads, d).expand(b, n, g, heads, d)
            return x.reshape(b * n, g, heads, d).transpose(1, 2)

        kb, vb = torch.cat([globals_of(k), kb], 2), torch.cat([globals_of(v), vb], 2)
        allowed = torch.cat([real[:, None, None, :].expand(b, n, w, g), allowed], -1)
    out = F.scaled_dot_product_attention(
        q, kb, vb, attn_mask=allowed.view(b * n, 1, w, -1), dropout_p=p
    )
    out = out.transpose(1, 2).reshape(b, t, e).masked_fill(pad[:, :, None], 0.0)
    if is_global_attn:  # global tokens attend to every real token through the global projections
        qg = self.query_global(hidden_states.gather(1, at)).view(b, g, heads, d).transpose(1, 2)
        kg = self.key_global(hidden_states).view(b, t, heads, d).transpose(1, 2)
        vg = self.value_global(hidden_states).view(b, t, heads, d).transpose(1, 2)
        og = F.scaled_dot_product_attention(
            qg, kg, vg, attn_mask=~pad[:, None, None, :], dropout_p=p
        )
        og = og.transpose(1, 2).reshape(b, g, e).to(out.dtype)
        out = out.scatter(1, at, torch.where(real[:, :, None], og, out.gather(1, at)))
    return (out[:, :length],)


def global_mask(input_ids: torch.Tensor, token_ids: list[int]) -> torch.Tensor:
    """1 where a token gets global attention (by default [CLS])."""
    return torch.isin(input_ids, torch.tensor(token_ids, device=input_ids.device)).long()


@torch.no_grad()
def equivalence(bert, long, tokenizer, text: str, global_ids: list[int]) -> float:
    """Largest |logit difference| between BERT and its conversion on `text` (inside one window)."""
    enc = tokenizer(
        text,
        return_tensors="pt",
        truncation=True,
        max_length=long.config.attention_window[0] // 2 + 1,
    )
    bert.eval()
    long.eval()
    a = bert(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
    b = long(
        input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
        global_attention_mask=global_mask(enc["input_ids"], global_ids),
    ).logits  # fmt: skip
    return float((a - b).abs().max())


# ---------------------------------------------------------------------------------------------
# long documents


def tokenize_docs(
    texts: list[str], tokenizer, segmenter
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Per document: token ids, word ids, and each token's character length (for bits per char)."""
    words = [segmenter.cut(t) for t in texts]
    ids, wids, counts = WordTokenizer(tokenizer)(words)
    pieces = tokenizer.convert_ids_to_tokens(ids.tolist())
    chars = np.array(
        [1 if p == tokenizer.unk_token else len(p.removeprefix("##")) for p in pieces],
        dtype=np.int64,
    )
    cut = np.cumsum(counts)[:-1]
    return np.split(ids, cut), np.split(wids, cut), np.split(chars, cut)


def chunk_docs(
    ids: list[np.ndarray],
    wids: list[np.ndarray],
    seq_len: int,
    cls_id: int,
    sep_id: int,
    pad_id: int,
):
    """Each document cut into [CLS] ... [SEP] pieces of `seq_len` (never across documents)."""
    room = seq_len - 2
    rows_i, rows_w = [], []
    for i, w in zip(ids, wids):
        for s in range(0, len(i), room):
            piece, wp = i[s : s + room], w[s : s + room]
            if len(piece) < 16:
                continue
            pad = room - len(piece)
            rows_i.append(np.concatenate([[cls_id], piece, [sep_id], np.full(pad, pad_id)]))
            rows_w.append(np.concatenate([[-1], wp - wp.min(), [-1], np.full(pad, -1)]))
    return np.asarray(rows_i, dtype=np.int64), np.asarray(rows_w, dtype=np.int64)


class LongBatches(PackedBatches):
    """Document chunks with global attention on the chosen tokens."""

    def __init__(self, *args, global_ids: list[int], **kwargs):
        super().__init__(*args, **kwargs)
        self.global_ids = global_ids

    def __call__(self, index: int, rank: int = 0, world: int = 1) -> dict:
        batch = super().__call__(index, rank, world)
        batch["global_attention_mask"] = global_mask(batch["input_ids"], self.global_ids)
        return batch


# ---------------------------------------------------------------------------------------------
# bits per character and the long-range probe


def fixed_masks(
    doc_ids: list[np.ndarray], doc_wids: list[np.ndarray], collator, seed: int
) -> list[np.ndarray]:
    """One fixed masking per document: the positions every model is scored on."""
    out = []
    for k, (i, w) in enumerate(zip(doc_ids, doc_wids)):
        collator.reseed([seed, k])
        batch = collator([{"input_ids": i, "word_ids": w}])
        out.append((batch["labels"][0] != -100).numpy())
    return out


@torch.no_grad()
def bits_per_char(model, doc_ids, doc_chars, masks, *, window: int, cls_id: int, sep_id: int, mask_id: int,
                  global_ids: list[int] | None = None, bf16: bool = True) -> float:  # fmt: skip
    """Σ -log2 p(true token) over the masked positions / Σ their characters. Each document is read
    in independent windows of `window` tokens (512 for BERT; the whole document, up to the
    Longformer's length, for the converted model)."""
    model.eval()
    device = next(model.parameters()).device
    total_bits = total_chars = 0.0
    room = window - 2
    for ids, chars, mask in zip(doc_ids, doc_chars, masks):
        for s in range(0, len(ids), room):
            piece, m = ids[s : s + room], mask[s : s + room]
            if not m.any():
                continue
            x = torch.tensor(
                np.concatenate([[cls_id], np.where(m, mask_id, piece), [sep_id]]), device=device
            )[None]
            kwargs = {}
            if global_ids is not None:
                kwargs["global_attention_mask"] = global_mask(x, global_ids)
            with train.autocast(device, bf16):
                logits = model(input_ids=x, **kwargs).logits[0, 1:-1][
                    torch.from_numpy(m).to(device)
                ]
            logp = F.log_softmax(logits.float(), -1)
            target = torch.tensor(piece[m], device=device)
            total_bits += float(-logp.gather(-1, target[:, None]).sum()) / math.log(2)
            total_chars += float(chars[s : s + room][m].sum())
    return total_bits / max(1.0, total_chars)


def probe_instances(
    doc_ids, doc_wids, names: list[list[int]], *, min_gap: int, limit: int
) -> list[dict]:
    """Mentions of a name whose previous mention is more than `min_gap` tokens earlier (and none in
    between): mask the mention, predict it from the context."""
    found = []
    for d, ids in enumerate(doc_ids):
        last: dict[tuple, int] = {}
        for pos in range(len(ids)):
            for name in names:
                n = len(name)
                if pos + n <= len(ids) and ids[pos] == name[0] and list(ids[pos : pos + n]) == name:
                    key = tuple(name)
                    if key in last and pos - last[key] > min_gap:
                        found.append({"doc": d, "pos": pos, "name": name, "gap": pos - last[key]})
                    last[key] = pos
        if len(found) >= limit:
            break
    return found[:limit]


@torch.no_grad()
def probe_accuracy(model, doc_ids, instances, *, window: int, right: int, cls_id: int, sep_id: int,
                   mask_id: int, global_ids: list[int] | None = None, bf16: bool = True) -> dict:  # fmt: skip
    """Top-1 accuracy on the masked name's characters, reading the `window` tokens that end `right`
    tokens after the mention."""
    model.eval()
    device = next(model.parameters()).device
    correct_chars = total_chars = whole = 0
    for inst in instances:
        ids = doc_ids[inst["doc"]]
        n = len(inst["name"])
        end = min(len(ids), inst["pos"] + n + right)
        start = max(0, end - (window - 2))
        piece = ids[start:end].copy()
        rel = inst["pos"] - start
        piece[rel : rel + n] = mask_id
        x = torch.tensor(np.concatenate([[cls_id], piece, [sep_id]]), device=device)[None]
        kwargs = {} if global_ids is None else {"global_attention_mask": global_mask(x, global_ids)}
        with train.autocast(device, bf16):
            pred = (
                model(input_ids=x, **kwargs)
                .logits[0, 1 + rel : 1 + rel + n]
                .argmax(-1)
                .cpu()
                .numpy()
            )
        hit = pred == np.asarray(inst["name"])
        correct_chars += int(hit.sum())
        total_chars += n
        whole += int(hit.all())
    return {
        "instances": len(instances),
        "char_acc": correct_chars / max(1, total_chars),
        "name_acc": whole / max(1, len(instances)),
    }


def merge_prefixed(counts):
    """Fold a three-character "name" whose first two characters are themselves a name into that
    name: jieba tags 玄德曰 ("Xuande said") and 孔明曰 as names in classical text."""
    out = counts.copy()
    for w in [w for w in counts if len(w) == 3 and w[:2] in counts]:
        out[w[:2]] += out.pop(w)
    return out


def frequent_names(texts: list[str], tokenizer, top: int = 60) -> list[list[int]]:
    """The most frequent person names (jieba POS `nr`, two or three characters) in `texts`."""
    from collections import Counter

    import jieba.posseg as pseg

    counts: Counter = Counter()
    for t in texts:
        for w, flag in pseg.cut(t):
            if flag == "nr" and 2 <= len(w) <= 3:
                counts[w] += 1
    names = []
    for w, _ in merge_prefixed(counts).most_common(top):
        ids = tokenizer(w, add_special_tokens=False)["input_ids"]
        if tokenizer.unk_token_id not in ids:
            names.append(ids)
    return names


# ---------------------------------------------------------------------------------------------
# the stage


def inputs(cfg) -> dict[str, str]:
    out = {
        s: runs.upstream(cfg.run_id, s, verify=s != "corpus")["digest"] for s in ("corpus", "wwm")
    }
    if cfg.source:
        out["source"] = runs.sha256_json(runs.hash_tree(Path(cfg.source), skip=()))
    else:
        out["pretrain"] = runs.upstream(cfg.run_id, "pretrain")["digest"]
    return out


def source_dir(cfg) -> Path:
    folder = (
        Path(cfg.source)
        if cfg.source
        else runs.upstream(cfg.run_id, "pretrain", verify=False)["dir"] / "model"
    )
    if not (folder / "config.json").exists():
        raise LongifyError(
            f"longify.source = {str(folder)!r} is not a model folder (no config.json)"
        )
    return folder


def run(cfg) -> dict:
    """Convert, check equivalence, continue pretraining on long documents, measure BPC and the probe."""
    from datasets import load_from_disk
    from transformers import AutoModelForMaskedLM

    from lab.segment import Segmenter

    stage = runs.Stage(cfg, inputs(cfg), CODE)
    if stage.cached:
        runs.echo(f"longify: cached ({stage.dir})")
        return stage.manifest
    corpus_m = runs.upstream(cfg.run_id, "corpus", verify=False)
    src = source_dir(cfg)
    bert = AutoModelForMaskedLM.from_pretrained(str(src))
    tokenizer = vocab.load(src)
    long = convert(bert, max_positions=cfg.max_positions, attention_window=cfg.attention_window)
    block_attention(long)
    global_ids = tokenizer.convert_tokens_to_ids(cfg.global_tokens)
    if tokenizer.unk_token_id in global_ids:
        raise LongifyError(
            f"longify.global_tokens = {cfg.global_tokens}: not all are tokens of the vocab"
        )
    if cfg.seq_len > cfg.max_positions:
        raise LongifyError(
            f"longify.seq_len = {cfg.seq_len} exceeds longify.max_positions = {cfg.max_positions}"
        )

    work = stage.begin()
    diff = equivalence(bert, long, tokenizer, "中国的首都是北京。" * 40, global_ids)
    runs.echo(f"converted {src.name}: max |logit difference| inside one window = {diff:.2e}")

    docs = load_from_disk(str(corpus_m["dir"] / "longdocs"))
    seg = Segmenter("jieba")
    train_docs = [t for t in docs["train"]["text"]]
    test_rows = [r for r in docs["test"] if len(r["text"]) >= cfg.min_doc_chars][: cfg.eval_docs]
    if not test_rows:
        raise LongifyError(
            f"no held-out long document has {cfg.min_doc_chars}+ characters; lower longify.min_doc_chars"
        )
    tr_ids, tr_wids, _ = tokenize_docs(train_docs, tokenizer, seg)
    te_ids, te_wids, te_chars = tokenize_docs([r["text"] for r in test_rows], tokenizer, seg)
    te_ids = [i[: cfg.max_positions - 2] for i in te_ids]
    te_wids = [w[: cfg.max_positions - 2] for w in te_wids]
    te_chars = [c[: cfg.max_positions - 2] for c in te_chars]
    specials = dict(cls_id=tokenizer.cls_token_id, sep_id=tokenizer.sep_token_id, mask_id=tokenizer.mask_token_id)  # fmt: skip
    masks = fixed_masks(
        te_ids, te_wids, WholeWordMaskCollator(tokenizer, whole_word=False), cfg.seed
    )

    t0 = time.time()
    bpc = {
        "bert_512_windows": bits_per_char(bert, te_ids, te_chars, masks, window=512, bf16=cfg.bf16, **specials),
        "longformer_before": bits_per_char(long, te_ids, te_chars, masks, window=cfg.max_positions, global_ids=global_ids, bf16=cfg.bf16, **specials),
    }  # fmt: skip
    runs.echo(f"bits per character before continued pretraining: {bpc} ({time.time() - t0:.0f}s)")

    x, w = chunk_docs(
        tr_ids,
        tr_wids,
        cfg.seq_len,
        tokenizer.cls_token_id,
        tokenizer.sep_token_id,
        tokenizer.pad_token_id,
    )
    collator = WholeWordMaskCollator(
        tokenizer, mlm_probability=cfg.mlm_probability, whole_word=cfg.masking == "wwm"
    )
    batches = LongBatches(x, w, collator, cfg.batch_size, cfg.seed, global_ids=global_ids)
    tc = train.TrainConfig(
        steps=cfg.steps, lr=cfg.lr, warmup_steps=max(1, int(cfg.warmup * cfg.steps)), bf16=cfg.bf16,
        eval_every=cfg.steps, ckpt_every=cfg.ckpt_every, seed=cfg.seed, log_every=5,
    )  # fmt: skip
    runs.echo(
        f"continued pretraining: {len(x):,} chunks of {cfg.seq_len} tokens from {len(train_docs):,} documents; "
        f"{cfg.steps:,} steps x {cfg.batch_size} = {cfg.steps * cfg.batch_size * cfg.seq_len:,} tokens"
    )
    res = train.train(MaskedLM(long), batches, tc, work / "continued", desc="longify")
    shutil.rmtree(work / "continued" / "checkpoints", ignore_errors=True)
    bpc["longformer_after"] = bits_per_char(long, te_ids, te_chars, masks, window=cfg.max_positions, global_ids=global_ids, bf16=cfg.bf16, **specials)  # fmt: skip

    sanguo = "\n".join(r["text"] for r in docs["train"] if r["source"] == "sanguo")
    names = frequent_names(
        [sanguo[:300_000]], tokenizer
    )  # a few hundred thousand characters name them
    instances = probe_instances(
        te_ids, te_wids, names, min_gap=cfg.probe_gap, limit=cfg.probe_limit
    )
    probe = {
        "bert_last_512": probe_accuracy(bert, te_ids, instances, window=512, right=cfg.probe_right, bf16=cfg.bf16, **specials),
        "longformer_whole_document": probe_accuracy(long, te_ids, instances, window=cfg.max_positions, right=cfg.probe_right, global_ids=global_ids, bf16=cfg.bf16, **specials),
    }  # fmt: skip
    probe["names"] = [tokenizer.decode(n).replace(" ", "") for n in names[:20]]
    probe["gaps"] = [i["gap"] for i in instances]
    save_dir(
        long,
        tokenizer,
        work / "model",
        cfg,
        {"bpc": bpc, "equivalence": diff, "probe": probe, "train": res},
        src,
    )
    attention = banded_attention(
        long,
        te_ids[0][: min(len(te_ids[0]), 2 * cfg.attention_window + 64)],
        global_ids,
        **specials,
    )
    np.save(work / "attention_sample.npy", attention)
    metrics = {
        "source": str(src),
        "equivalence_max_abs_diff": diff,
        "bpc": bpc,
        "probe": probe,
        "train": {k: v for k, v in res.items() if k != "eval"},
        "docs": {
            "train": len(train_docs),
            "test": len(test_rows),
            "test_tokens": int(sum(map(len, te_ids))),
        },
        "chunks": len(x),
    }
    return stage.finish({"model": "model", "attention_sample": "attention_sample.npy"}, metrics)


@torch.no_grad()
def banded_attention(
    long, ids: np.ndarray, global_ids: list[int], *, cls_id: int, sep_id: int, mask_id: int
) -> np.ndarray:
    """Head-averaged attention of the last layer as a dense (T, T) matrix for one document piece:
    the local band plus the global rows and columns."""
    from lab.explorers import dense_longformer

    long.eval()
    x = torch.tensor(np.concatenate([[cls_id], ids, [sep_id]]))[None]
    gm = global_mask(x, global_ids)
    out = long(input_ids=x, global_attention_mask=gm, output_attentions=True)
    return dense_longformer(
        out.attentions[-1][0], out.global_attentions[-1][0], gm[0], long.config
    ).mean(0)


def save_dir(long, tokenizer, folder: Path, cfg, results: dict, src: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    long.config.architectures = ["LongformerForMaskedLM"]
    long.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)  # the BERT tokenizer: Chinese Longformers stay BERT-tokenized
    b = results["bpc"]
    p = results["probe"]
    (folder / "README.md").write_text(
        f"""---
language: zh
tags:
- fill-mask
- longformer
- zh-minilab
pipeline_tag: fill-mask
---

# zh-minilab Longformer ({cfg.max_positions:,} tokens) from `{src.name}` — run `{cfg.run_id}`

A `LongformerForMaskedLM` converted from a lab BERT: position embeddings copied out to
{cfg.max_positions:,}, sliding-window attention of {cfg.attention_window} tokens, global attention on
{", ".join(cfg.global_tokens)}, global Q/K/V initialised from the local ones; then continued MLM
pretraining on long documents ({cfg.steps:,} steps at {cfg.seq_len} tokens). It uses the **BERT
tokenizer** saved with it (never a RoBERTa/Longformer BPE tokenizer).

Inside one window the converted model reproduces the BERT's logits (max |difference| {results["equivalence"]:.1e}).

| bits per character (held-out long documents) | |
|---|---|
| BERT, 512-token windows read independently | {b["bert_512_windows"]:.3f} |
| converted, before continued pretraining | {b["longformer_before"]:.3f} |
| converted, after | {b.get("longformer_after", float("nan")):.3f} |

Long-range name probe ({p["bert_last_512"]["instances"]} mentions whose previous mention is over
{cfg.probe_gap} tokens back): name accuracy BERT (last 512 tokens) {p["bert_last_512"]["name_acc"]:.3f},
this model (whole document) {p["longformer_whole_document"]["name_acc"]:.3f}.
""",
        encoding="utf-8",
    )


def headline(manifest: dict) -> dict:
    m = manifest["metrics"]
    b, p = m["bpc"], m["probe"]
    return {
        "equivalence max |Δlogit|": f"{m['equivalence_max_abs_diff']:.1e}",
        "BPC BERT-512 / before / after": f"{b['bert_512_windows']:.2f} / {b['longformer_before']:.2f} / {b['longformer_after']:.2f}",
        "long-range probe BERT / Longformer": f"{p['bert_last_512']['name_acc']:.1%} / {p['longformer_whole_document']['name_acc']:.1%} ({p['bert_last_512']['instances']} mentions)",
    }


def describe(cfg) -> dict:
    return {
        "conversion": f"{cfg.source or 'this run pretrained model'} -> Longformer, {cfg.max_positions:,} positions, window {cfg.attention_window}, global {cfg.global_tokens}",
        "continued pretraining": f"{cfg.steps:,} steps x {cfg.batch_size} x {cfg.seq_len} = {cfg.steps * cfg.batch_size * cfg.seq_len:,} tokens",
        "evaluation": f"{cfg.eval_docs} held-out documents, probe gap > {cfg.probe_gap} tokens",
    }


def main(argv: list[str] | None = None) -> int:
    from lab.cli import stage_main

    return stage_main("longify", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
