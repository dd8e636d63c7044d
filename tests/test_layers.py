"""The package's rules, checked on its own import graph (imports inside functions count), and the
cache key that the graph decides: a changed module reruns exactly the stages that import it."""

import importlib
import shutil

import pytest

from lab import codebase, config

MODULES = codebase.modules()
DRIVERS = {f"lab.{s}" for s in config.STAGES}
CORE = {m for m in MODULES if m == "lab.core" or m.startswith("lab.core.")}
BENCH = {m for m in MODULES if m == "lab.bench" or m.startswith("lab.bench.")}
# above the drivers: the command line, the pipeline, the registry of stages, the dry run, the reports
TOP = {"lab.cli", "lab.__main__", "lab.pipeline", "lab.config", "lab.dryrun", "lab.crossrun",
       "lab.reports", "lab.terminal"} | BENCH  # fmt: skip
FIGURES = {"lab.viz", "lab.tables", "lab.explorers", "lab.cards"}


def graph() -> dict[str, set[str]]:
    return {m: codebase.direct_imports(m) for m in MODULES}


def test_there_is_no_import_cycle():
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m):
        state[m] = 1
        path.append(m)
        for n in sorted(edges.get(m, ())):
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(n) :] + [n]))
            if n not in state:
                visit(n)
        path.pop()
        state[m] = 2

    for m in MODULES:
        if m not in state:
            visit(m)


def test_the_core_imports_only_the_core():
    for m in CORE:
        outside = codebase.direct_imports(m) - CORE - {"lab"}
        assert not outside, (
            f"{m} imports {sorted(outside)}: the core knows nothing of stages or runs"
        )


def test_drivers_never_import_each_other_or_the_layer_above():
    for d in DRIVERS:
        reached = codebase.closure(d) & (DRIVERS | TOP)
        assert reached == {d}, f"{d} reaches {sorted(reached - {d})}"


@pytest.mark.parametrize("stage", config.STAGES)
def test_a_notebook_reaches_its_own_driver_only(stage):
    """A notebook's report is rendered again when the code it imports changes: a change to another
    stage's driver must not make it run again."""
    import json

    nb = json.loads(
        (codebase.ROOT.parent / "notebooks" / config.CONTRACTS[stage].notebook).read_text()
    )
    source = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    reached = codebase.closure(*codebase.imports_in(source)) & DRIVERS
    assert reached == {f"lab.{stage}"}, reached


def test_figures_and_widgets_import_no_stage():
    for m in FIGURES:
        reached = codebase.closure(m) & (DRIVERS | TOP | {"lab.runs", "lab.config", "lab.contract"})
        assert not reached, f"{m} reaches {sorted(reached)}"


def test_bench_imports_only_the_core():
    for m in BENCH:
        outside = codebase.direct_imports(m) - CORE - BENCH - {"lab"}
        assert not outside, f"{m} imports {sorted(outside)}"


def test_no_module_is_over_400_lines():
    for m in MODULES:
        n = len(codebase.module_file(m).read_text(encoding="utf-8").splitlines())
        assert n <= 400, f"{m} has {n} lines"


def test_function_level_imports_are_seen():
    assert codebase.imports_in("def f():\n    from lab.core import mlm\n") == {
        "lab.core",
        "lab.core.mlm",
    }


@pytest.mark.parametrize("stage", config.STAGES)
def test_every_stage_runs_as_a_module(stage, capsys):
    """`python -m lab.<stage> --help`: the module runs `main()` as a script, and main() answers."""
    source = codebase.module_file(f"lab.{stage}").read_text(encoding="utf-8")
    assert 'if __name__ == "__main__":\n    raise SystemExit(main())' in source
    with pytest.raises(SystemExit) as done:
        importlib.import_module(f"lab.{stage}").main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: python -m lab.{stage}" in out and "--run-id" in out and "--profile" in out


def test_a_changed_module_reruns_exactly_the_stages_that_import_it(tmp_path):
    """The cache key's code digest, on a temporary copy of the package: touch one core module and
    compare which stages' digests change with which stages import it."""
    root = tmp_path / "lab"
    shutil.copytree(codebase.ROOT, root, ignore=shutil.ignore_patterns("__pycache__"))
    stages = [f"lab.{s}" for s in config.STAGES]
    before = {s: codebase.digest(s, root=root) for s in stages}
    for module, expected in (
        ("lab.core.longformer", {"lab.longify"}),
        ("lab.core.kdcache", {"lab.distill"}),
        ("lab.core.tasks", {"lab.evaluate"}),
        ("lab.core.wordpiece", {"lab.wwm", "lab.longify"}),
    ):
        path = codebase.module_file(module, root)
        path.write_text(path.read_text(encoding="utf-8") + "\n_CHANGED = 1\n", encoding="utf-8")
        codebase.digest.cache_clear()
        after = {s: codebase.digest(s, root=root) for s in stages}
        changed = {s for s in stages if after[s] != before[s]}
        importing = {s for s in stages if module in codebase.closure(s, root=root)}
        assert changed == importing == expected, (module, changed, importing)
        before = after
    codebase.digest.cache_clear()


def _digests(root) -> dict[str, str]:
    codebase.digest.cache_clear()
    return {s: codebase.digest(f"lab.{s}", root=root) for s in config.STAGES}


def test_a_new_parameter_reruns_its_stage_and_a_comment_reruns_nothing(tmp_path):
    """Finer cache keys, on a temporary copy of the package: a parameter added to one stage changes
    that stage's code digest only (the stages after it rerun because its manifest changes); an
    edited comment or docstring changes no digest at all."""
    root = tmp_path / "lab"
    shutil.copytree(codebase.ROOT, root, ignore=shutil.ignore_patterns("__pycache__"))
    before = _digests(root)
    for stage, anchor in (("distill", "    keep_cache: bool"), ("corpus", "    num_proc: int")):
        path = root / f"{stage}.py"
        text = path.read_text(encoding="utf-8")
        assert anchor in text
        added = f'    new_knob: int = param("a new parameter", min=0)\n{anchor}'
        path.write_text(text.replace(anchor, added, 1), encoding="utf-8")
        after = _digests(root)
        assert {s for s in after if after[s] != before[s]} == {stage}, stage
        before = after
    for module in ("lab.params", "lab.core.train", "lab.core.masking"):  # imported by many stages
        path = codebase.module_file(module, root)
        text = path.read_text(encoding="utf-8")
        doc = text.index('"""', 3)  # end of the module's docstring
        edited = text[:doc] + " An edited docstring." + text[doc:] + "\n# a new comment\n\n\n"
        path.write_text(edited, encoding="utf-8")
        assert _digests(root) == before, module
    codebase.digest.cache_clear()
