"""Parameter mappings (``parameters_*.yml`` blocks) into config dataclasses, and the two settings every trainer
shares: the device (:func:`resolve_device`) and torch's thread count (:func:`limit_torch_threads`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import fields
from typing import Any

import torch


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


def resolve_device(device: str | torch.device | None = None, parameter: str = "device") -> torch.device:
    """``None`` / ``""`` / ``"auto"`` -> CUDA when available, else CPU; anything else as given.

    Raises:
        ValueError: naming ``parameter``, for a device string torch does not parse or a CUDA device on a
            machine without CUDA.
    """
    if device is None or str(device) in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"{parameter}: {device!r} is not a torch device ({err}); use 'auto', 'cpu' or 'cuda'."
        ) from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{parameter}: {device!r} requested but CUDA is not available; use 'auto' or 'cpu'.")
    return resolved


@contextlib.contextmanager
def limit_torch_threads(num_threads: int | None) -> Iterator[None]:
    """Temporarily set torch's intra-op thread count (``None``: no change); restores it on exit."""
    if num_threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(int(num_threads))
    try:
        yield
    finally:
        torch.set_num_threads(previous)
