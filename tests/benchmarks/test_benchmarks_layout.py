"""benchmarks/ sits at the repository root, outside the installed package: nothing installed imports it."""

from __future__ import annotations

import ast
from pathlib import Path

from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[2]


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_installed_code_never_imports_the_benchmarks() -> None:
    offenders = {str(path.relative_to(ROOT)): sorted(name for name in _imported_modules(path)
                                                     if name.split(".")[0] == "benchmarks"
                                                     or name.startswith("tokenrec_pipeline.benchmarks"))
                 for path in (ROOT / "src").rglob("*.py")}
    assert {path: names for path, names in offenders.items() if names} == {}


def test_the_package_build_leaves_the_benchmarks_out() -> None:
    packages = find_packages(where=str(ROOT / "src"))
    assert "tokenrec_pipeline" in packages
    assert not [name for name in packages if "benchmarks" in name.split(".")]
    assert (ROOT / "benchmarks" / "__init__.py").is_file()


def test_docs_list_every_benchmark_with_its_command() -> None:
    listed = (ROOT / "docs" / "BENCHMARKS.md").read_text(encoding="utf-8")
    names = sorted(path.stem for path in (ROOT / "benchmarks").glob("*.py") if path.stem != "__init__")
    assert names and [name for name in names if f"python -m benchmarks.{name}" not in listed] == []
