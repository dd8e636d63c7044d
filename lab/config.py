"""Stage parameters: one frozen dataclass per stage, filled from a profile and validated once.

A profile is a YAML parameter set shipped in `lab/profiles/`. `cpu.yaml` holds every parameter of
every stage (it is the default and what the notebooks' `parameters` cells show); `smoke.yaml` and
`gpu.yaml` change sizes and counts on top of it, never code paths.
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

STAGES = ("corpus", "wwm", "pretrain", "distill", "longify", "evaluate")
PROFILES = ("smoke", "cpu", "gpu")
RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class ConfigError(ValueError):
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


# ---------------------------------------------------------------------------------------------
# 01 corpus


@dataclass(frozen=True)
class CorpusConfig(StageConfig):
    stage = "corpus"
    sources: list[str] = param(
        "registry names (python -m lab sources) and/or paths to .txt / .jsonl / datasets folders"
    )
    text_encoding: str = param("encoding of user text files, e.g. utf-8 or gb18030")
    max_docs_per_source: int = param("documents kept per source (0: all)", min=0)
    min_chars: int = param("documents shorter than this (characters) are dropped", min=1)
    max_chars: int = param(
        "longer documents are cut at sentence ends into pieces this long", min=16
    )
    long_doc_chars: int = param(
        "People's Daily paragraphs are grouped into documents this long", min=256
    )
    to_simplified: bool = param("convert Traditional to Simplified Chinese (OpenCC t2s)")
    valid_frac: float = param(
        "share of documents in the valid split (by hash of the text)", min=0.0
    )
    test_frac: float = param("share of documents in the test split (by hash of the text)", min=0.0)
    task_eval_frac: float = param(
        "share of each labelled task in its valid and in its test split", min=0.0
    )
    task_max_train: int = param("training examples kept per labelled task (0: all)", min=0)
    task_max_eval: int = param("valid / test examples kept per labelled task (0: all)", min=0)
    compact_vocab_size: int = param(
        "size of the compact CLUE-style vocab built from the corpus", min=200
    )
    cache_dir: str = param("sources cache; empty: $ZH_MINILAB_CACHE or ~/.cache/zh-minilab")

    def check(self):
        if self.valid_frac + self.test_frac >= 0.5:
            raise ConfigError(
                f"corpus.valid_frac + corpus.test_frac = {self.valid_frac + self.test_frac:g}: "
                "keep the held-out share below 0.5"
            )
        if 2 * self.task_eval_frac >= 0.8:
            raise ConfigError("corpus.task_eval_frac: keep it below 0.4 (valid and test each)")
        if self.min_chars >= self.max_chars:
            raise ConfigError(
                f"corpus.min_chars ({self.min_chars}) must be below corpus.max_chars ({self.max_chars})"
            )
        if not self.sources:
            raise ConfigError("corpus.sources is empty: name at least one source")


# ---------------------------------------------------------------------------------------------
# 02 whole-word masking


@dataclass(frozen=True)
class WwmConfig(StageConfig):
    stage = "wwm"
    segmenter: str = param(
        "jieba (rjieba where identical) or jieba-python", choices=("jieba", "jieba-python")
    )
    user_dict: str = param("path of a jieba user dictionary (empty: none)")
    user_words: list[str] = param("extra words the segmenter must keep whole")
    vocabs: list[str] = param("vocabularies to tokenize with: compact and/or full")
    seq_lengths: list[int] = param("packed sequence lengths to store (tokens)", min=8)
    num_proc: int = param("processes for segmentation and tokenization", min=1)
    check_docs: int = param("documents compared with pure jieba before rjieba is trusted", min=0)
    mlm_probability: float = param(
        "share of tokens chosen for masking (statistics and demos)", min=0.0
    )
    max_predictions: int = param("cap on chosen tokens per sequence (0: none)", min=0)
    mask_replace_prob: float = param("share of chosen words replaced by [MASK]", min=0.0)
    random_replace_prob: float = param("share of chosen words replaced by random tokens", min=0.0)
    stats_sequences: int = param("sequences sampled for the masking statistics", min=10)

    def check(self):
        bad = [v for v in self.vocabs if v not in ("compact", "full")]
        if bad or not self.vocabs:
            raise ConfigError(
                f"wwm.vocabs = {self.vocabs}: choose from compact, full (at least one)"
            )
        if not self.seq_lengths:
            raise ConfigError("wwm.seq_lengths is empty: give at least one length, e.g. [128]")
        if not 0 < self.mlm_probability < 1:
            raise ConfigError(
                f"wwm.mlm_probability = {self.mlm_probability}: must be between 0 and 1"
            )
        if self.mask_replace_prob + self.random_replace_prob > 1:
            raise ConfigError("wwm.mask_replace_prob + wwm.random_replace_prob must not exceed 1")


CONFIGS: dict[str, type[StageConfig]] = {"corpus": CorpusConfig, "wwm": WwmConfig}


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
            unknown = set(values) - set(base.get(stage, {}))
            if unknown:
                raise ConfigError(
                    f"profile {profile}: unknown {stage} parameters {sorted(unknown)}"
                )
            base[stage] = {**base[stage], **values}
    return base


def _read_profile(name: str) -> dict[str, dict]:
    text = resources.files("lab").joinpath("profiles", f"{name}.yaml").read_text("utf-8")
    data = yaml.safe_load(text) or {}
    return {stage: dict(values or {}) for stage, values in data.items()}


def load(
    stage: str,
    namespace: dict | None = None,
    *,
    run_id: str | None = None,
    profile: str | None = None,
    overrides: dict | None = None,
) -> StageConfig:
    """The validated config of `stage`.

    From a notebook, pass `globals()`: `run_id`, `profile` and the stage's parameters are read from
    it. A value left at its `cpu` default takes the profile's value; a changed value overrides the
    profile. When `python -m lab run` executed the notebook it injected `lab_resolved = True` with
    every value already resolved, and those are taken as they are.
    """
    if stage not in CONFIGS:
        raise ConfigError(f"unknown stage {stage!r}; stages are {list(CONFIGS)}")
    cls = CONFIGS[stage]
    ns = dict(namespace or {})
    profile = profile or ns.get("profile", "cpu")
    run_id = run_id or ns.get("run_id", "default")
    names = [f.name for f in dataclasses.fields(cls) if f.name not in ("run_id", "profile")]
    cpu = profile_values("cpu")[stage]
    values = dict(profile_values(profile)[stage])
    resolved = ns.get("lab_resolved", False)
    for name in names:
        if name in ns and (resolved or ns[name] != cpu.get(name)):
            values[name] = ns[name]
    for key, value in (overrides or {}).items():
        if key not in names:
            raise ConfigError(_unknown(stage, key, names))
        values[key] = value
    missing = [n for n in names if n not in values]
    if missing:
        raise ConfigError(f"{stage}: no value for {missing} in profile {profile}")
    return cls(run_id=run_id, profile=profile, **{n: values[n] for n in names})


def _unknown(stage: str, key: str, names: list[str]) -> str:
    close = difflib.get_close_matches(key, names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(names)}"
    return f"unknown parameter {key!r} for stage {stage}{hint}"


def split_overrides(pairs: dict[str, Any], stages: tuple[str, ...] = STAGES) -> dict[str, dict]:
    """Route `stage.key` or bare `key` overrides to the stages that have them."""
    out: dict[str, dict] = {s: {} for s in stages}
    for key, value in pairs.items():
        if "." in key:
            stage, name = key.split(".", 1)
            if stage not in CONFIGS:
                raise ConfigError(f"-p {key}: unknown stage {stage!r}; stages are {list(CONFIGS)}")
            fields = field_names(stage)
            if name not in fields:
                raise ConfigError(_unknown(stage, name, fields))
            if stage in out:
                out[stage][name] = value
            continue
        targets = [s for s in stages if s in CONFIGS and key in field_names(s)]
        if not targets:
            every = sorted({n for s in CONFIGS for n in field_names(s)})
            close = difflib.get_close_matches(key, every, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"-p {key}: no stage has a parameter {key!r}{hint}")
        for s in targets:
            out[s][key] = value
    return out


def field_names(stage: str) -> list[str]:
    return [
        f.name for f in dataclasses.fields(CONFIGS[stage]) if f.name not in ("run_id", "profile")
    ]


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


def parameters_cell(stage: str) -> str:
    """The source of a notebook's `parameters` cell: cpu values, each with its help as comment."""
    cls = CONFIGS[stage]
    cpu = profile_values("cpu")[stage]
    lines = [
        'run_id = "default"  # run folder under data/runs/ and reports/',
        'profile = "cpu"  # smoke | cpu | gpu: values left as below take this profile\'s values',
        "lab_resolved = False  # python -m lab run sets True: every value below is final",
    ]
    for f in dataclasses.fields(cls):
        if f.name in ("run_id", "profile"):
            continue
        if "=" in f.metadata["help"]:
            raise ValueError(f"{stage}.{f.name}: papermill cannot parse '=' in a parameter comment")
        lines.append(f"{f.name} = {cpu[f.name]!r}  # {f.metadata['help']}")
    return "\n".join(lines)
