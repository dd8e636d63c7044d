"""Stage parameters: a frozen dataclass per stage whose fields carry their help text and bounds,
checked for type, choice and range when it is built, filled from a profile and validated once.

A stage declares its parameters in its driver and composes the shared groups of `lab.groups`
(masking, training loop, segmenter). A profile is a YAML parameter set shipped in `lab/profiles/`:
`cpu.yaml` holds every parameter of every stage; `smoke.yaml` and `gpu.yaml` change sizes and counts
on top of it.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

import yaml

from lab.core.errors import LabError

STAGES = ("corpus", "wwm", "pretrain", "distill", "longify", "evaluate")
PROFILES = ("smoke", "cpu", "gpu", "gpu-check")
RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class ConfigError(LabError, ValueError):
    """A parameter is unknown, of the wrong type, or impossible; the message names it."""


def param(help: str, *, choices: tuple | None = None, min: float | None = None) -> Any:
    """A required dataclass field with a help text and optional bounds (no default: profiles fill it)."""
    return field(metadata={"help": help, "choices": choices, "min": min})


@dataclass(frozen=True)
class StageConfig:
    """Fields every stage has. A stage's class lists its groups before this one:
    `class PretrainConfig(Masking, Loop, StageConfig)`; each group's `check` runs in turn."""

    run_id: str = param("run folder under data/runs/ and reports/ (letters, digits, . _ -)")
    profile: str = param("parameter set the other values came from", choices=PROFILES)
    seed: int = param("random seed for everything the stage samples", min=0)

    stage = ""  # set by each subclass; not a field

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        after = cls.__mro__[cls.__mro__.index(StageConfig) + 1 :]
        if any("check" in vars(base) for base in after):  # its check() would never be called
            raise TypeError(f"{cls.__name__}: list parameter groups before StageConfig")

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            _check_type(self.stage, f.name, value, hints[f.name])
            meta = f.metadata
            if meta.get("choices") and value not in meta["choices"]:
                raise ConfigError(
                    f"{self.stage}.{f.name} = {value!r} is not one of {list(meta['choices'])}"
                )
            if meta.get("min") is not None:
                for v in value if isinstance(value, list) else [value]:
                    if v < meta["min"]:
                        raise ConfigError(
                            f"{self.stage}.{f.name} = {value!r}: must be at least {meta['min']}"
                        )
        if not RUN_ID.match(self.run_id):
            raise ConfigError(
                f"run_id = {self.run_id!r}: use 1-64 letters, digits, '.', '_' or '-' "
                "(it names a folder)"
            )
        self.check()

    def check(self) -> None:
        """Cross-field checks; stages and groups raise ConfigError naming the parameters, then
        call `super().check()`."""

    def params(self) -> dict:
        """The values that define the stage's result (everything but run_id)."""
        d = dataclasses.asdict(self)
        d.pop("run_id")
        return d

    def fail(self, name: str, why: str) -> ConfigError:
        return ConfigError(f"{self.stage}.{name} = {getattr(self, name)!r}: {why}")


def _check_type(stage: str, name: str, value: Any, hint: Any) -> None:
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(
                f"{stage}.{name}: expected a list of {item.__name__}, got {value!r} "
                f"({type(value).__name__}); e.g. -p {stage}.{name}='[...]'"
            )
        for v in value:
            _check_type(stage, name, v, item)
        return
    ok = {
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        bool: lambda v: isinstance(v, bool),
        str: lambda v: isinstance(v, str),
    }[hint](value)
    if not ok:
        raise ConfigError(
            f"{stage}.{name}: expected {hint.__name__}, got {value!r} ({type(value).__name__})"
        )


# ---------------------------------------------------------------------------------------------
# profiles and resolution


@cache
def profile_values(profile: str) -> dict[str, dict]:
    """Every stage's parameters under `profile` (cpu.yaml with the profile's changes on top)."""
    if profile not in PROFILES:
        raise ConfigError(f"profile = {profile!r}: choose one of {list(PROFILES)}")
    base = _read_profile("cpu")
    if profile != "cpu":
        for stage, values in _read_profile(profile).items():
            unknown_keys = set(values) - set(base.get(stage, {}))
            if unknown_keys:
                raise ConfigError(
                    f"profile {profile}: unknown {stage} parameters {sorted(unknown_keys)}"
                )
            base[stage] = {**base[stage], **values}
    return base


def _read_profile(name: str) -> dict[str, dict]:
    text = resources.files("lab").joinpath("profiles", f"{name}.yaml").read_text("utf-8")
    data = yaml.safe_load(text) or {}
    return {stage: dict(values or {}) for stage, values in data.items()}


def field_names(cls: type[StageConfig]) -> list[str]:
    """A stage's parameters (every field but run_id and profile)."""
    return [f.name for f in dataclasses.fields(cls) if f.name not in ("run_id", "profile")]


def load(cls: type[StageConfig], namespace: dict | None = None, *, run_id: str | None = None,
         profile: str | None = None, overrides: dict | None = None) -> StageConfig:  # fmt: skip
    """The validated parameters of stage `cls`.

    From a notebook, pass `globals()`: `run_id`, `profile` and the stage's parameters are read from
    it. A value left at its `cpu` default takes the profile's value; a changed value overrides the
    profile. When `python -m lab run` executed the notebook it injected `lab_resolved = True` with
    every value already resolved, and those are taken as they are.
    """
    stage = cls.stage
    ns = dict(namespace or {})
    profile = profile or ns.get("profile", "cpu")
    run_id = run_id or ns.get("run_id") or profile  # `python -m lab run` names a run so too
    names = field_names(cls)
    cpu = profile_values("cpu")[stage]
    values = dict(profile_values(profile)[stage])
    resolved = ns.get("lab_resolved", False)
    for name in names:
        if name in ns and (resolved or ns[name] != cpu.get(name)):
            values[name] = ns[name]
    for key, value in (overrides or {}).items():
        if key not in names:
            raise ConfigError(unknown(stage, key, names))
        values[key] = value
    missing = [n for n in names if n not in values]
    if missing:
        raise ConfigError(f"{stage}: no value for {missing} in profile {profile}")
    return cls(run_id=run_id, profile=profile, **{n: values[n] for n in names})


def unknown(stage: str, key: str, names: list[str]) -> str:
    close = difflib.get_close_matches(key, names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(names)}"
    return f"unknown parameter {key!r} for stage {stage}{hint}"
