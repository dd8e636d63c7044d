"""Figures for the stage notebooks, drawn from artifacts only.

`show(fig)` puts two renderings of a plotly figure in one output: the plotly mimetype that
JupyterLab draws live, and HTML (no CDN, no MathJax) that nbconvert keeps in the offline report.
Under papermill, plotly's default renderer stores only the mimetype, which nbconvert drops: the
figure would be missing from the report. In batch runs the HTML leaves plotly.js out (the report
folder holds it once, `lab.reports`); interactively it is embedded once per notebook.
"""

from __future__ import annotations

import html
import os

import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots

_plotlyjs_sent = False
TEMPLATE = "plotly_white"


def batch() -> bool:
    """True when no frontend keeps widget state (`python -m lab run` sets ZH_MINILAB_BATCH)."""
    return bool(os.environ.get("ZH_MINILAB_BATCH"))


def show(fig: go.Figure | str) -> None:
    """Display a figure live in JupyterLab and as embedded HTML in executed notebooks; a figure
    function that had too little to draw returns a line saying so, shown as it is."""
    global _plotlyjs_sent
    from IPython.display import HTML, display

    if isinstance(fig, str):
        display(HTML(f"<p><em>{html.escape(fig)}</em></p>"))
        return
    fig.update_layout(template=TEMPLATE)
    page = pio.to_html(
        fig,
        include_plotlyjs=not (_plotlyjs_sent or batch()),
        full_html=False,
        include_mathjax=False,
        config={"displaylogo": False},
    )
    _plotlyjs_sent = True
    display({"application/vnd.plotly.v1+json": fig.to_plotly_json(), "text/html": page}, raw=True)


def _interval_line(fig: go.Figure, name: str, x: list, y: list, ci: list) -> None:
    """A line with markers and asymmetric error bars from (low, high) pairs."""
    fig.add_scatter(x=x, y=y, name=name, mode="lines+markers", error_y={
        "type": "data", "symmetric": False, "array": [hi - v for (_, hi), v in zip(ci, y)],
        "arrayminus": [v - lo for (lo, _), v in zip(ci, y)]})  # fmt: skip


# ---------------------------------------------------------------------------------------------
# 01 corpus


def corpus_sources(stats: dict) -> go.Figure:
    per = stats["per_source"]
    names = list(per["chars"])
    fig = make_subplots(rows=1, cols=2, subplot_titles=("characters", "documents"))
    fig.add_bar(x=names, y=[per["chars"][n] for n in names], row=1, col=1, name="characters")
    fig.add_bar(x=names, y=[per["documents"][n] for n in names], row=1, col=2, name="documents")
    fig.update_layout(title="Corpus size per source (all splits, after cleaning)", showlegend=False)
    return fig


def corpus_lengths(stats: dict) -> go.Figure:
    fig = go.Figure()
    for source, h in stats["length_histogram"].items():
        mids = [(a + b) / 2 for a, b in zip(h["edges"][:-1], h["edges"][1:])]
        fig.add_scatter(
            x=mids, y=h["counts"], mode="lines+markers", name=f"{source} (median {h['median']:.0f})"
        )
    fig.update_xaxes(type="log", title="document length (characters)")
    fig.update_yaxes(title="documents (train split)")
    fig.update_layout(title="Document lengths per source")
    return fig


def corpus_char_profile(stats: dict) -> go.Figure:
    keys = [
        ("fullwidth_share", "full-width"),
        ("traditional_share", "Traditional"),
        ("non_cjk_share", "non-CJK"),
    ]
    fig = go.Figure()
    for when in ("before", "after"):
        prof = stats["char_profile"][when]
        fig.add_bar(
            name=f"{when} cleaning", x=[k[1] for k in keys], y=[100 * prof[k[0]] for k in keys]
        )
    fig.update_yaxes(title="% of characters")
    fig.update_layout(title="Character classes before and after cleaning", barmode="group")
    return fig


def corpus_top_chars(stats: dict, n: int = 40) -> go.Figure:
    top = stats["top_chars"][:n]
    fig = go.Figure(go.Bar(x=[c if c.strip() else repr(c) for c, _ in top], y=[k for _, k in top]))
    fig.update_layout(title=f"The {len(top)} most frequent characters (train split)")
    fig.update_yaxes(title="count")
    return fig


# ---------------------------------------------------------------------------------------------
# 02 whole-word masking


