"""Model names: the one place a model's name is made from its kind and seed, and read back.

A run's models are `teacher`, `assistant` (the teacher assistant), the distilled students
`one-stage-s1234` / `two-stage-s1235` (kind and distillation seed), `longformer`, and on the tasks
`scratch` and the `char n-gram LR` baseline. Everything that builds, groups, titles or selects
models by kind goes through these functions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

TEACHER, ASSISTANT, LONGFORMER = "teacher", "assistant", "longformer"
SCRATCH, NGRAM = "scratch", "char n-gram LR"
STUDENT_KINDS = ("one-stage", "two-stage")  # distilled from the teacher / from the assistant
_SEEDED = re.compile(r"^(?P<kind>.+)-s(?P<seed>\d+)$")


@dataclass(frozen=True)
class Name:
    kind: str  # teacher, assistant, one-stage, two-stage, longformer, scratch, ... or any name
    seed: int | None  # the distillation seed of a student


def student(kind: str, seed: int) -> str:
    """The name of a student of `kind` distilled with `seed`: `two-stage-s1234`."""
    if kind not in STUDENT_KINDS:
        raise ValueError(f"student kind {kind!r}: one of {list(STUDENT_KINDS)}")
    return f"{kind}-s{seed}"


def parse(name: str) -> Name:
    """`two-stage-s1234` -> Name("two-stage", 1234); any other name is its own kind."""
    m = _SEEDED.match(name)
    if m and m["kind"] in STUDENT_KINDS:
        return Name(m["kind"], int(m["seed"]))
    return Name(name, None)


def kind(name: str) -> str:
    """A model's kind: its name without the distillation seed."""
    return parse(name).kind


def is_student(name: str) -> bool:
    return kind(name) in STUDENT_KINDS


def taught_by(name: str) -> str:
    """The model a distilled model learned from: the assistant for a two-stage student."""
    return ASSISTANT if kind(name) == "two-stage" else TEACHER


def title(name: str) -> str:
    """How a model is called in prose: `one-stage student`, `teacher assistant`, `teacher`."""
    k = kind(name)
    if k in STUDENT_KINDS:
        return f"{k} student"
    return "teacher assistant" if k == ASSISTANT else k


def selected(name: str, wanted: list[str]) -> bool:
    """Whether `wanted` (names, kinds, or `all`) selects the model `name`."""
    return "all" in wanted or name in wanted or kind(name) in wanted
