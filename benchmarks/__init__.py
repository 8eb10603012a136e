"""Benchmark scripts that print figures (``python -m benchmarks.<name> --help``)."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path

import yaml


def apply_set_overrides(configs: dict[str, dict], items: Iterable[str] | None, fields: Iterable[str],
                        example: str) -> None:
    """Apply ``--set model.key=value`` items (values parsed as YAML scalars) to per-model config dicts;
    exits with a message naming the bad item when the model or key is unknown."""
    fields = set(fields)
    for item in items or []:
        try:
            dotted, raw = item.split("=", 1)
            model, key = dotted.split(".", 1)
        except ValueError:
            sys.exit(f"error: --set {item!r} must look like {example!r}.")
        if model not in configs or key not in fields:
            sys.exit(f"error: --set {item!r}: model must be one of {'|'.join(configs)} and key one of "
                     f"{', '.join(sorted(fields))}.")
        configs[model][key] = yaml.safe_load(raw)


def yaml_section(path: Path, key: str) -> dict:
    """The top-level ``key`` block of the YAML file ``path`` (exits with a message when either is missing)."""
    if not path.is_file():
        sys.exit(f"error: {path} not found; run from the project root or pass --conf-dir.")
    with open(path, encoding="utf-8") as handle:
        section = (yaml.safe_load(handle) or {}).get(key)
    if not isinstance(section, dict):
        sys.exit(f"error: {path} has no '{key}' section.")
    return section