def segmentation_errors(quality: dict) -> go.Figure:
    rows = quality["missed_by_type_and_tag"]
    fig = go.Figure()
    for kind in ("merged", "split", "crossing"):
        sub = [r for r in rows if r["type"] == kind]
        fig.add_bar(name=kind, x=[r["tag"] or "?" for r in sub], y=[r["count"] for r in sub])
    fig.update_layout(
        title="Gold words the segmenter missed, by type and by the gold word's POS tag",
        barmode="group",
        xaxis_title="People's Daily POS tag (nr person, t time, m numeral, ns place, ...)",
        yaxis_title="gold words",
    )
    return fig


def mask_shares(stats: dict) -> go.Figure:
    fig = make_subplots(
        rows=1,
        cols=3,
        subplot_titles=("mask rate", "what chosen words become", "masked word length"),
    )
    for mode, name in (("wwm", "whole word"), ("token", "token-level")):
        s = stats[mode]
        fig.add_bar(x=[name], y=[100 * s["mask_rate"]], name=name, row=1, col=1, showlegend=False)
        fig.add_bar(
            x=list(s["shares"]), y=[100 * v for v in s["shares"].values()], name=name, row=1, col=2
        )
        counts = s["word_length_counts"]
        total = max(1, sum(counts))
        fig.add_bar(
            x=[str(i + 1) for i in range(len(counts))], y=[100 * c / total for c in counts],
            name=name, row=1, col=3, showlegend=False,
        )  # fmt: skip
    fig.update_yaxes(title_text="%", row=1, col=1)
    fig.update_xaxes(title_text="tokens per masked word", row=1, col=3)
    fig.update_layout(title="Masking statistics on the valid split", barmode="group")
    return fig


def builtin_vs_ours(stats: dict) -> go.Figure:
    fig = go.Figure()
    fig.add_histogram(
        x=stats["builtin"]["per_sequence_rate"], name="transformers whole_word_mask=True",
        xbins={"start": 0, "end": 1.0001, "size": 0.025},
    )  # fmt: skip
    fig.add_histogram(
        x=stats["ours_on_sentences"]["per_sequence_rate"], name="lab WholeWordMaskCollator",
        xbins={"start": 0, "end": 1.0001, "size": 0.025},
    )  # fmt: skip
    fig.update_layout(
        title="Share of each sentence's tokens chosen for masking (same sentences, target 15%)",
        barmode="overlay", xaxis_title="share of the sentence's tokens", yaxis_title="sentences",
    )  # fmt: skip
    fig.update_traces(opacity=0.65)
    return fig


# ---------------------------------------------------------------------------------------------
# 03 pretraining


def training_curves(logs: dict[str, list[dict]], title: str = "Pretraining") -> go.Figure | str:
    """Train loss / masked-token accuracy and held-out accuracy / perplexity against tokens seen;
    `logs` maps a run or stage name to its metrics.jsonl rows (tokens continue across stages). With
    fewer than two logged points there is no curve: a line says so."""
    points = sum(1 for rows in logs.values() for r in rows if "loss" in r and "eval" not in r)
    if points < 2:
        return f"{title}: {points} logged point{'s' * (points != 1)}, too few for a curve"
    fig = make_subplots(
        rows=1,
        cols=3,
        subplot_titles=("training loss", "masked-token accuracy", "held-out perplexity"),
    )
    offset = 0
    for name, rows in logs.items():
        train_rows = [r for r in rows if "loss" in r and "eval" not in r]
        evals = [r for r in rows if "eval" in r]
        x = [(r["tokens"] + offset) / 1e6 for r in train_rows]
        ex = [(r["tokens"] + offset) / 1e6 for r in evals]
        for xs, ys, label, col, mode, extra in (
            (x, [r["loss"] for r in train_rows], "train loss", 1, "lines", {}),
            (x, [r.get("acc") for r in train_rows], "train", 2, "lines", {"opacity": 0.5}),
            (ex, [r["eval"]["acc"] for r in evals], "held-out", 2, "lines+markers", {}),
            (ex, [r["eval"]["ppl"] for r in evals], "held-out ppl", 3, "lines+markers", {}),
        ):
            fig.add_scatter(x=xs, y=ys, name=f"{name} {label}", row=1, col=col, mode=mode, **extra)
        if rows and name.startswith("stage"):
            offset += rows[-1]["tokens"]
    fig.update_xaxes(title_text="tokens seen (millions)")
    fig.update_yaxes(type="log", row=1, col=3)
    fig.update_layout(title=title, height=420)
    return fig


