"""Numeric precision of the language models: fp32, bf16 autocast (CPU and CUDA), fp16 (CUDA), int8 (CPU).

A setting is what a user writes in the parameters (``auto | fp32 | bf16 | fp16 | int8``); :func:`resolve_precision`
turns it into what runs on this device:

* ``auto``: bf16 autocast on CUDA devices with bf16 (fp16 on older GPUs for training, fp32 for inference) and on
  CPUs with native bf16 arithmetic (AVX512-BF16 or AMX, see :func:`cpu_bf16_support`); fp32 elsewhere, because
  without those instructions bf16 is emulated and slower than fp32.
* ``int8``: inference only, CPU only: dynamic quantisation of every ``nn.Linear`` (weights int8, activations
  quantised per batch) through :func:`quantize_linear_int8`; VNNI makes it fast where present.

``python -m tokenrec_pipeline.models.precision`` prints which path this machine takes.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import platform
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

TRAINING_PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
INFERENCE_PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16", "int8")
# Older parameter files and saved models wrote `mixed_precision: no`.
_ALIASES = {"no": "fp32", "float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
# /proc/cpuinfo flags of CPUs with native bf16 dot products.
_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@lru_cache(maxsize=1)
def cpu_bf16_support() -> tuple[bool, str]:
    """Whether this CPU computes bf16 natively, and why (the flags or the reason for "no").

    ``torch.backends.cpu.get_cpu_capability()`` says "AVX512" on CPUs with and without AVX512-BF16 alike,
    so on Linux the CPU flags decide; elsewhere only the "AMX" capability counts as a yes.
    """
    capability = torch.backends.cpu.get_cpu_capability()
    cpuinfo = Path("/proc/cpuinfo")
    if platform.system() == "Linux" and cpuinfo.exists():
        flags: set[str] = set()
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
        found = [flag for flag in _BF16_CPU_FLAGS if flag in flags]
        if found:
            return True, f"CPU flags {', '.join(found)} (torch capability {capability})"
        return False, f"no avx512_bf16/amx_bf16 CPU flag (torch capability {capability})"
    if "AMX" in capability.upper():
        return True, f"torch capability {capability}"
    return False, f"torch capability {capability} (no native bf16 known)"


def check_precision(setting: str | None, inference: bool, parameter: str = "precision") -> str:
    """The setting in canonical spelling (``None`` -> "auto"); a clear error naming ``parameter`` otherwise."""
    allowed = INFERENCE_PRECISIONS if inference else TRAINING_PRECISIONS
    value = _ALIASES.get(str(setting).lower(), str(setting).lower()) if setting is not None else "auto"
    if value not in allowed:
        raise ValueError(f"{parameter} must be one of {', '.join(allowed)}; got {setting!r}.")
    return value


def resolve_precision(
    setting: str | None, device: torch.device | str, inference: bool, parameter: str = "precision"
) -> str:
    """A precision setting -> the one that runs on ``device``: "fp32", "bf16", "fp16" or "int8".

    Args:
        setting: ``auto | fp32 | bf16 | fp16 | int8`` (``int8`` only with ``inference``); ``None`` = auto.
        device: Where the model runs.
        inference: Inference (eval, no gradients) rather than training.
        parameter: The parameter's name, for error messages.

    Raises:
        ValueError: Unknown setting, int8 for training or on CUDA, fp16 on the CPU.
    """
    device = torch.device(device)
    value = check_precision(setting, inference, parameter)
    if value == "auto":
        if device.type == "cuda":
            if torch.cuda.is_bf16_supported():
                return "bf16"
            return "fp32" if inference else "fp16"
        return "bf16" if device.type == "cpu" and cpu_bf16_support()[0] else "fp32"
    if value == "int8" and device.type != "cpu":
        raise ValueError(f"{parameter}=int8 (dynamic quantisation) runs on the CPU only; this model is on {device}.")
    if value == "fp16" and device.type != "cuda":
        raise ValueError(f"{parameter}=fp16 needs a CUDA device; on the CPU use bf16 or fp32.")
    if value == "bf16" and device.type == "cpu" and not cpu_bf16_support()[0]:
        logger.warning("%s=bf16 on a CPU without native bf16 (%s): emulated, likely slower than fp32.",
                       parameter, cpu_bf16_support()[1])
    return value


def inference_precision_of(configured: str, requested: str | None, device: torch.device, parameter: str) -> str:
    """The precision a model's inference runs at on ``device``: ``requested`` when given, else the model's
    ``configured`` setting (errors name ``parameter``, the model's parameter, in that case)."""
    if requested is not None:
        return resolve_precision(requested, device, inference=True, parameter="precision")
    return resolve_precision(configured, device, inference=True, parameter=parameter)


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a resolved precision (``None``: run as stored, fp32 or int8)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def autocast(device: torch.device, precision: str) -> Any:
    """``torch.autocast`` for a resolved precision on ``device`` (a no-op for fp32 and int8)."""
    dtype = autocast_dtype(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def quantize_linear_int8(module: nn.Module, inplace: bool = False) -> nn.Module:
    """``module`` (a copy unless ``inplace``) with every ``nn.Linear`` dynamically quantised to int8.

    CPU inference only; embeddings and norms stay fp32. Without ``inplace`` the original is left untouched
    (it may still be trained).
    """
    twin = (module if inplace else copy.deepcopy(module)).cpu().eval()
    with warnings.catch_warnings():
        # torch 2.13 points eager-mode quantisation users at torchao; the eager API is still the one that
        # needs no extra package and gives the VNNI kernels.
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(twin, {nn.Linear}, dtype=torch.qint8, inplace=True)


def int8_copy(model: nn.Module) -> nn.Module:
    """An int8 inference copy of a model whose transformer sits in ``model.backbone.model``.

    The transformer's Linear layers are quantised (a peft model is merged first: quantised layers cannot run
    LoRA adapters); heads stay fp32. The copy is cached on ``model`` until one of its weights changes (every
    in-place update, an optimiser step or ``load_state_dict``, bumps a tensor's version counter).
    """
    weights_version = tuple(parameter._version for parameter in model.parameters())
    cached = model.__dict__.get("_int8_copy")
    if cached is not None and cached[0] == weights_version:
        return cached[1]
    model.__dict__["_int8_copy"] = None  # never deep-copy a previous copy along
    twin = copy.deepcopy(model).cpu().eval()
    backbone = twin.backbone
    if backbone.is_peft:
        backbone.model = backbone.model.merge_and_unload()
    backbone.model = quantize_linear_int8(backbone.model, inplace=True)
    model.__dict__["_int8_copy"] = (weights_version, twin)
    return twin


def describe_machine() -> str:
    """One paragraph: which precision ``auto`` picks for training and inference here, and why."""
    lines = []
    supported, why = cpu_bf16_support()
    lines.append(f"CPU: native bf16 {'yes' if supported else 'no'} ({why}).")
    engines = [engine for engine in torch.backends.quantized.supported_engines if engine != "none"]
    lines.append(
        f"  auto on CPU -> training {resolve_precision('auto', 'cpu', inference=False)}, "
        f"inference {resolve_precision('auto', 'cpu', inference=True)}; "
        f"int8 kernels: {', '.join(engines) or 'none'}."
    )
    if torch.cuda.is_available():
        lines.append(
            f"CUDA: {torch.cuda.get_device_name(0)}; auto -> training {resolve_precision('auto', 'cuda', False)}, "
            f"inference {resolve_precision('auto', 'cuda', True)}."
        )
    else:
        lines.append("CUDA: not available.")
    return "\n".join(lines)


if __name__ == "__main__":
    print(describe_machine())
