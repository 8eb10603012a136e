"""Parameter mappings (``parameters_*.yml`` blocks) into config dataclasses."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any


def dataclass_from_dict(cls: type, values: Mapping[str, Any], what: str) -> Any:
    """``cls(**values)``, rejecting keys that are not fields of the dataclass ``cls``.

    A typo in a parameter file would otherwise be ignored silently; ``what`` names the parameter block in
    the error message ("llm4rec model", "autoregressive training", ...).
    """
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"Unknown {what} parameter(s) {unknown}; valid ones are {sorted(known)}.")
    return cls(**dict(values))
