"""Model cards: every model folder the lab writes is a Hugging Face folder (config, safetensors
weights, the BERT tokenizer) with a README.md in the style of the reference models' cards: YAML
front matter, what the model is, how it was trained, what it scores. One writer, three kinds."""

from __future__ import annotations

from pathlib import Path

from lab.core import names

USAGE = """```python
from transformers import pipeline
unmasker = pipeline("fill-mask", model="path/to/this/folder")
unmasker("中国的首都是[MASK]京。")
```"""


def save(model, tokenizer, folder: Path, card: str) -> None:
    """config + safetensors weights + tokenizer + README.md, loadable by `from_pretrained`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.config.architectures = [type(model).__name__]
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)  # the BERT tokenizer, for every model (never a BPE one)
    (folder / "README.md").write_text(card, encoding="utf-8")


def card(title: str, body: str, *, tags: tuple[str, ...] = (), datasets: tuple[str, ...] = (),
         widget: bool = True) -> str:  # fmt: skip
    """Front matter, title and body of a model card."""
    front = ["---", "language: zh"]
    if datasets:
        front += ["datasets:", *(f"- {d}" for d in datasets)]
    if widget:
        front += ["widget:", '- text: "北京是[MASK]国的首都。"']
    front += ["tags:", "- fill-mask", *(f"- {t}" for t in tags), "- zh-minilab"]
    front += ["pipeline_tag: fill-mask", "---"]
    return "\n".join(front) + f"\n\n# {title}\n\n{body.strip()}\n"


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def teacher(cfg, arch, metrics: dict, sources_used: list[str]) -> str:
    """The pretrained model's card."""
    held = metrics["heldout"]
    locality = (
        f"; locality warm-up: an ALiBi-style attention bias (slope {cfg.locality_bias:g}, halved per head) "
        f"added during the first {cfg.locality_steps:.0%} of the stage and annealed linearly to zero, "
        "so the saved model is plain BERT"
        if cfg.locality_bias and cfg.locality_steps
        else ""
    )
    kept = 1 - cfg.mask_replace_prob - cfg.random_replace_prob
    masking = "whole words from jieba" if cfg.masking == "wwm" else "single tokens"
    static = "dynamic" if not cfg.dupe_factor else f"static x{cfg.dupe_factor}"
    size = markdown_table(
        ["layers", "hidden", "heads", "FFN", "vocab", "parameters", "non-embedding"],
        [[arch.layers, arch.hidden, arch.heads, arch.ffn, f"{cfg.vocab} ({metrics['vocab_size']:,})",
          f"{metrics['params']:,}", f"{metrics['non_embedding_params']:,}"]],
    )  # fmt: skip
    stages = markdown_table(
        ["stage", "steps", "tokens", "time", "tokens/s"],
        [[name, f"{r['steps']:,}", f"{r['tokens']:,}", f"{r['seconds'] / 60:.1f} min",
          f"{r['tokens_per_s']:,.0f}"] for name, r in metrics["train"].items()],
    )  # fmt: skip
    results = markdown_table(
        ["split", "masking", "masked-token accuracy", "loss", "perplexity"],
        [[split, mode, f"{held[key]['acc']:.4f}", f"{held[key]['loss']:.3f}", f"{held[key]['ppl']:.1f}"]
         for key, split, mode in (("valid", "valid", "token 15%"), ("test", "test", "token 15%"),
                                  ("valid_wwm", "valid", "whole word 15%"))],
    )  # fmt: skip
    probes = markdown_table(
        ["sentence", "predictions"],
        [[f"`{p}`", "; ".join(" ".join(f"{t} {pr:.2f}" for t, pr in slot) for slot in slots)]
         for p, slots in metrics["probes"].items()],
    )  # fmt: skip
    body = f"""
A Chinese BERT-architecture masked language model pretrained from random initialisation by
zh-minilab on its offline corpus ({", ".join(sources_used)}),
following UER-py's two-stage miniature recipe. It is a plain `BertForMaskedLM`; load it with
`BertTokenizer` / `AutoTokenizer` (never a RoBERTa tokenizer).

{size}

## How to use

{USAGE}

## Training

Masking: {cfg.masking} ({masking}), {cfg.mlm_probability:.0%} of tokens, {cfg.mask_replace_prob:.0%} [MASK] /
{cfg.random_replace_prob:.0%} random / {kept:.0%} kept, {static}.
Dropout {cfg.dropout}; position embeddings initialised {cfg.position_init}; AdamW, weight decay
{cfg.weight_decay}, warmup {cfg.warmup:.0%} then {cfg.schedule} decay; bf16 autocast: {cfg.bf16}; seed {cfg.seed}.
Stage 1: sequence length {cfg.seq_len}, batch {cfg.batch_size} x {cfg.grad_accum}, lr {cfg.lr:g}{locality}.
Stage 2: sequence length {cfg.stage2_seq_len}, batch {cfg.stage2_batch_size} x {cfg.grad_accum}, lr {cfg.stage2_lr:g}.

{stages}

## Results (held-out split, never trained on)

{results}

Fill-mask probes (top 5 with probabilities):

{probes}
"""
    title = f"zh-minilab {cfg.model} ({arch.layers}/{arch.hidden}) — run `{cfg.run_id}`"
    return card(title, body, datasets=tuple(sources_used))


