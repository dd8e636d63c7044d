import ast
import dataclasses
import json
from pathlib import Path

import pytest

from lab import config, overrides
from lab.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("profile", config.PROFILES)
def test_every_profile_validates_every_stage(profile):
    for stage in config.CONFIGS:
        cfg = config.load(stage, profile=profile, run_id="x")
        assert cfg.profile == profile
        assert dataclasses.is_dataclass(cfg)


def test_profiles_change_values_not_keys():
    cpu = config.profile_values("cpu")
    for profile in ("smoke", "gpu"):
        other = config.profile_values(profile)
        assert {s: set(v) for s, v in other.items()} == {s: set(v) for s, v in cpu.items()}


def test_unknown_key_names_it_and_suggests():
    with pytest.raises(ConfigError, match="'min_char'.*did you mean 'min_chars'"):
        config.load("corpus", overrides={"min_char": 3})


def test_wrong_type_names_parameter():
    with pytest.raises(ConfigError, match="corpus.min_chars: expected int, got 'abc'"):
        config.load("corpus", overrides={"min_chars": "abc"})
    with pytest.raises(ConfigError, match="corpus.to_simplified: expected bool"):
        config.load("corpus", overrides={"to_simplified": 1})
    with pytest.raises(ConfigError, match="corpus.sources: expected a list of str"):
        config.load("corpus", overrides={"sources": "peoples_daily"})


def test_impossible_values_fail():
    with pytest.raises(ConfigError, match="min_chars .* must be below corpus.max_chars"):
        config.load("corpus", overrides={"min_chars": 500, "max_chars": 100})
    with pytest.raises(ConfigError, match="held-out share"):
        config.load("corpus", overrides={"valid_frac": 0.3, "test_frac": 0.3})
    with pytest.raises(ConfigError, match="must be at least 0"):
        config.load("corpus", overrides={"valid_frac": -0.1})
    with pytest.raises(ConfigError, match="run_id"):
        config.load("corpus", run_id="../escape")
    with pytest.raises(ConfigError, match="profile"):
        config.load("corpus", profile="tpu")


def test_config_is_frozen():
    cfg = config.load("corpus")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.min_chars = 3


def test_notebook_namespace_changed_values_override_profile():
    ns = {"profile": "smoke", "run_id": "r", **config.profile_values("cpu")["corpus"]}
    assert config.load("corpus", ns).max_docs_per_source == 400  # left at default: profile wins
    ns["min_chars"] = 7
    assert config.load("corpus", ns).min_chars == 7  # changed: overrides the profile
    ns["lab_resolved"] = True  # injected by `python -m lab run`: values are final
    assert config.load("corpus", ns).max_docs_per_source == 0


def test_split_overrides_routes_bare_and_dotted_keys():
    routed = overrides.split_overrides({"corpus.min_chars": 3, "seed": 7}, config.FIELDS)
    assert routed["corpus"] == {"min_chars": 3, "seed": 7} and routed["evaluate"] == {"seed": 7}
    with pytest.raises(ConfigError, match="no stage has a parameter 'sed'.*'seed'"):
        overrides.split_overrides({"sed": 1}, config.FIELDS)
    with pytest.raises(ConfigError, match="unknown stage 'corpse'"):
        overrides.split_overrides({"corpse.min_chars": 3}, config.FIELDS)
    one = {"wwm": config.FIELDS["wwm"]}  # `python -m lab.wwm`: one stage's parameters only
    with pytest.raises(ConfigError, match="runs stage wwm only"):
        overrides.split_overrides({"pretrain.lr": 1e-3}, one)
    with pytest.raises(ConfigError, match="stage wwm has no parameter 'lr'"):
        overrides.split_overrides({"lr": 1e-3}, one)


def test_parse_value():
    assert overrides.parse_value("3e-4") == 3e-4
    assert overrides.parse_value("[128, 512]") == [128, 512]
    assert overrides.parse_value("true") is True
    assert overrides.parse_value("jieba") == "jieba"


@pytest.mark.parametrize("path", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.name)
def test_notebook_parameters_cell_shows_the_cpu_profile(path):
    """The parameters cell is the documentation: every field, the cpu values, a comment each."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    cells = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, "exactly one cell tagged 'parameters'"
    source = "".join(cells[0]["source"])
    values = {}
    lines = source.splitlines()
    for node in ast.parse(source).body:
        assert isinstance(node, ast.Assign), "the parameters cell holds assignments only"
        values[node.targets[0].id] = ast.literal_eval(node.value)
        text = "\n".join(lines[node.lineno - 1 : node.end_lineno])
        assert "#" in text, f"parameter without a comment: {text}"
    stage = next(s for s in config.CONFIGS if path.name.endswith(f"_{s}.ipynb"))
    expected = config.profile_values("cpu")[stage]
    assert {
        k: v for k, v in values.items() if k not in ("run_id", "profile", "lab_resolved")
    } == expected
    assert values["profile"] == "cpu" and "run_id" in values
