"""The long-document task's probe (`lab.core.longprobe`): it reads a needle whose topic an encoder's
states carry, a reader whose input stops short of the needle can only guess, and the needle's
tokens are the ones the probe learns from."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lab.core import longprobe

TOPICS, LENGTH, NEEDLE = 4, 200, 5
BACKGROUND = range(3, 103)  # ids 0-2: [PAD], [CLS], [SEP]


class Lookup(torch.nn.Module):
    """An "encoder" whose state at each token is a fixed random vector of the token's id: a needle's
    topic lies in its own tokens' states, and nothing travels between positions."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.config = SimpleNamespace(model_type="bert")
        self.emb = torch.nn.Embedding(103 + 10 * TOPICS, 256)  # as wide as the cpu teacher

    def forward(self, input_ids, attention_mask):
        return SimpleNamespace(last_hidden_state=self.emb(input_ids))


def haystack(n: int, seed: int, reach: int = LENGTH) -> list[longprobe.Document]:
    """Documents of background ids with a needle of five ids of its topic (topic t: 103 + 10t ...)
    at a random place, cut to `reach` tokens as `longprobe.documents` cuts them."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        label, at = int(rng.integers(TOPICS)), int(rng.integers(1, LENGTH - 1 - NEEDLE))
        ids = [1, *rng.choice(BACKGROUND, LENGTH - 2), 2]
        ids[at : at + NEEDLE] = rng.choice(range(103 + 10 * label, 113 + 10 * label), NEEDLE)
        cut = [*ids[: reach - 1], 2]
        out.append(
            longprobe.Document(cut, label, (min(at, reach - 1), min(at + NEEDLE, reach - 1)))
        )
    return out


def accuracy(reach: int) -> tuple[np.ndarray, list[longprobe.Document]]:
    test = haystack(200, seed=2, reach=reach)
    got = longprobe.outcomes(Lookup(), haystack(300, seed=1, reach=reach), test, classes=TOPICS, seeds=2, seed=0,
                             pad_id=0, batch=16, bf16=False, name="lookup")  # fmt: skip
    return np.asarray(got)[..., 0], test


def test_the_probe_reads_a_needle_the_states_carry():
    correct, _ = accuracy(LENGTH)
    assert correct.shape == (2, 200)
    assert correct.mean() > 0.9  # chance is 0.25


def test_a_reader_that_stops_short_of_the_needle_can_only_guess():
    correct, test = accuracy(reach=100)
    past = np.array([d.needle[0] == d.needle[1] for d in test])  # needles wholly cut off
    assert 40 < past.sum() < 160
    assert correct[:, ~past].mean() > 0.9
    assert correct[:, past].mean() < 0.45


def test_needle_spans_are_the_headline_tokens(tmp_path):
    from checkpoints import bert_tokenizer

    tok = bert_tokenizer(tmp_path / "tok")
    body, needle = "却说曹操引兵至濮阳，吕布迎战。" * 3, "iPhone 15发布会今日在北京举行"
    at = 15
    text = body[:at] + needle + body[at:]
    row = {"text": text, "label": 3, "needle_at": at, "needle_chars": len(needle)}
    (d,) = longprobe.documents([row], tok, reach=512)
    a, b = d.needle
    assert tok.decode(d.ids[a:b]).replace(" ", "") == needle.lower().replace(" ", "")
    assert d.ids[0] == tok.cls_token_id and d.ids[-1] == tok.sep_token_id
    (short,) = longprobe.documents([row], tok, reach=12)  # the needle starts past the cut
    assert len(short.ids) == 12 and short.needle[0] == short.needle[1]


@pytest.mark.parametrize("cut", [20, 23])
def test_a_needle_cut_in_two_keeps_only_the_tokens_the_reader_sees(tmp_path, cut):
    from checkpoints import bert_tokenizer

    tok = bert_tokenizer(tmp_path / "tok")
    text = "却说曹操引兵至濮阳，吕布迎战。" + "国足三比零胜泰国" + "却说曹操引兵至濮阳。"
    row = {"text": text, "label": 0, "needle_at": 15, "needle_chars": 8}
    (d,) = longprobe.documents([row], tok, reach=cut)
    a, b = d.needle
    assert (a, b) == (16, cut - 1) and len(d.ids) == cut