def student(cfg, name: str, model, row: dict, summary: dict, init: str, teacher: str) -> str:
    """A distilled model's card: the teacher assistant or a student; `teacher` says where the
    teacher came from."""
    kind = names.title(name)
    c = model.config
    source = f"the {names.title(names.taught_by(name))}"
    t2 = " (loss x T^2)" if cfg.kd_t2 else ""
    lat, thr = row["latency_vs_teacher"], row["throughput_vs_teacher"]
    scores = markdown_table(
        ["held-out masked-token accuracy", "perplexity", "agreement with teacher top-1",
         "batch-1 latency vs teacher", "batch-32 throughput vs teacher"],
        [[f"{row['acc']:.4f}", f"{row['ppl']:.1f}", f"{row['agreement']:.3f}",
          f"{lat['ratio']:.1f}x faster [{lat['ci95'][0]:.1f}, {lat['ci95'][1]:.1f}]",
          f"{thr['ratio']:.1f}x [{thr['ci95'][0]:.1f}, {thr['ci95'][1]:.1f}]"]],
    )  # fmt: skip
    body = f"""
{c.num_hidden_layers} layers x {c.hidden_size} hidden, {c.num_attention_heads} heads, {init};
{row["params"]:,} parameters ({row["non_embedding"]:,} non-embedding); vocabulary {cfg.vocab} ({c.vocab_size:,} tokens).
Distilled from {source} with {cfg.mode} teacher outputs (top-{cfg.topk}), temperature {cfg.temperature}{t2},
loss weights KD {cfg.kd_weight}, MLM {cfg.mlm_weight}, hidden {cfg.hidden_weight}, attention {cfg.attention_weight}, top-k {cfg.topk_weight};
{summary["steps"]:,} steps, {summary["tokens"]:,} tokens, {summary["seconds"] / 60:.1f} min.
The teacher: {teacher}.

{scores}

{USAGE}
"""
    title = f"zh-minilab distilled model: {name} ({kind}) — run `{cfg.run_id}`"
    return card(title, body, tags=("distillation",))


def longformer(cfg, source_name: str, provenance: str, results: dict) -> str:
    """The converted Longformer's card; `provenance` says where the BERT came from."""
    b, p, f, g = (
        results["bpc"],
        results["probe"],
        results["receptive_field"],
        results["context_gain"],
    )
    contexts = sorted({c for cs in g["contexts"].values() for c in cs})
    curve = markdown_table(
        [f"context the {g['span']}-token spans may use", *(f"{c:,}" for c in contexts)],
        [[name, *(f"{g['curves'][name]['mean'][str(c)]['bpc']:.3f}" if str(c) in g["curves"][name]["mean"] else ""
                  for c in contexts)] for name in ("bert", "longformer")],
    )  # fmt: skip
    gain = f"Bits per character of scored spans in {g['documents']} held-out documents:\n\n{curve}"
    for x in (g.get("gain_beyond_512"), results.get("controlled_bpc")):
        if x and x.get("ci95"):
            gain += (f"\n\n{x['claim']}: {x['verdict']} ({x['difference']:+.3f} bits per character, 95% interval "
                     f"[{x['ci95'][0]:+.3f}, {x['ci95'][1]:+.3f}]; the smallest gain these documents would show 4 "
                     f"times in 5: {x['mde80']:.3f}).")  # fmt: skip
    rows = [["BERT, 512-token windows read independently", f"{b['bert_512_windows']:.3f}"]]
    if "bert_continued_512" in b:
        rows.append(
            [
                "BERT continued on the same documents for the same tokens at 512",
                f"{b['bert_continued_512']:.3f}",
            ]
        )
    rows += [["converted, before continued pretraining", f"{b['longformer_before']:.3f}"],
             ["converted, after", f"{b.get('longformer_after', float('nan')):.3f}"]]  # fmt: skip
    bpc = markdown_table(["bits per character (held-out long documents)", ""], rows)
    body = f"""
A `LongformerForMaskedLM` converted from a BERT, {provenance}: position embeddings copied out to
{cfg.max_positions:,}, sliding-window attention of {cfg.attention_window} tokens, global attention on
{", ".join(cfg.global_tokens)}, global Q/K/V initialised from the local ones; then continued MLM
pretraining on long documents ({cfg.steps:,} steps at {cfg.seq_len} tokens). It uses the **BERT
tokenizer** saved with it (never a RoBERTa/Longformer BPE tokenizer).

Inside one window the converted model reproduces the BERT's logits (max |difference| {results["equivalence"]:.1e}).

{bpc}

Receptive field: {f["layers"]} layers x {f["one_sided_window"]} tokens on each side = {f["local_reach_tokens"]:,}
tokens through the sliding windows; the global tokens ({", ".join(f["global_tokens"])}) reach every position.

{gain}

Long-range name probe ({p["bert_last_512"]["instances"]} mentions whose previous mention is over
{cfg.probe_gap} tokens back): name accuracy BERT (last 512 tokens) {p["bert_last_512"]["name_acc"]:.3f},
this model (whole document) {p["longformer_whole_document"]["name_acc"]:.3f}.
"""
    title = f"zh-minilab Longformer ({cfg.max_positions:,} tokens) from `{source_name}` — run `{cfg.run_id}`"
    return card(title, body, tags=("longformer",), widget=False)
