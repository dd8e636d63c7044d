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
from lab.core import mlm, vocab
from lab.core.attention import dense_longformer, global_mask, pad_to_window
from lab.core.masking import Masking
from lab.core.metrics import fill_mask
from lab.core.wordpiece import encode

WORD_COLOURS = ("#e3f2fd", "#fff3e0")  # alternate per word
MASK_COLOURS = {"mask": "#ef5350", "random": "#ab47bc", "kept": "#66bb6a"}


# ---------------------------------------------------------------------------------------------
# mask inspector


class MaskInspector:
    """Tokens coloured by word, the words a masking collator chose marked, for any sentence."""

    def __init__(self, tokenizer, texts: list[str], *, segmenter="jieba", mlm_probability: float = 0.15,
                 seed: int = 0):  # fmt: skip
        self.tokenizer = tokenizer
        self.texts = texts
        self.segmenter = segmenter
        self.mlm_probability = mlm_probability
        self.seed = seed

    def sample(
        self, text: str, *, whole_word: bool, mlm_probability: float, seed: int
    ) -> list[dict]:
        """One masking of `text`: per token its text, word id and what happened to it."""
        (example,) = encode([text], self.tokenizer, segmenter=self.segmenter, max_length=128)
        collator = Masking(whole_word=whole_word, probability=mlm_probability).collator(
            self.tokenizer, seed
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


# ---------------------------------------------------------------------------------------------
# fill-mask explorer


class FillMaskExplorer:
    """One sentence, every model's top-k for each [MASK] with probabilities, side by side."""

    def __init__(self, model_dirs: dict, sentences: list[str], k: int = 5):
        self.models = {name: (mlm.load(d), vocab.load(d)) for name, d in model_dirs.items()}
        self.sentences = sentences
        self.k = k

    def predict(self, sentence: str) -> dict[str, dict]:
        return {name: fill_mask(m, tok, sentence, self.k) for name, (m, tok) in self.models.items()}

    def figure(self) -> go.Figure:
        """Static view: a table per sentence (dropdown), rows = models, columns = top-k."""
        fig = go.Figure()
        for i, sentence in enumerate(self.sentences):
            preds = self.predict(sentence)
            header = ["model", "answer", *[f"#{j + 1}" for j in range(self.k)]]
            cells = [[], [], *[[] for _ in range(self.k)]]
            for name, p in preds.items():
                cells[0].append(html.escape(name))
                cells[1].append(html.escape(p["answer"]))
                first = p["slots"][0] if p["slots"] else []
                for j in range(self.k):
                    cells[2 + j].append(
                        html.escape(f"{first[j][0]} {first[j][1]:.3f}") if j < len(first) else ""
                    )
            fig.add_trace(
                go.Table(header={"values": header}, cells={"values": cells}, visible=i == 0)
            )
        buttons = [
            {
                "label": html.escape(s[:30]),
                "method": "update",
                "args": [{"visible": [j == i for j in range(len(self.sentences))]}],
            }
            for i, s in enumerate(self.sentences)
        ]
        fig.update_layout(
            title="Fill-mask explorer: every model's top-k for the first [MASK]; answer = all masks decoded left to right",
            updatemenus=[{"buttons": buttons, "x": 0, "y": 1.12, "xanchor": "left"}],
            height=120 + 40 * len(self.models),
        )
        return fig

    def widget(self):
        import ipywidgets as w

        text = w.Text(value=self.sentences[0], layout=w.Layout(width="70%"), description="sentence")
        pick = w.Dropdown(options=self.sentences, description="examples")
        out = w.HTML()

        def redraw(*_):
            if "[MASK]" not in text.value:
                out.value = "<p>put [MASK] where a token is missing</p>"
                return
            rows = []
            for name, p in self.predict(text.value).items():
                slots = "<br>".join(
                    " ".join(f"{html.escape(t)}&nbsp;{pr:.3f}" for t, pr in slot)
                    for slot in p["slots"]
                )
                rows.append(
                    f"<tr><td>{html.escape(name)}</td><td>{html.escape(p['answer'])}</td><td>{slots}</td></tr>"
                )
            out.value = (
                "<table class='lab-table'><tr><th>model</th><th>answer</th><th>top-k per [MASK]</th></tr>"
                + "".join(rows)
                + "</table>"
            )

        pick.observe(lambda c: setattr(text, "value", c["new"]), "value")
        text.observe(redraw, "value")
        redraw()
        return w.VBox([w.HBox([text, pick]), out])

    def show(self):
        from IPython.display import display

        if viz.batch():
            viz.show(self.figure())
        else:
            display(self.widget())


# ---------------------------------------------------------------------------------------------
# attention viewer


class AttentionViewer:
    """Token-to-token attention for a chosen model, layer and head (eager attention); for a
    Longformer the local band and the global tokens, laid out as a full matrix."""

    def __init__(self, model_dirs: dict, sentence: str):
        self.models = {
            name: (mlm.load(d, attn="eager"), vocab.load(d)) for name, d in model_dirs.items()
        }
        self.sentence = sentence
        self._cache: dict = {}

    def attention(self, name: str, sentence: str) -> tuple[list[str], np.ndarray]:
        """Tokens and attention probabilities (layers, heads, T, T)."""
        key = (name, sentence)
        if key not in self._cache:
            import torch

            model, tok = self.models[name]
            enc = tok(sentence, return_tensors="pt", truncation=True, max_length=128)
            with torch.no_grad():
                if model.config.model_type == "longformer":
                    gm = global_mask(enc["input_ids"], [tok.cls_token_id])[0]
                    window = model.config.attention_window[0]
                    padded = pad_to_window(enc["input_ids"], tok.pad_token_id, window)
                    g_pad = global_mask(padded["input_ids"], [tok.cls_token_id])
                    out = model(**padded, global_attention_mask=g_pad, output_attentions=True)
                    layers = zip(out.attentions, out.global_attentions)
                    att = np.stack(
                        [dense_longformer(a[0], g[0], gm, model.config) for a, g in layers]
                    )
                else:
                    out = model(**enc, output_attentions=True)
                    att = np.stack([a[0].float().numpy() for a in out.attentions])
            self._cache[key] = (tok.convert_ids_to_tokens(enc["input_ids"][0].tolist()), att)
        return self._cache[key]

    def figure(self) -> go.Figure:
        """Static view: one heatmap; a dropdown picks model / layer / head (or the head mean)."""
        fig = go.Figure()
        buttons = []
        first = True
        for name in self.models:
            tokens, att = self.attention(name, self.sentence)
            labels = [f"{i}:{html.escape(t)}" for i, t in enumerate(tokens)]
            for layer in range(att.shape[0]):
                for head in [-1, *range(att.shape[1])]:
                    z = att[layer].mean(0) if head < 0 else att[layer, head]
                    label = (
                        f"{name} · layer {layer} · {'head mean' if head < 0 else f'head {head}'}"
                    )
                    buttons.append(
                        {
                            "label": label,
                            "method": "restyle",
                            "args": [{"z": [z.tolist()], "x": [labels], "y": [labels]}],
                        }
                    )
                    if first:
                        fig.add_trace(
                            go.Heatmap(z=z.tolist(), x=labels, y=labels, colorscale="Blues", zmin=0)
                        )
                        first = False
        fig.update_layout(
            title="Attention viewer (rows: queries, columns: keys)",
            updatemenus=[{"buttons": buttons, "x": 0, "y": 1.15, "xanchor": "left"}],
            yaxis={"autorange": "reversed"}, height=620,
        )  # fmt: skip
        return fig

    def widget(self):
        import ipywidgets as w

        text = w.Text(value=self.sentence, layout=w.Layout(width="60%"), description="sentence")
        model = w.Dropdown(options=list(self.models), description="model")
        layer = w.IntSlider(0, 0, 0, description="layer")
        head = w.IntSlider(-1, -1, 0, description="head (-1: mean)")
        out = w.Output()

        def redraw(*_):
            tokens, att = self.attention(model.value, text.value)
            layer.max, head.max = att.shape[0] - 1, att.shape[1] - 1
            z = att[layer.value].mean(0) if head.value < 0 else att[layer.value, head.value]
            labels = [f"{i}:{t}" for i, t in enumerate(tokens)]
            fig = go.Figure(go.Heatmap(z=z, x=labels, y=labels, colorscale="Blues", zmin=0))
            fig.update_layout(
                yaxis={"autorange": "reversed"},
                height=560,
                title=f"{model.value} layer {layer.value}",
            )
            out.clear_output(wait=True)
            with out:
                viz.show(fig)

        for c in (text, model, layer, head):
            c.observe(redraw, "value")
        redraw()
        return w.VBox([w.HBox([model, layer, head]), text, out])

    def show(self):
        from IPython.display import display

        if viz.batch():
            viz.show(self.figure())
        else:
            display(self.widget())
