"""Figures and tables for the stage notebooks, drawn from artifacts only.

`show(fig)` puts two renderings of a plotly figure in one output: the plotly mimetype that
JupyterLab draws live, and self-contained HTML (plotly.js embedded once per notebook, no CDN, no
MathJax) that nbconvert keeps in the offline report. Under papermill, plotly's default renderer
stores only the mimetype, which nbconvert drops: the figure would be missing from the report.
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


def show(fig: go.Figure) -> None:
    """Display a figure live in JupyterLab and as embedded HTML in executed notebooks."""
    global _plotlyjs_sent
    from IPython.display import display

    fig.update_layout(template=TEMPLATE)
    page = pio.to_html(
        fig,
        include_plotlyjs=not _plotlyjs_sent,
        full_html=False,
        include_mathjax=False,
        config={"displaylogo": False},
    )
    _plotlyjs_sent = True
    display({"application/vnd.plotly.v1+json": fig.to_plotly_json(), "text/html": page}, raw=True)


def table(rows: list[dict], title: str | None = None):
    """An HTML table with every cell escaped (corpus text is untrusted)."""
    from IPython.display import HTML

    if not rows:
        return HTML("<p><em>(empty)</em></p>")
    cols = list(rows[0])
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in cols) + "</tr>"
        for r in rows
    )
    caption = f"<caption>{html.escape(title)}</caption>" if title else ""
    return HTML(
        f'<table class="lab-table">{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
    )


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return "" if v is None else str(v)


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


def mask_table(stats: dict):
    rows = [
        {
            "mode": mode,
            "mask rate": s["mask_rate"],
            **s["shares"],
            "multi-token words": s["multi_token_word_share"],
            "masked words": s["masked_words"],
        }
        for mode, s in (("whole word", stats["wwm"]), ("token", stats["token"]))
    ]
    return table(rows, "Masking on the valid split ([MASK] / random / kept shares per chosen word)")


def builtin_table(stats: dict):
    b, o = stats["builtin"], stats["ours_on_sentences"]
    rows = [
        {
            "collator": "transformers whole_word_mask=True",
            "all or nothing": b["all_or_nothing"],
            "fully masked": b["all_masked"],
            "none masked": b["none_masked"],
            "mean rate": b["mean_mask_rate"],
            "[MASK] share": b["mask_token_share"],
        },
        {
            "collator": "lab WholeWordMaskCollator",
            "all or nothing": o["all_or_nothing"],
            "mean rate": o["mean_mask_rate"],
            "[MASK] share": o["shares"]["mask"],
        },
    ]
    return table(rows, f"The same {b['sequences']:,} valid sentences")
