"""The package's own import graph: which `lab` modules a module imports, transitively, counting
imports inside functions. A stage's cache key covers the code of exactly these modules (their syntax
tree: comments, docstrings and layout do not count), and the layering test checks the rules of the
package against the same graph."""

from __future__ import annotations

import ast
import hashlib
from functools import cache
from pathlib import Path

import lab

ROOT = Path(lab.__file__).resolve().parent


def module_file(name: str, root: Path = ROOT) -> Path | None:
    """lab.core.mlm -> <root>/core/mlm.py (or a package's __init__.py); None if it is not a module."""
    parts = name.split(".")[1:]
    base = root.joinpath(*parts)
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def modules(root: Path = ROOT) -> list[str]:
    """Every module of the package, by dotted name."""
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out.append(".".join(("lab", *parts)))
    return out


def direct_imports(name: str, root: Path = ROOT) -> set[str]:
    """The `lab` modules `name` imports anywhere in its source (functions included), each with the
    packages it passes through (importing lab.core.mlm runs lab/core/__init__.py first)."""
    path = module_file(name, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = imports_in(path.read_text(encoding="utf-8"), package, root)
    found.discard(name)
    return found


def imports_in(source: str, package: str = "lab", root: Path = ROOT) -> set[str]:
    """The `lab` modules a piece of Python source imports (a notebook's code, a module's)."""
    tree = ast.parse(source)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            # `from lab.core import mlm` imports the module lab.core.mlm
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            if t == "lab" or t.startswith("lab."):
                parts = t.split(".")
                for i in range(2, len(parts) + 1):  # the packages on the way, then the module
                    if module_file(".".join(parts[:i]), root):
                        found.add(".".join(parts[:i]))
    return found


def closure(*names: str, root: Path = ROOT) -> set[str]:
    """`names` and every `lab` module they import, transitively."""
    seen, todo = {"lab"}, list(names)  # importing any module runs the package's __init__ first
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += direct_imports(m, root) - seen
    return seen


@cache
def digest(*names: str, root: Path = ROOT) -> str:
    """sha256 over the code of `names` and every `lab` module they import: changed code there,
    and only there, changes the digest; an edited comment or docstring does not."""
    h = hashlib.sha256(lab.__version__.encode())
    for m in sorted(closure(*names, root=root)):
        h.update(m.encode())
        h.update(code_of(module_file(m, root).read_text(encoding="utf-8")).encode())
    return h.hexdigest()


def code_of(source: str) -> str:
    """What a module computes: its syntax tree without docstrings (comments and layout are not in
    a syntax tree), written back as source (the same text on every Python that parses it)."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
    return ast.unparse(tree)
