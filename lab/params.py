"""Stage parameters, the machinery: a frozen dataclass per stage whose fields carry their help text
and bounds, checked for type, choice and range when it is built; cross-field checks in `check()`."""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from typing import Any

from lab.core.errors import LabError

STAGES = ("corpus", "wwm", "pretrain", "distill", "longify", "evaluate")
PROFILES = ("smoke", "cpu", "gpu")
RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class ConfigError(LabError, ValueError):
    """A parameter is unknown, of the wrong type, or impossible; the message names it."""


def param(help: str, *, choices: tuple | None = None, min: float | None = None) -> Any:
    """A required dataclass field with a help text and optional bounds (no default: profiles fill it)."""
    return field(metadata={"help": help, "choices": choices, "min": min})


@dataclass(frozen=True)
class StageConfig:
    """Fields every stage has."""

    run_id: str = param("run folder under data/runs/ and reports/ (letters, digits, . _ -)")
    profile: str = param("parameter set the other values came from", choices=PROFILES)
    seed: int = param("random seed for everything the stage samples", min=0)

    stage = ""  # set by each subclass; not a field

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
                values = value if isinstance(value, list) else [value]
                for v in values:
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
        """Cross-field checks; subclasses raise ConfigError naming the parameters."""

    def params(self) -> dict:
        """The values that define the stage's result (everything but run_id)."""
        d = dataclasses.asdict(self)
        d.pop("run_id")
        return d


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


def check_share(cfg: StageConfig, name: str) -> None:
    if getattr(cfg, name) > 1:
        raise ConfigError(
            f"{cfg.stage}.{name} = {getattr(cfg, name)}: a share of the steps, between 0 and 1"
        )
