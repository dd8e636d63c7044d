"""Interactive inspectors: live ipywidgets in JupyterLab, static plotly figures in batch reports.

Papermill keeps no widget state, so under `python -m lab run` (ZH_MINILAB_BATCH set) each inspector
renders a plotly figure with its own sliders instead; the HTML report stays explorable offline.
Inspectors only read artifacts and models; they never change run state. All text from a corpus is
escaped before it reaches HTML.
"""

from __future__ import annotations

import html

import numpy as np
import plotly.graph_objects as go

from lab import viz

WORD_COLOURS = ("#e3f2fd", "#fff3e0")  # alternate per word
MASK_COLOURS = {"mask": "#ef5350", "random": "#ab47bc", "kept": "#66bb6a"}


# ---------------------------------------------------------------------------------------------
# mask inspector


class MaskInspector:
    """Tokens coloured by word, the words a masking collator chose marked, for any sentence."""

    def __init__(
        self,
        tokenizer,
        texts: list[str],
        *,
        segmenter="jieba",
        mlm_probability: float = 0.15,
        seed: int = 0,
    ):
        self.tokenizer = tokenizer
        self.texts = texts
        self.segmenter = segmenter
        self.mlm_probability = mlm_probability
        self.seed = seed

    def sample(
        self, text: str, *, whole_word: bool, mlm_probability: float, seed: int
    ) -> list[dict]:
        """One masking of `text`: per token its text, word id and what happened to it."""
        from lab import wwm

        (example,) = wwm.encode([text], self.tokenizer, segmenter=self.segmenter, max_length=128)
        collator = wwm.WholeWordMaskCollator(
            self.tokenizer, mlm_probability=mlm_probability, seed=seed, whole_word=whole_word
        )
        batch = collator([example])
        out_ids = batch["input_ids"][0].tolist()
        labels = batch["labels"][0].tolist()
        tokens = self.tokenizer.convert_ids_to_tokens(example["input_ids"])
        shown = self.tokenizer.convert_ids_to_tokens(out_ids)
        rows = []
        for i, (tok, wid) in enumerate(zip(tokens, example["word_ids"])):
            state = None
            if labels[i] != -100:
                state = (
                    "mask"
                    if out_ids[i] == self.tokenizer.mask_token_id
                    else ("kept" if out_ids[i] == example["input_ids"][i] else "random")
                )
            rows.append({"token": tok, "word": wid, "state": state, "shown": shown[i]})
        return rows

    def html(self, rows: list[dict]) -> str:
        spans = []
        for r in rows:
            if r["word"] < 0:
                continue
            bg = WORD_COLOURS[r["word"] % 2]
            label = html.escape(r["token"])
            style = (
                f"background:{bg};padding:2px 3px;margin:1px;display:inline-block;border-radius:3px"
            )
            if r["state"]:
                style += f";outline:2px solid {MASK_COLOURS[r['state']]}"
                label += (
                    f"<sub style='color:{MASK_COLOURS[r['state']]}'>{html.escape(r['shown'])}</sub>"
                )
            spans.append(f"<span style='{style}' title='word {r['word']}'>{label}</span>")
        legend = " ".join(
            f"<span style='outline:2px solid {c};padding:0 4px'>{k}</span>"
            for k, c in MASK_COLOURS.items()
        )
        return (
            f"<div style='font-size:16px;line-height:2'>{''.join(spans)}</div><div>{legend}</div>"
        )

    def widget(self):
        import ipywidgets as w

        text = w.Textarea(value=self.texts[0] if self.texts else "", layout=w.Layout(width="100%"))
        index = w.IntSlider(0, 0, max(0, len(self.texts) - 1), description="corpus #")
        mode = w.ToggleButtons(options=["whole word", "token"], value="whole word")
        prob = w.FloatSlider(
            self.mlm_probability, min=0.05, max=0.5, step=0.05, description="probability"
        )
        resample = w.Button(description="resample")
        out = w.HTML()
        state = {"seed": self.seed}

        def redraw(*_):
            rows = self.sample(
                text.value,
                whole_word=mode.value == "whole word",
                mlm_probability=prob.value,
                seed=state["seed"],
            )
            out.value = self.html(rows)

        def pick(change):
            text.value = self.texts[change["new"]]

        def again(_):
            state["seed"] += 1
            redraw()

        index.observe(pick, "value")
        for control in (text, mode, prob):
            control.observe(redraw, "value")
        resample.on_click(again)
        redraw()
        return w.VBox([w.HBox([index, mode, prob, resample]), text, out])

    def figure(self, n_texts: int = 3, n_samples: int = 3, width: int = 24) -> go.Figure:
        """Static view: a slider over sentences x {whole word, token} x resamplings."""
        fig = go.Figure()
        labels = []
        for t, text in enumerate(self.texts[:n_texts]):
            for whole in (True, False):
                for k in range(n_samples):
                    rows = [
                        r
                        for r in self.sample(
                            text,
                            whole_word=whole,
                            mlm_probability=self.mlm_probability,
                            seed=self.seed + k,
                        )
                        if r["word"] >= 0
                    ]
                    fig.add_trace(_token_grid(rows, width))
                    labels.append(f"#{t + 1} {'WWM' if whole else 'token'} {k + 1}")
        steps = []
        for i, label in enumerate(labels):
            visible = [j == i for j in range(len(labels))]
            steps.append({"method": "update", "label": label, "args": [{"visible": visible}]})
        for j, trace in enumerate(fig.data):
            trace.visible = j == 0
        fig.update_layout(
            title="Mask inspector: tokens shaded by word; red = [MASK], purple = random, green = kept",
            sliders=[
                {
                    "active": 0,
                    "steps": steps,
                    "currentvalue": {"prefix": "sentence / mode / sample: "},
                }
            ],
            height=180 + 44 * max(len(t.z) for t in fig.data),
            xaxis={"visible": False, "range": [-0.5, width - 0.5]},
            yaxis={"visible": False, "autorange": "reversed"},
        )
        return fig

    def show(self):
        """The live widget in JupyterLab; the static figure in batch runs."""
        from IPython.display import display

        if viz.batch():
            viz.show(self.figure())
        else:
            display(self.widget())


