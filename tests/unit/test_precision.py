"""Device, dtype and quantization plans, with the hardware checks injected."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from transformers import BitsAndBytesConfig

from gemma_chat.domain.errors import ConfigurationError
from gemma_chat.infrastructure.llm.loading import precision
from gemma_chat.infrastructure.llm.loading.precision import (
    check_attention,
    plan_precision,
    select_device,
)
from gemma_chat.shared.config import ModelSettings, PerformanceSettings


def always(value: bool) -> Callable[[], bool]:
    def check() -> bool:
        return value

    return check


def never_called() -> bool:
    raise AssertionError("this hardware check should not have been made")


def plan(
    *,
    device: str = "cpu",
    dtype: str = "auto",
    quantization: str = "none",
    cuda: bool = False,
    bf16: Callable[[], bool] = never_called,
    bnb: Callable[[], bool] = never_called,
) -> precision.PrecisionPlan:
    return plan_precision(
        ModelSettings(dtype=dtype, quantization=quantization),  # type: ignore[arg-type]
        PerformanceSettings(device=device),  # type: ignore[arg-type]
        cuda_available=always(cuda),
        bf16_supported=bf16,
        bitsandbytes_installed=bnb,
    )


# -- select_device -----------------------------------------------------------------------------


def test_cpu_is_cpu_without_asking_for_cuda() -> None:
    assert select_device("cpu", cuda_available=never_called) == "cpu"


@pytest.mark.parametrize(("available", "device"), [(True, "cuda"), (False, "cpu")])
def test_auto_takes_cuda_when_it_is_available(available: bool, device: str) -> None:
    assert select_device("auto", cuda_available=always(available)) == device


def test_cuda_when_available_is_cuda() -> None:
    assert select_device("cuda", cuda_available=always(True)) == "cuda"


def test_cuda_without_a_cuda_device_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match=r"GEMMA_PERFORMANCE__DEVICE=cuda.*auto or cpu"):
        select_device("cuda", cuda_available=always(False))


def test_an_unknown_device_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match=r"'tpu'.*auto, cpu, cuda"):
        select_device("tpu", cuda_available=always(True))


def test_the_default_cuda_check_works_on_this_machine() -> None:
    assert select_device("auto") in ("cpu", "cuda")


# -- plan_precision: no quantization -----------------------------------------------------------


def test_auto_dtype_on_cpu_is_bfloat16() -> None:
    result = plan(device="cpu")
    assert (result.device, result.dtype, result.quantization) == ("cpu", torch.bfloat16, "none")
    assert result.bnb_config is None
    assert not result.cpu_dynamic_int8


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [("float32", torch.float32), ("bfloat16", torch.bfloat16), ("float16", torch.float16)],
)
@pytest.mark.parametrize(("device", "cuda"), [("cpu", False), ("cuda", True)])
def test_an_explicit_dtype_is_used_as_is(
    dtype: str, expected: torch.dtype, device: str, cuda: bool
) -> None:
    result = plan(device=device, cuda=cuda, dtype=dtype)
    assert (result.device, result.dtype, result.quantization) == (device, expected, "none")


@pytest.mark.parametrize(("bf16", "expected"), [(True, torch.bfloat16), (False, torch.float16)])
def test_auto_dtype_on_cuda_depends_on_bfloat16_support(bf16: bool, expected: torch.dtype) -> None:
    result = plan(device="cuda", cuda=True, bf16=always(bf16))
    assert (result.device, result.dtype) == ("cuda", expected)


def test_auto_device_resolves_before_the_dtype_is_chosen() -> None:
    assert plan(device="auto", cuda=False).device == "cpu"
    assert plan(device="auto", cuda=True, bf16=always(False)).dtype == torch.float16


# -- plan_precision: fp16 / bf16 ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("quantization", "expected"), [("fp16", torch.float16), ("bf16", torch.bfloat16)]
)
@pytest.mark.parametrize(("device", "cuda"), [("cpu", False), ("cuda", True)])
@pytest.mark.parametrize("dtype", ["auto", "float32"])
def test_fp16_and_bf16_are_dtypes_not_quantization(
    quantization: str, expected: torch.dtype, device: str, cuda: bool, dtype: str
) -> None:
    result = plan(
        device=device, cuda=cuda, dtype=dtype, quantization=quantization, bf16=always(True)
    )
    assert (result.device, result.dtype, result.quantization) == (device, expected, "none")
    assert result.bnb_config is None


# -- plan_precision: int8 / int4 ---------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["auto", "bfloat16", "float16", "float32"])
def test_int8_on_cpu_is_dynamic_int8_in_float32(dtype: str) -> None:
    result = plan(device="cpu", dtype=dtype, quantization="int8")
    assert (result.device, result.dtype, result.quantization) == ("cpu", torch.float32, "int8")
    assert result.cpu_dynamic_int8
    assert result.bnb_config is None


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_int4_on_cpu_is_planned_for_the_native_engines_4_bit_kernels(device: str) -> None:
    # the loader refuses it where the transformers engine would have to run it (no CPU kernels)
    result = plan(device=device, cuda=False, quantization="int4")
    assert (result.device, result.dtype, result.quantization) == ("cpu", torch.float32, "int4")
    assert result.bnb_config is None
    assert not result.cpu_dynamic_int8


def test_int8_on_cuda_is_a_bitsandbytes_8bit_config() -> None:
    result = plan(
        device="cuda", cuda=True, quantization="int8", bf16=always(True), bnb=always(True)
    )
    assert (result.device, result.quantization) == ("cuda", "int8")
    assert isinstance(result.bnb_config, BitsAndBytesConfig)
    assert result.bnb_config.load_in_8bit
    assert not result.bnb_config.load_in_4bit
    assert not result.cpu_dynamic_int8


@pytest.mark.parametrize(("bf16", "compute"), [(True, torch.bfloat16), (False, torch.float16)])
def test_int4_on_cuda_is_a_nf4_config_computing_in_the_chosen_dtype(
    bf16: bool, compute: torch.dtype
) -> None:
    result = plan(
        device="cuda", cuda=True, quantization="int4", bf16=always(bf16), bnb=always(True)
    )
    config: Any = result.bnb_config
    assert isinstance(config, BitsAndBytesConfig)
    assert (result.quantization, result.dtype) == ("int4", compute)
    assert config.load_in_4bit
    assert config.bnb_4bit_quant_type == "nf4"
    assert config.bnb_4bit_compute_dtype == compute
    assert config.bnb_4bit_use_double_quant


@pytest.mark.parametrize("quantization", ["int8", "int4"])
def test_quantization_on_cuda_without_bitsandbytes_says_what_to_install(
    quantization: str,
) -> None:
    with pytest.raises(ConfigurationError, match=r"needs bitsandbytes.*gemma-chat\[cuda\]"):
        plan(
            device="cuda",
            cuda=True,
            quantization=quantization,
            bf16=always(True),
            bnb=always(False),
        )


def test_the_bitsandbytes_check_defaults_to_looking_for_the_package(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    looked_for: list[str] = []

    def installed(module: str) -> bool:
        looked_for.append(module)
        return False

    monkeypatch.setattr(precision, "_installed", installed)
    with pytest.raises(ConfigurationError, match="bitsandbytes"):
        plan_precision(
            ModelSettings(quantization="int8"),
            PerformanceSettings(device="cuda"),
            cuda_available=always(True),
            bf16_supported=always(True),
        )
    assert looked_for == ["bitsandbytes"]


def test_describe_gives_plain_names() -> None:
    assert plan(device="cpu", quantization="int8").describe() == {
        "device": "cpu",
        "dtype": "float32",
        "quantization": "int8",
    }


# -- check_attention ---------------------------------------------------------------------------


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_auto_attention_leaves_the_choice_to_transformers(device: str) -> None:
    assert check_attention("auto", device) is None  # type: ignore[arg-type]


@pytest.mark.parametrize("requested", ["sdpa", "eager"])
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_sdpa_and_eager_work_everywhere(requested: str, device: str) -> None:
    assert check_attention(requested, device) == requested  # type: ignore[arg-type]


def test_flash_attention_on_cpu_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="needs a CUDA device"):
        check_attention("flash_attention_2", "cpu")


def test_flash_attention_without_the_package_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(precision, "_installed", lambda module: False)
    with pytest.raises(ConfigurationError, match="pip install flash-attn"):
        check_attention("flash_attention_2", "cuda")


def test_flash_attention_on_cuda_with_the_package_is_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(precision, "_installed", lambda module: module == "flash_attn")
    assert check_attention("flash_attention_2", "cuda") == "flash_attention_2"