def attention_offsets(info: dict) -> go.Figure:
    """Heatmap: each head's mean attention at relative offsets, as a multiple of uniform attention."""
    rows = info["rows"]
    z = [[w / info["uniform"] for w in r["weights"]] for r in rows]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=info["offsets"],
            y=[f"layer {r['layer']} head {r['head']}" for r in rows],
            colorscale="Blues",
            colorbar={"title": "× uniform"},
            hovertemplate="%{y}, offset %{x}: %{z:.1f}× uniform<extra></extra>",
        )
    )
    fig.update_layout(
        title="Where each head looks: mean attention by relative offset (held-out text)",
        xaxis_title="key position − query position",
        yaxis={"autorange": "reversed"},
        height=120 + 24 * len(rows),
    )
    return fig


# ---------------------------------------------------------------------------------------------
# 04 distillation


def layer_mapping(plan: dict, teacher_layers: int) -> go.Figure:
    """Which teacher layer initialises / supervises each layer of the assistant and the student."""
    fig = go.Figure()
    rows = [
        ("assistant init (copied)", plan.get("assistant_init")),
        ("student ← teacher", plan.get("student_map")),
    ]
    if plan.get("student_map_from_assistant"):
        rows.append(("student ← assistant", plan["student_map_from_assistant"]))
    for y, (label, mapping) in enumerate(r for r in rows if r[1]):
        for s, t in enumerate(mapping):
            fig.add_scatter(x=[s, t], y=[y + 0.1, y + 0.9], mode="lines+markers", showlegend=False,
                            line={"color": "#1f77b4"}, hovertext=f"{label}: layer {s} ← {t}")  # fmt: skip
        fig.add_annotation(x=-0.8, y=y + 0.5, text=label, showarrow=False, xanchor="right")
    fig.update_layout(
        title=f"Layer mapping (bottom of each line: the smaller model's layer; top: the source layer of {teacher_layers})",
        xaxis={"title": "layer index", "dtick": 1}, yaxis={"visible": False}, height=300, margin={"l": 200},
    )  # fmt: skip
    return fig


def distill_terms(logs: dict[str, list[dict]]) -> go.Figure:
    """Per-term loss curves of every distillation run: the KD-sanity panel."""
    terms = [
        t
        for t in ("kd", "mlm", "topk", "hidden", "attention")
        if any(t in r for rows in logs.values() for r in rows)
    ]
    fig = make_subplots(rows=1, cols=len(terms), subplot_titles=terms)
    for name, rows in logs.items():
        rows = [r for r in rows if "loss" in r and "eval" not in r]
        for c, term in enumerate(terms, 1):
            fig.add_scatter(
                x=[r["step"] for r in rows], y=[r.get(term) for r in rows], name=name, legendgroup=name,
                showlegend=c == 1, mode="lines", row=1, col=c,
            )  # fmt: skip
    fig.update_xaxes(title_text="step")
    fig.update_layout(title="Loss terms per run (each term logged separately)", height=380)
    return fig


# ---------------------------------------------------------------------------------------------
# 05 longify


def bpc_bars(bpc: dict) -> go.Figure:
    labels = {
        "bert_512_windows": "BERT, 512-token windows",
        "bert_continued_512": "BERT continued at 512 (control)",
        "longformer_before": "Longformer, converted",
        "longformer_after": "Longformer, continued",
    }
    values = list(bpc.values())
    fig = go.Figure(go.Bar(x=[labels[k] for k in bpc], y=values, text=[f"{v:.3f}" for v in values]))
    fig.update_layout(
        title="Bits per character on held-out long documents (lower is better)",
        yaxis_title="bits / character",
    )
    return fig


def context_gain(gain: dict) -> go.Figure:
    """Mean bits per character of the scored spans against the context each model may use, with the
    95% interval over documents (the estimator the finding uses)."""
    fig = go.Figure()
    for name, label in (("bert", "BERT (up to its positions)"), ("longformer", "Longformer")):
        means = gain["curves"][name]["mean"]
        xs = [c for c in gain["contexts"][name] if str(c) in means]
        ys = [means[str(c)]["bpc"] for c in xs]
        _interval_line(fig, label, xs, ys, [means[str(c)]["ci95"] for c in xs])
    fig.add_vline(x=512, line_dash="dot", annotation_text="512")
    fig.update_layout(
        title=f"Context gain: spans of {gain['span']} tokens in {gain['documents']} held-out documents "
        "(95% intervals over documents)",
        xaxis_title="tokens of context the span may attend to", yaxis_title="bits per character (lower is better)",
    )  # fmt: skip
    return fig