def _token_grid(rows: list[dict], width: int) -> go.Heatmap:
    """Tokens laid out in rows of `width`; colour bands 0/1 = word parity, 2/3/4 = mask/random/kept."""
    n = len(rows)
    height = max(1, -(-n // width))
    z = np.full((height, width), np.nan)
    text = np.full((height, width), "", dtype=object)
    hover = np.full((height, width), "", dtype=object)
    code = {"mask": 2, "random": 3, "kept": 4}
    for i, r in enumerate(rows):
        y, x = divmod(i, width)
        z[y, x] = (code[r["state"]] if r["state"] else r["word"] % 2) + 0.5  # band centres
        text[y, x] = r["token"]
        seen = f": {r['state']}, the model sees {r['shown']}" if r["state"] else ""
        hover[y, x] = f"word {r['word']}{seen}"
    scale = [
        [0.0, WORD_COLOURS[0]], [0.2, WORD_COLOURS[0]], [0.2, WORD_COLOURS[1]], [0.4, WORD_COLOURS[1]],
        [0.4, MASK_COLOURS["mask"]], [0.6, MASK_COLOURS["mask"]], [0.6, MASK_COLOURS["random"]],
        [0.8, MASK_COLOURS["random"]], [0.8, MASK_COLOURS["kept"]], [1.0, MASK_COLOURS["kept"]],
    ]  # fmt: skip
    return go.Heatmap(
        z=z, text=text, customdata=hover, texttemplate="%{text}", colorscale=scale, zmin=0, zmax=5,
        showscale=False, hovertemplate="%{text} · %{customdata}<extra></extra>", xgap=2, ygap=2,
    )  # fmt: skip
