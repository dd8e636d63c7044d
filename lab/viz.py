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
