"""Precision settings: what ``auto`` resolves to, and the clear errors for impossible combinations."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tokenrec_pipeline.models import precision as precision_module
from tokenrec_pipeline.models.precision import (
    autocast_dtype,
    check_precision,
    describe_machine,
    quantize_linear_int8,
    resolve_precision,
)


@pytest.fixture
def cpu_bf16(monkeypatch: pytest.MonkeyPatch):
    """Pretend the CPU has (or lacks) native bf16."""

    def set_support(supported: bool) -> None:
        monkeypatch.setattr(precision_module, "cpu_bf16_support", lambda: (supported, "test"))

    return set_support


def test_auto_follows_the_cpu(cpu_bf16) -> None:
    cpu_bf16(True)
    assert resolve_precision("auto", "cpu", inference=False) == "bf16"
    assert resolve_precision(None, "cpu", inference=True) == "bf16"
    cpu_bf16(False)
    assert resolve_precision("auto", "cpu", inference=False) == "fp32"
    assert resolve_precision("auto", "cpu", inference=True) == "fp32"
    # explicit settings are kept whatever the CPU
    assert resolve_precision("fp32", "cpu", inference=True) == "fp32"
    assert resolve_precision("int8", "cpu", inference=True) == "int8"


def test_old_spellings_and_errors() -> None:
    assert check_precision("no", inference=False) == "fp32"  # the old mixed_precision: no
    assert check_precision("BF16", inference=True) == "bf16"
    with pytest.raises(ValueError, match=r"llm4rec.training.precision must be one of auto, fp32, bf16, fp16"):
        resolve_precision("int8", "cpu", inference=False, parameter="llm4rec.training.precision")
    with pytest.raises(ValueError, match="runs on the CPU only"):
        resolve_precision("int8", "cuda", inference=True)
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", "cpu", inference=False)
    with pytest.raises(ValueError, match="got 'fp8'"):
        check_precision("fp8", inference=True)


def test_autocast_dtypes() -> None:
    assert autocast_dtype("bf16") is torch.bfloat16
    assert autocast_dtype("fp16") is torch.float16
    assert autocast_dtype("fp32") is None and autocast_dtype("int8") is None


def test_int8_quantisation_copies_and_stays_close() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8)).eval()
    x = torch.randn(16, 32)
    quantized = quantize_linear_int8(model)
    assert isinstance(model[0], nn.Linear) and not isinstance(model[0], torch.ao.nn.quantized.dynamic.Linear)
    assert isinstance(quantized[0], torch.ao.nn.quantized.dynamic.Linear)
    expected, got = model(x), quantized(x)
    assert torch.nn.functional.cosine_similarity(expected, got, dim=1).min() > 0.99
    assert not torch.equal(expected, got)


def test_describe_machine_names_the_paths() -> None:
    text = describe_machine()
    assert "auto on CPU -> training" in text and "int8 kernels" in text


def test_a_models_own_setting_is_named_in_its_error_and_a_request_overrides_it() -> None:
    from tokenrec_pipeline.models.precision import inference_precision_of

    cpu = torch.device("cpu")
    assert inference_precision_of("fp32", None, cpu, "llm4rec.model.inference_precision") == "fp32"
    assert inference_precision_of("fp32", "int8", cpu, "llm4rec.model.inference_precision") == "int8"
    with pytest.raises(ValueError, match="autoregressive.model.inference_precision=fp16 needs a CUDA device"):
        inference_precision_of("fp16", None, cpu, "autoregressive.model.inference_precision")
    with pytest.raises(ValueError, match="^precision=fp16 needs a CUDA device"):
        inference_precision_of("fp32", "fp16", cpu, "autoregressive.model.inference_precision")
