"""Architecture arithmetic without torch: the reference presets by name and the sliding-window rule.
Parameter validation uses these before any model exists."""

from __future__ import annotations

import re
from dataclasses import dataclass

from lab.core.errors import LabError


@dataclass(frozen=True)
class Arch:
    layers: int
    hidden: int
    heads: int
    ffn: int


PRESETS: dict[str, Arch] = {
    f"L{n}_H{h}": Arch(n, h, h // 64, 4 * h)
    for n in (2, 4, 6, 8, 10, 12)
    for h in (128, 256, 512, 768)
}
PRESETS.update(
    {
        "MiniRBT-H256": Arch(6, 256, 8, 1024),
        "MiniRBT-H288": Arch(6, 288, 8, 1152),
        "RBT3": Arch(3, 768, 12, 3072),
        "RBT4-H312": Arch(4, 312, 12, 1200),
        "RBT6": Arch(6, 768, 12, 3072),
    }
)
ALIASES = {
    "Tiny": "L2_H128",
    "Mini": "L4_H256",
    "Small": "L4_H512",
    "Medium": "L8_H512",
    "Base": "L12_H768",
}
CUSTOM = re.compile(r"^L(\d+)_H(\d+)(?:_A(\d+))?(?:_I(\d+))?$")


class ModelError(LabError, ValueError):
    """An unknown preset or an impossible architecture."""


def arch(name: str) -> Arch:
    """The architecture of a preset, an alias or a custom `L{n}_H{h}[_A{heads}][_I{ffn}]`."""
    name = ALIASES.get(name, name)
    if name in PRESETS:
        return PRESETS[name]
    m = CUSTOM.match(name)
    if not m:
        known = ", ".join([*ALIASES, *(k for k in PRESETS if not k.startswith("L"))])
        raise ModelError(
            f"unknown model preset {name!r}: use {known}, L{{layers}}_H{{hidden}} "
            "(e.g. L4_H256), or L{n}_H{h}_A{heads}_I{ffn} for a custom size"
        )
    layers, hidden = int(m[1]), int(m[2])
    heads = int(m[3]) if m[3] else max(1, hidden // 64)
    ffn = int(m[4]) if m[4] else 4 * hidden
    if layers < 1 or hidden < 8:
        raise ModelError(f"model {name!r}: needs at least 1 layer and hidden size 8")
    if hidden % heads:
        raise ModelError(f"model {name!r}: hidden size {hidden} is not divisible by {heads} heads")
    return Arch(layers, hidden, heads, ffn)


class ConversionError(LabError, ValueError):
    """A conversion that cannot work; the message names the parameter."""


def check_window(attention_window: int, max_positions: int, source_positions: int = 0) -> None:
    """The one check of a sliding window: even, positive, inside the positions it converts to."""
    if attention_window % 2 or attention_window < 2:
        raise ConversionError(
            f"attention_window = {attention_window}: the window must be a positive even number "
            "(a Longformer attends window / 2 tokens on each side, so it must be even)"
        )
    if attention_window > max_positions:
        raise ConversionError(
            f"attention_window = {attention_window} exceeds max_positions = {max_positions}"
        )
    if max_positions < source_positions:
        raise ConversionError(
            f"max_positions = {max_positions} is below the source model's {source_positions} positions"
        )
