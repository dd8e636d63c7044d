"""The stage contract, declared once in each stage driver: what it reads, what it reports, and how it
runs on its own (`python -m lab.<stage>`, also under torchrun / accelerate launch).

The pipeline, the dry run and the cache all read a stage from here: its parameters, its upstream
stages (their manifests are its inputs), the files and folders of the user's it reads, and the
headline metrics the index shows. Which code a stage's cache key covers is derived from the modules
its driver imports (`lab.codebase`), never listed by hand.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass

from lab import codebase, lock, overrides, params, runs
from lab.core.errors import LabError


def _none(cfg) -> dict[str, str]:
    return {}


@dataclass(frozen=True)
class Contract:
    name: str  # the stage, e.g. "pretrain"
    notebook: str  # its notebook in notebooks/
    description: str  # one line: what the stage makes
    params: type[params.StageConfig]  # its parameters
    upstream: tuple[str, ...]  # stages whose artifacts it reads: they must be complete
    headline: Callable[[dict], dict]  # its manifest -> the index's headline metrics
    verify: tuple[str, ...] = ()  # upstream stages whose files are checked against their hashes
    optional: tuple[str, ...] = ()  # stages it reads when they are complete
    sources: Callable[[params.StageConfig], dict[str, str]] = _none  # user files it reads: hashes

    @property
    def module(self) -> str:
        return f"lab.{self.name}"

    def load(self, namespace: dict | None = None, **kwargs) -> params.StageConfig:
        """The stage's validated parameters (`lab.params.load`); in its notebook,
        `cfg = pretrain.STAGE.load(globals())`."""
        return params.load(self.params, namespace, **kwargs)

    def code(self) -> str:
        """Digest of the driver's source and of every `lab` module it imports."""
        return codebase.digest(self.module)

    def inputs(self, cfg) -> dict[str, str]:
        """What the stage's result depends on besides its parameters and code: the manifests of
        its upstream stages (by hash) and the user files it reads."""
        out = {
            s: runs.upstream(cfg.run_id, s, verify=s in self.verify)["digest"]
            for s in self.upstream
        }
        for s in self.optional:
            if runs.read_manifest(runs.stage_dir(cfg.run_id, s)):
                out[s] = runs.upstream(cfg.run_id, s, verify=s in self.verify)["digest"]
        return out | self.sources(cfg)

    def upstream_manifest(self, cfg, stage: str) -> dict:
        """The manifest of a finished upstream stage (its files were checked with the inputs),
        with its folder as `dir`."""
        return runs.upstream(cfg.run_id, stage, verify=False)

    def stage(self, cfg) -> runs.Stage:
        """The stage's cache check, work folder and manifest for `cfg`."""
        return runs.Stage(cfg, self.inputs(cfg), self.code())


def locked(run: Callable) -> Callable:
    """A stage's run(cfg), holding its run id's lock (`lab.lock`) while it works."""

    @functools.wraps(run)
    def wrapper(cfg):
        with lock.hold(cfg.run_id, f"{cfg.stage} stage"):
            return run(cfg)

    return wrapper


def main(contract: Contract, run: Callable, argv: list[str] | None = None) -> int:
    """`python -m lab.<stage>`: one stage without its notebook (and under torchrun / accelerate
    launch for data-parallel training). Writes the same artifacts and manifest as the notebook."""
    parser = argparse.ArgumentParser(
        prog=f"python -m lab.{contract.name}",
        description=f"Stage {contract.notebook[:2]}, {contract.name}: {contract.description}",
    )
    parser.add_argument("--run-id", default=None, help="run name (default: the profile's name)")
    parser.add_argument(
        "--profile", default="cpu", choices=params.PROFILES, help="parameter set (default cpu)"
    )
    parser.add_argument(
        "-p", dest="params", action="append", default=[], metavar="KEY=VALUE",
        help=f"override a parameter of this stage: key=value or {contract.name}.key=value",
    )  # fmt: skip
    args = parser.parse_args(argv)
    try:
        pairs = overrides.parse_pairs(args.params)
        fields = {contract.name: params.field_names(contract.params)}
        routed = overrides.split_overrides(pairs, fields)[contract.name]
        cfg = params.load(
            contract.params, run_id=args.run_id or args.profile, profile=args.profile,
            overrides=routed,
        )  # fmt: skip
        manifest = run(cfg)
    except LabError as err:
        return exit_code(err)
    if manifest:
        print(f"{contract.name}: done, manifest {manifest['dir'] / runs.MANIFEST}")
    return 0


def exit_code(err: LabError) -> int:
    """A user's error on stderr, without a traceback; exit status 2 for a bad parameter, else 1."""
    print(f"error: {err}", file=sys.stderr)
    return 2 if isinstance(err, params.ConfigError) else 1
