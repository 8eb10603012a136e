"""The house rules of the source tree: small modules, and packages that talk through public names only."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

SOURCE = PROJECT_ROOT / "src" / "tokenrec_pipeline"
MAX_MODULE_LINES = 600
MODULES = sorted(SOURCE.rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package(path: Path) -> str:
    """The package a file belongs to (its folder as a dotted name)."""
    return ".".join(path.relative_to(SOURCE.parent).parent.parts)


def test_the_source_tree_is_found():
    assert len(MODULES) > 50, SOURCE


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SOURCE)))
def test_no_module_is_longer_than_600_lines(path: Path):
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path.relative_to(SOURCE)} has {lines} lines: split it by concern"


def test_no_private_name_is_imported_across_packages():
    """``from tokenrec_pipeline.a.b import _x`` is allowed inside package ``a`` only: a private name is the
    module's own business, and a package that needs it from outside should get a public, documented one."""
    offences = []
    for path in MODULES:
        importer = _package(path)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom) or node.level or not (node.module or "").startswith(
                "tokenrec_pipeline"
            ):
                continue
            source = node.module
            is_package = (SOURCE.parent / source.replace(".", "/")).is_dir()
            source_package = source if is_package else source.rpartition(".")[0]
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__") and source_package != importer:
                    offences.append(f"{path.relative_to(SOURCE)}:{node.lineno} imports {alias.name} from {source}")
    assert not offences, "\n".join(offences)

