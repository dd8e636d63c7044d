"""The command line (a contract: tests and users call exactly this).

python -m lab run [--profile smoke|cpu|gpu] [--run-id ID] [--from STAGE] [--to STAGE]
                  [-p KEY=VALUE ...] [--params FILE.yaml] [--dry-run]
python -m lab report RUN_ID
python -m lab sources [--fetch] [--all]
python -m lab bench {wwm,pretrain,locality,distill,longify,all} [--quick]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from lab import config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="execute the stage notebooks and render the reports")
    p.add_argument(
        "--profile", default="cpu", choices=config.PROFILES, help="parameter set (default cpu)"
    )
    p.add_argument("--run-id", default=None, help="run name (default: the profile's name)")
    p.add_argument("--from", dest="start", metavar="STAGE", help="first stage (name or 01-06)")
    p.add_argument("--to", dest="stop", metavar="STAGE", help="last stage (name or 01-06)")
    p.add_argument(
        "-p", dest="params", action="append", default=[], metavar="KEY=VALUE",
        help="override a parameter: stage.key=value, or key=value for every stage that has it",
    )  # fmt: skip
    p.add_argument("--params", dest="params_file", metavar="FILE.yaml", help="overrides as YAML")
    p.add_argument(
        "--dry-run", action="store_true", help="validate and print the plan; run nothing"
    )

    p = sub.add_parser("report", help="re-render the HTML reports and index of a run")
    p.add_argument("run_id")

    p = sub.add_parser("sources", help="list (or fetch) the offline data sources")
    p.add_argument("--fetch", action="store_true", help="download and verify the default sources")
    p.add_argument("--all", action="store_true", help="with --fetch: the optional sources too")
    p.add_argument(
        "--cache-dir",
        default="",
        help="cache folder (default $ZH_MINILAB_CACHE or ~/.cache/zh-minilab)",
    )

    p = sub.add_parser("bench", help="side-by-side benchmarks; the last line is JSON")
    p.add_argument("name", choices=["wwm", "pretrain", "locality", "distill", "longify", "all"])
    p.add_argument(
        "--quick", action="store_true", help="a smaller run that still measures both sides"
    )

    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except config.ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to continue", file=sys.stderr)
        return 130
    except Exception as err:
        from lab import corpus, pipeline, runs, sources

        known = (pipeline.PipelineError, runs.StageError, sources.SourceError, corpus.CorpusError)
        if isinstance(err, known):
            print(f"error: {err}", file=sys.stderr)
            return 1
        raise


def cmd_run(args) -> int:
    from lab import pipeline

    overrides = {}
    if args.params_file:
        overrides.update(_params_file(Path(args.params_file)))
    for item in args.params:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise config.ConfigError(f"-p {item!r}: write KEY=VALUE, e.g. -p pretrain.lr=3e-4")
        overrides[key.strip()] = config.parse_value(value)
    stages = pipeline.select(args.start, args.stop)
    run_id = args.run_id or args.profile
    return pipeline.run(run_id, args.profile, stages, overrides, dry_run=args.dry_run)


def _params_file(path: Path) -> dict:
    """A YAML file shaped like a profile ({stage: {key: value}}) or flat ({stage.key: value})."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise config.ConfigError(f"--params {path}: no such file") from None
    except yaml.YAMLError as err:
        raise config.ConfigError(f"--params {path}: not valid YAML ({err})") from None
    if not isinstance(data, dict):
        raise config.ConfigError(f"--params {path}: expected a mapping of stage: {{key: value}}")
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict) and key in config.STAGES:
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


def cmd_report(args) -> int:
    from lab import pipeline

    return pipeline.report(args.run_id)


def cmd_sources(args) -> int:
    from lab import sources

    rows = sources.table(args.cache_dir)
    if args.fetch:
        for row in rows:
            if row["default"] or args.all:
                src = sources.REGISTRY[row["name"]]
                sources.fetch(src.archive, args.cache_dir)
        rows = sources.table(args.cache_dir)
    print(f"cache: {sources.cache_dir(args.cache_dir)}")
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        mark = "cached " if r["cached"] else "missing"
        extra = "" if r["default"] else "  (optional)"
        print(f"  {r['name']:<{width}}  {mark}  {r['package']:<24} {r['description']}{extra}")
        print(f"  {'':<{width}}           licence: {r['licence']}")
    missing = [r["name"] for r in rows if not r["cached"] and r["default"]]
    if missing and not args.fetch:
        print("fetch the missing ones with: python -m lab sources --fetch")
    return 0


def cmd_bench(args) -> int:
    from lab import bench

    return bench.main(args.name, quick=args.quick)


def stage_main(stage: str, run, argv: list[str] | None = None) -> int:
    """`python -m lab.<stage>`: one stage without its notebook (and under torchrun / accelerate
    launch for data-parallel training). Writes the same artifacts and manifest as the notebook."""
    parser = argparse.ArgumentParser(prog=f"python -m lab.{stage}")
    parser.add_argument("--run-id", default=None)
    parser.add_argument("--profile", default="cpu", choices=config.PROFILES)
    parser.add_argument("-p", dest="params", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    overrides = {}
    for item in args.params:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"error: -p {item!r}: write KEY=VALUE", file=sys.stderr)
            return 2
        overrides[key.removeprefix(f"{stage}.")] = config.parse_value(value)
    try:
        cfg = config.load(
            stage, run_id=args.run_id or args.profile, profile=args.profile, overrides=overrides
        )
    except config.ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    manifest = run(cfg)
    if manifest:
        print(f"{stage}: done, manifest {manifest['dir'] / 'manifest.json'}")
    return 0


COMMANDS = {"run": cmd_run, "report": cmd_report, "sources": cmd_sources, "bench": cmd_bench}
