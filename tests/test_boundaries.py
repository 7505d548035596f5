"""Package boundaries: the runtime imports none of the tools built on it, so no package imports another in a circle."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Each package, and the top-level packages it must not import (directly or inside a function).
# kit (the console command) sits on top of everything, so nothing it runs may import it back; Ray is an optional
# extra that only deploy/ may import.
FORBIDDEN = {"serving": {"export", "clients", "bench", "pipelines", "kit", "tests", "deploy", "ray"},
             "clients": {"export", "bench", "pipelines", "kit", "tests", "deploy", "ray"},
             "export": {"clients", "bench", "pipelines", "kit", "tests", "deploy", "ray"},
             "pipelines": {"export", "bench", "kit", "tests", "deploy", "ray"},
             "bench": {"kit", "tests"}}


def imported_packages(path: Path) -> set[str]:
    """Top-level names of every absolute import in the file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_stay_inside_its_boundary(package: str) -> None:
    crossings = {str(path.relative_to(ROOT)): sorted(imported_packages(path) & FORBIDDEN[package])
                 for path in sorted((ROOT / package).rglob("*.py"))}
    assert {path: names for path, names in crossings.items() if names} == {}