def by_position(by_bin: dict, reach: int, chance: float) -> go.Figure:
    """Long-document task accuracy by where the needle lies, per model, with 95% intervals."""
    fig = go.Figure()
    for name, bins in by_bin.items():
        x = [(b["from"] + b["to"]) / 2 for b in bins]
        y = [b["accuracy"] for b in bins]
        _interval_line(fig, name, x, y, [b["ci95"] for b in bins])
    fig.add_vline(x=reach, line_dash="dot", annotation_text=f"BERT reads {reach}")
    fig.add_hline(y=chance, line_dash="dot", annotation_text="majority class")
    fig.update_layout(title="Long-document task: accuracy by the needle's position (bins of 256 tokens)",
                      xaxis_title="needle's first token", yaxis_title="test accuracy")  # fmt: skip
    return fig


def banded(
    attention,
    title: str = "Longformer attention (last layer, head mean): local band + global [CLS]",
    cells: int = 256,
) -> go.Figure:
    """The attention map, max-pooled to at most `cells` x `cells` (a 2,048-token map would be
    4 M values in the report): the band and the global column stay visible at any length."""
    import numpy as np

    a = np.asarray(attention, dtype=np.float32)
    f = -(-max(a.shape) // cells)  # pooling factor
    if f > 1:
        rows, cols = -(-a.shape[0] // f) * f, -(-a.shape[1] // f) * f
        a = np.pad(a, ((0, rows - a.shape[0]), (0, cols - a.shape[1])))
        a = a.reshape(rows // f, f, cols // f, f).max(axis=(1, 3))
        title += f" (max over {f} x {f} blocks)"
    z = np.log10(np.maximum(a, 1e-5)).astype(np.float32)
    at = np.arange(a.shape[1]) * f
    fig = go.Figure(go.Heatmap(z=z, x=at, y=np.arange(a.shape[0]) * f, colorscale="Viridis",
                               colorbar={"title": "log10 p"}, zmin=-5, zmax=0))  # fmt: skip
    fig.update_layout(title=title, xaxis_title="key position", yaxis_title="query position", height=560,
                      yaxis={"autorange": "reversed"})  # fmt: skip
    return fig


# ---------------------------------------------------------------------------------------------
# 06 evaluate


def frontier(rows: dict, average: dict) -> go.Figure:
    """Average task score against latency and against parameters: the speed / size frontier."""
    names = [n for n in average if n in rows and "latency_ms_b1" in rows[n]]
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=("score vs latency (batch 1)", "score vs parameters")
    )
    for n in names:
        r = rows[n]
        fig.add_scatter(x=[r["latency_ms_b1"]], y=[average[n]], mode="markers+text", text=[n], textposition="top center",
                        name=n, legendgroup=n, row=1, col=1, marker={"size": 12})  # fmt: skip
        fig.add_scatter(x=[r["params"]], y=[average[n]], mode="markers+text", text=[n], textposition="top center",
                        name=n, legendgroup=n, showlegend=False, row=1, col=2, marker={"size": 12})  # fmt: skip
    for n, v in average.items():
        if n not in names:  # baselines without a model of their own: a horizontal line
            for c in (1, 2):
                fig.add_hline(y=v, line_dash="dot", annotation_text=n, row=1, col=c)
    fig.update_xaxes(title_text="ms per sequence", type="log", row=1, col=1)
    fig.update_xaxes(title_text="parameters", type="log", row=1, col=2)
    fig.update_yaxes(title_text="average task score")
    fig.update_layout(
        title="The frontier: average downstream score against speed and size", height=460
    )
    return fig


def data_efficiency(points: dict, task: str, chance: float | None = None) -> go.Figure | str:
    """One task's score against the number of training examples, per model, with 95% intervals."""
    curves = points.get(task, {})
    if not curves:
        return f"{task}: no data-efficiency curve was measured"
    fig = go.Figure()
    for name, pts in curves.items():
        x = [p["examples"] for p in pts]
        y = [p["score"] for p in pts]
        _interval_line(fig, name, x, y, [p["ci95"] for p in pts])
    if chance:
        fig.add_hline(y=chance, line_dash="dot", annotation_text="majority class")
    fig.update_xaxes(title="training examples", type="log")
    fig.update_yaxes(title="test score")
    fig.update_layout(
        title=f"{task}: score against training examples (95% intervals over runs and examples)"
    )
    return fig
