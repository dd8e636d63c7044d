"""Parameter overrides from the command line: `-p KEY=VALUE` pairs and `--params FILE.yaml`, routed to
the stages that have them."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml

from lab.params import STAGES, ConfigError, unknown


def split_overrides(pairs: dict[str, Any], fields: dict[str, list[str]]) -> dict[str, dict]:
    """Route `stage.key` or bare `key` overrides to the stages of `fields` (stage -> its parameter
    names: the stages this command runs) that have them; a command that runs one stage refuses
    another stage's parameter rather than ignore it."""
    out: dict[str, dict] = {s: {} for s in fields}
    for key, value in pairs.items():
        if "." in key:
            stage, name = key.split(".", 1)
            if stage not in STAGES:
                raise ConfigError(f"-p {key}: unknown stage {stage!r}; stages are {list(STAGES)}")
            if stage not in fields:
                raise ConfigError(
                    f"-p {key}: this command runs stage {', '.join(fields)} only; set {stage}'s "
                    f"parameters where it runs (python -m lab run -p {key}=...)"
                )
            if name not in fields[stage]:
                raise ConfigError(unknown(stage, name, fields[stage]))
            out[stage][name] = value
            continue
        targets = [s for s in fields if key in fields[s]]
        if not targets:
            every = sorted({n for names in fields.values() for n in names})
            close = difflib.get_close_matches(key, every, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            owner = "no stage has a" if len(fields) > 1 else f"stage {next(iter(fields))} has no"
            raise ConfigError(f"-p {key}: {owner} parameter {key!r}{hint}")
        for s in targets:
            out[s][key] = value
    return out


def parse_pairs(items: list[str]) -> dict[str, Any]:
    """The one parser of `-p KEY=VALUE`: KEY is `stage.name` (or `name` for every stage that has
    it), VALUE is YAML. Route the result with `split_overrides`."""
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"-p {item!r}: write KEY=VALUE, e.g. -p pretrain.lr=3e-4")
        pairs[key.strip()] = parse_value(value)
    return pairs


def read_params_file(path) -> dict:
    """`--params FILE.yaml`: shaped like a profile ({stage: {key: value}}) or flat ({stage.key:
    value}); returned flat, as `-p` pairs."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"--params {path}: no such file") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"--params {path}: not valid YAML ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--params {path}: expected a mapping of stage: {{key: value}}")
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict) and key in STAGES:
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


def parse_value(text: str) -> Any:
    """A command-line value: YAML scalars and lists (`3e-4`, `true`, `[128, 512]`, `jieba`)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):  # YAML 1.1 reads 3e-4 as a string
        try:
            return float(value)
        except ValueError:
            return value
    return text if value is None else value
