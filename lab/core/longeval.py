"""Does a Longformer use what it reads past BERT's 512 tokens? The held-out long documents' evidence,
each finding paired over documents with a t interval and the smallest gain it could have found.

* Bits per character of whole documents, per document, for BERT reading independent 512-token
  windows and for the Longformer reading each document whole.
* The context-gain curve (`longdocs.context_gain`): a fixed layout, context taken away by the
  attention mask, every token of the span scored. The figure and the finding use one estimator:
  the mean over documents of each document's bits per character, with a t interval.
"""

from __future__ import annotations

import numpy as np

from lab.core import longdocs, stats
from lab.core.metrics import bits_per_char, document_nats


def per_document_bpc(model, test: dict, *, window: int, global_ids: list[int] | None, bf16: bool,
                     specials: dict) -> list[float]:  # fmt: skip
    """Each held-out document's bits per character at its fixed masking (`test`: ids, chars, masks)."""
    out = []
    for ids, chars, mask in zip(test["ids"], test["chars"], test["masks"]):
        nats, n = document_nats(model, [ids], [chars], [mask], window=window, global_ids=global_ids, bf16=bf16,
                                **specials)  # fmt: skip
        out.append(bits_per_char(nats, n))
    return out


def curve(model, test: dict, *, contexts: list[int], span: int, length: int, spans_per_doc: int,
          mask_share: float, global_ids: list[int] | None, bf16: bool, specials: dict) -> dict:  # fmt: skip
    """One model's context-gain curve: per context, each document's bits per character over its
    spans, and the mean over documents with its t interval (the estimator the finding uses)."""
    raw = longdocs.context_gain(model, test["ids"], test["chars"], contexts=contexts, span=span, length=length,
                                spans_per_doc=spans_per_doc, mask_share=mask_share, global_ids=global_ids,
                                bf16=bf16, **specials)  # fmt: skip
    per_doc = {c: [bits_per_char(n, k) for n, k in rows] for c, rows in raw.items()}
    means = {}
    for c, values in per_doc.items():
        r = stats.paired(values, np.zeros(len(values)))
        means[str(c)] = {
            "bpc": float(np.mean(values)),
            "ci95": r.get("ci95"),
            "documents": len(values),
        }
    return {"per_doc": {str(c): v for c, v in per_doc.items()}, "mean": means, "length": length,
            "span_positions": [length - 1 - span, length - 2]}  # fmt: skip


def gain(per_doc: dict, short: int, long: int, *, claim: str) -> dict:
    """The paired gain from `short` to `long` tokens of context (bits per character saved), with its
    t interval and the smallest true gain these documents would show 4 times in 5."""
    a, b = per_doc[str(short)], per_doc[str(long)]
    result = stats.paired(a, b)
    return {"claim": claim, "a": f"{short:,} tokens", "b": f"{long:,} tokens", **result,
            "unit": "bits per character (a - b)",
            "scope": {"a": f"{len(a)} documents", "b": f"{len(b)} documents",
                      "covers": ["held-out documents (their spans pooled)"],
                      "fixed": ["the model (one conversion, one continued pretraining)", "the maskings"]}}  # fmt: skip


def controlled(bert_continued: list[float], long_after: list[float], *, length: int) -> dict:
    """Longer context beyond more in-domain training: BERT continued on the same documents for the
    same tokens at 512, against the Longformer continued at its length, paired over documents."""
    result = stats.paired(bert_continued, long_after)
    return {"claim": f"reading {length:,} tokens lowers bits per character beyond the same continued "
                     "pretraining at 512", "a": "BERT continued at 512", "b": f"Longformer continued at {length:,}",
            **result, "unit": "bits per character (a - b)",
            "scope": {"a": f"{len(bert_continued)} documents", "b": f"{len(long_after)} documents",
                      "covers": ["held-out documents"],
                      "fixed": ["one continued-pretraining run of each model", "the maskings"]}}  # fmt: skip
