"""Every stage's parameters by stage name: the registry the notebooks, the command line and the dry
run look stages up in. Each stage declares its own parameters in its driver (a changed parameter
reruns that stage and the ones after it, nothing else); the machinery and the shared groups are
`lab.params`.
"""

from __future__ import annotations

from lab import corpus, distill, evaluate, longify, pretrain, wwm
from lab.params import PROFILES, STAGES, ConfigError, StageConfig, profile_values
from lab.params import field_names as _field_names
from lab.params import load as _load

__all__ = ["CONFIGS", "CONTRACTS", "FIELDS", "PROFILES", "STAGES", "ConfigError", "StageConfig", "load",
           "field_names", "profile_values"]  # fmt: skip

CONTRACTS = {m.STAGE.name: m.STAGE for m in (corpus, wwm, pretrain, distill, longify, evaluate)}
CONFIGS: dict[str, type[StageConfig]] = {s: c.params for s, c in CONTRACTS.items()}
FIELDS: dict[str, list[str]] = {s: _field_names(cls) for s, cls in CONFIGS.items()}


def load(stage: str, namespace: dict | None = None, **kwargs) -> StageConfig:
    """The validated parameters of `stage` (see `lab.params.load`): from a notebook,
    `config.load("pretrain", globals())`."""
    if stage not in CONFIGS:
        raise ConfigError(f"unknown stage {stage!r}; stages are {list(CONFIGS)}")
    return _load(CONFIGS[stage], namespace, **kwargs)


def field_names(stage: str) -> list[str]:
    return FIELDS[stage]
