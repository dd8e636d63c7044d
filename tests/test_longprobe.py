"""The long-document task's probe (`lab.core.longprobe`): it reads a needle whose topic an encoder's
states carry, a reader whose input stops short of the needle can only guess, and the needle's
tokens are the ones the probe learns from."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lab.core import longprobe

TOPICS, CHARS, NEEDLE = 4, 198, 5


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from checkpoints import bert_tokenizer

    return bert_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def alphabet():
    """Characters of bert-base-chinese's vocabulary (one token each): 100 for the haystack, ten
    for each topic's needles."""
    from lab.core import sources

    cjk = [t for t in sources.load("bert_vocab") if len(t) == 1 and "\u4e00" <= t <= "\u9fff"]
    return cjk[:100], [cjk[100 + 10 * t : 110 + 10 * t] for t in range(TOPICS)]


class Lookup(torch.nn.Module):
    """An "encoder" whose state at each token is a fixed random vector of the token's id: a needle's
    topic lies in its own tokens' states, and nothing travels between positions. `special` gives
    [CLS] and [SEP] the state of a topic-0 needle character."""

    def __init__(self, tok, special: int | None = None):
        super().__init__()
        torch.manual_seed(0)
        self.config = SimpleNamespace(model_type="bert")
        self.emb = torch.nn.Embedding(len(tok), 256)  # as wide as the cpu teacher
        if special is not None:
            with torch.no_grad():
                self.emb.weight[[tok.cls_token_id, tok.sep_token_id]] = self.emb.weight[
                    special
                ].clone()

    def forward(self, input_ids, attention_mask):
        return SimpleNamespace(last_hidden_state=self.emb(input_ids))


def haystack(alphabet, n: int, seed: int) -> list[dict]:
    """The task's rows: background characters with a needle of five characters of its topic at a
    random place."""
    hay, topics = alphabet
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        label, at = int(rng.integers(TOPICS)), int(rng.integers(0, CHARS - NEEDLE))
        text = list(rng.choice(hay, CHARS))
        text[at : at + NEEDLE] = rng.choice(topics[label], NEEDLE)
        rows.append(
            {"text": "".join(text), "label": label, "needle_at": at, "needle_chars": NEEDLE}
        )
    return rows


def accuracy(
    tok, alphabet, reach: int, encoder=None
) -> tuple[np.ndarray, list[longprobe.Document]]:
    train = longprobe.documents(haystack(alphabet, 300, seed=1), tok, reach)
    test = longprobe.documents(haystack(alphabet, 200, seed=2), tok, reach)
    got = longprobe.outcomes(encoder or Lookup(tok), train, test, classes=TOPICS, seeds=2, seed=0,
                             pad_id=tok.pad_token_id, batch=16, bf16=False, name="lookup")  # fmt: skip
    return np.asarray(got)[..., 0], test


def test_the_probe_reads_a_needle_the_states_carry(tok, alphabet):
    correct, test = accuracy(tok, alphabet, CHARS + 2)
    assert correct.shape == (2, 200) and {len(d.ids) for d in test} == {CHARS + 2}
    assert correct.mean() > 0.9  # chance is 0.25


def test_a_reader_that_stops_short_of_the_needle_can_only_guess(tok, alphabet):
    correct, test = accuracy(tok, alphabet, reach=100)
    past = np.array([d.needle[0] == d.needle[1] for d in test])  # needles wholly cut off
    assert 40 < past.sum() < 160 and {len(d.ids) for d in test} == {100}
    assert correct[:, ~past].mean() > 0.9
    assert correct[:, past].mean() < 0.45


def test_special_tokens_never_vote(tok, alphabet):
    """[CLS] and [SEP] carry a topic-0 needle's state here (a Longformer's global [CLS] reads the
    whole document): scored, they would pull every answer to topic 0."""
    special = tok.convert_tokens_to_ids(alphabet[1][0][0])
    correct, _ = accuracy(tok, alphabet, CHARS + 2, encoder=Lookup(tok, special=special))
    assert correct.mean() > 0.9


def test_needle_spans_are_the_headline_tokens(tok):
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
def test_a_needle_cut_in_two_keeps_only_the_tokens_the_reader_sees(tok, cut):
    text = "却说曹操引兵至濮阳，吕布迎战。" + "国足三比零胜泰国" + "却说曹操引兵至濮阳。"
    row = {"text": text, "label": 0, "needle_at": 15, "needle_chars": 8}
    (d,) = longprobe.documents([row], tok, reach=cut)
    a, b = d.needle
    assert (a, b) == (16, cut - 1) and len(d.ids) == cut
