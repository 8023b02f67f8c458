"""The layout holds what docs/architecture.md says: each side of ``search/`` imports only itself and the sides
below it, read from the code's own imports (every ``import``/``from ... import``, at any depth of a module).

    config  <  records  <  review  <  run  <  cli

``search.errors`` may be imported by every side (it imports only ``search.config``); ``trainables`` imports no
part of ``search``."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

SIDES = ("config", "records", "review", "run", "cli")  # lowest first: a side may import those before it


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (functions import heavy modules late)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}  # from search.run import warmstart
    return names


def side_of(module: str) -> str | None:
    """``search.run.tuner`` → run; ``search.cli`` → cli; ``search.errors``, ``search`` → None (shared)."""
    parts = module.split(".")
    if parts[0] != "search" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in SIDES else None


def test_each_side_imports_only_itself_and_the_sides_below():
    wrong = []
    for path in sorted((ROOT / "search").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        side = side_of(module)
        for imported in imports_of(path):
            other = side_of(imported)
            if side is None and module == "search.errors" and other not in (None, "config"):
                wrong.append(f"{module} imports {imported}")
            if side is not None and other is not None and SIDES.index(other) > SIDES.index(side):
                wrong.append(f"{module} ({side}) imports {imported} ({other})")
    assert not wrong, "\n".join(wrong)


def test_every_module_lives_on_a_side():
    loose = [p.name for p in (ROOT / "search").glob("*.py") if p.stem not in ("__init__", "cli", "errors")]
    assert not loose, f"modules outside the side packages: {loose}"


def test_trainables_never_imports_search():
    offenders = [f"{p.name}: {name}" for p in sorted((ROOT / "trainables").rglob("*.py"))
                 for name in imports_of(p) if name.split(".")[0] == "search"]
    assert not offenders, offenders


def test_the_rule_catches_a_sideways_import(tmp_path):
    # The check itself: review importing run is what it exists to refuse.
    (tmp_path / "m.py").write_text("def f():\n    from search.run.tuner import run_search\n")
    assert "search.run.tuner" in imports_of(tmp_path / "m.py") and SIDES.index(side_of("search.run.tuner")) > \
        SIDES.index("review")


def test_an_installed_hps_has_every_package():
    # The Docker image installs the project without -e: a package setuptools does not find is missing there.
    import tomllib

    from setuptools import find_packages

    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    found = set(find_packages(str(ROOT), include=include))
    packages = {".".join(p.parent.relative_to(ROOT).parts) for side in ("search", "trainables")
                for p in (ROOT / side).rglob("__init__.py")}
    assert packages and packages <= found, packages - found
