import pytest
import torch

from lab.core import models, presets
from lab.core.presets import ModelError

PUBLISHED = {  # MiniRBT's table, millions of parameters: total, non-embedding
    "Base": (102.3, 85.7), "RBT6": (59.76, 43.14), "RBT3": (38.5, 21.9),
    "RBT4-H312": (11.4, 4.7), "MiniRBT-H256": (10.4, 4.8), "MiniRBT-H288": (12.3, 6.1),
}  # fmt: skip


@pytest.mark.parametrize("name", PUBLISHED)
def test_parameter_counts_match_minirbts_table(name):
    row = next(r for r in models.preset_rows() if r["model"] == name)
    total, non_emb = PUBLISHED[name]
    assert row["params"] / 1e6 == pytest.approx(total, abs=0.06)
    assert row["non-embedding"] / 1e6 == pytest.approx(non_emb, abs=0.06)


def test_presets_and_aliases():
    assert presets.arch("Mini") == presets.arch("L4_H256") == presets.Arch(4, 256, 4, 1024)
    assert len([k for k in presets.PRESETS if k.startswith("L")]) == 24
    assert presets.arch("L2_H64") == presets.Arch(2, 64, 1, 256)
    assert presets.arch("L3_H96_A3_I200") == presets.Arch(3, 96, 3, 200)


def test_bad_presets():
    with pytest.raises(ModelError, match="unknown model preset 'Huge'"):
        presets.arch("Huge")
    with pytest.raises(ModelError, match="not divisible by 3 heads"):
        presets.arch("L2_H128_A3")


def test_build_and_forward_shape():
    model = models.build("L2_H64", 500, max_positions=64)
    x = torch.randint(5, 500, (3, 17))
    assert model(input_ids=x).logits.shape == (3, 17, 500)
    from transformers import BertModel

    encoder = BertModel(model.config)  # with the pooler, as MiniRBT counts
    assert models.count(model)["total"] == sum(p.numel() for p in encoder.parameters())
