"""The models evaluate measures: the run's own, by name, and models a researcher brings, a model
folder or a hub name, each under a short name (the folder's or the hub name).

`check` is what the dry run and the start of `python -m lab run` call: every entry of
`evaluate.models` is a name this run makes or a model that can be read, with a masked-LM head and a
tokenizer that reads Chinese, before any training starts.
"""

from __future__ import annotations

from pathlib import Path

from lab import runs
from lab.core import modelsource, names, vocab
from lab.core.errors import LabError

OWN = (names.TEACHER, names.ASSISTANT, *names.STUDENT_KINDS, names.LONGFORMER)
PARAM = "evaluate.models"


class LineupError(LabError, ValueError):
    """A model named for evaluation cannot be used; the message names it and the fix."""


def is_own(spec: str) -> bool:
    """A name of this run's models (or `all`): a kind, or a student with its seed."""
    return spec == "all" or names.kind(spec) in OWN


def models_of_run(run_id: str, *, all_seeds: bool) -> dict[str, dict]:
    """Every model folder the run produced, by role: teacher, assistant, students, longformer."""
    out: dict[str, dict] = {}
    if runs.read_manifest(runs.stage_dir(run_id, "pretrain")):
        out[names.TEACHER] = {
            "dir": runs.stage_dir(run_id, "pretrain") / "model",
            "role": "teacher",
        }
    if runs.read_manifest(runs.stage_dir(run_id, "distill")):
        folder = runs.stage_dir(run_id, "distill") / "models"
        seen: set[str] = set()
        for name in sorted(p.name for p in folder.iterdir() if p.is_dir()):
            if not all_seeds and names.kind(name) in seen:
                continue
            seen.add(names.kind(name))
            role = "student" if names.is_student(name) else names.kind(name)
            out[name] = {"dir": folder / name, "role": role}
    if runs.read_manifest(runs.stage_dir(run_id, "longify")):
        out[names.LONGFORMER] = {
            "dir": runs.stage_dir(run_id, "longify") / "model",
            "role": "longformer",
        }
    return out


def outside(specs: list[str], *, weights: bool = True) -> dict[str, dict]:
    """The entries of `specs` that are not this run's names, resolved: short name -> {"dir", "role":
    "outside", "source": provenance}. Raises LineupError for one that cannot be used."""
    out: dict[str, dict] = {}
    for spec in specs:
        if is_own(spec):
            continue
        try:
            src = modelsource.resolve(spec, param=PARAM, weights=weights)
        except modelsource.ModelSourceError as err:
            if "/" in spec or spec.startswith((".", "~")):  # a path or an org/name: no run name
                raise LineupError(str(err)) from None
            raise LineupError(
                f"{err}. (Nor is {spec!r} a model this run makes: {', '.join(OWN)}, or a student "
                "with its seed such as one-stage-s1234.)"
            ) from None
        modelsource.check_masked_lm(src.folder, spec, param=PARAM)
        short = src.label
        if short in out or is_own(short):
            short = f"{short} ({src.origin})"
        out[short] = {"dir": src.folder, "role": "outside", "source": src.provenance()}
    return out


def problems(specs: list[str], found: dict | None = None) -> list[str]:
    """What is wrong with `evaluate.models`, as lines (empty: nothing). `found` is the run's models
    when they exist; before they do, any name of the run's kinds is accepted."""
    lines = []
    if found is not None:
        missing = [s for s in specs if s != "all" and is_own(s) and s not in found]
        if missing:
            lines.append(f"{PARAM} names {missing}; this run has {list(found)}")
    for spec in specs:  # each on its own: every bad one is named
        try:
            outside([spec], weights=False)
        except LabError as err:
            lines.append(str(err))
    return lines


def packed_vocabs(corpus_m: dict, wwm_m: dict) -> dict[str, Path]:
    """The vocabularies the wwm stage packed, by name: their tokenizer folders."""
    saved = iter(k.removeprefix("vocab_") for k in wwm_m["outputs"] if k.startswith("vocab_"))
    folders = {}
    for entry in wwm_m["params"]["vocabs"]:  # a folder's name as the stage gave it, not recomputed
        name = entry if entry in vocab.BUILTIN else next(saved)
        home = corpus_m["dir"] if entry in vocab.BUILTIN else wwm_m["dir"]
        folders[name] = Path(home) / "vocab" / name
    return folders


def packed_vocab(tokenizer, folders: dict[str, Path]) -> str | None:
    """Which of the packed vocabularies a tokenizer has, token for token (None: another)."""
    mine = tokenizer.get_vocab()
    for name, folder in folders.items():
        if vocab.same_tokens(vocab.load(folder).get_vocab(), mine):
            return name
    return None
