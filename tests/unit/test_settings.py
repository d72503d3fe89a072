"""Settings from GEMMA_* environment variables, a .env file and keyword overrides."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gemma_chat.domain.errors import ConfigurationError
from gemma_chat.shared.config import (
    EMBEDDED_MODEL_NAME,
    Environment,
    LogLevel,
    Settings,
    get_settings,
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No GEMMA_* variable and no .env file of this machine may leak into a test."""
    for name in list(os.environ):
        if name.startswith("GEMMA_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


# -- defaults ----------------------------------------------------------------------------------


def test_without_any_variable_the_defaults_apply() -> None:
    settings = get_settings()
    assert isinstance(settings, Settings)
    assert settings.model.name == EMBEDDED_MODEL_NAME
    assert settings.model.temperature == 0.7
    assert settings.performance.device == "auto"
    assert settings.performance.huge_pages is True
    assert settings.cache.enabled is True
    assert settings.environment is Environment.DEVELOPMENT
    assert settings.log_level is LogLevel.INFO
    assert (settings.server.host, settings.server.port) == ("127.0.0.1", 8000)
    assert settings.server.api_key is None


# -- environment variables ---------------------------------------------------------------------


def test_environment_variables_set_every_section(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEMMA_MODEL__NAME", "google/gemma-3-1b-it")
    monkeypatch.setenv("GEMMA_MODEL__TEMPERATURE", "0.2")
    monkeypatch.setenv("GEMMA_PERFORMANCE__DEVICE", "cpu")
    monkeypatch.setenv("GEMMA_PERFORMANCE__HUGE_PAGES", "false")
    monkeypatch.setenv("GEMMA_CACHE__ENABLED", "false")
    monkeypatch.setenv("GEMMA_ENVIRONMENT", "production")
    monkeypatch.setenv("GEMMA_LOG_LEVEL", "WARNING")
    monkeypatch.setenv("GEMMA_SERVER__HOST", "0.0.0.0")
    monkeypatch.setenv("GEMMA_SERVER__PORT", "9000")
    settings = get_settings()
    assert settings.model.name == "google/gemma-3-1b-it"
    assert settings.model.temperature == 0.2
    assert settings.performance.device == "cpu"
    assert settings.performance.huge_pages is False
    assert settings.cache.enabled is False
    assert settings.environment is Environment.PRODUCTION
    assert settings.log_level is LogLevel.WARNING
    assert settings.server.host == "0.0.0.0"
    assert settings.server.port == 9000


def test_variable_names_are_case_insensitive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("gemma_model__top_k", "5")
    assert get_settings().model.top_k == 5


def test_a_secret_api_key_is_not_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEMMA_SERVER__API_KEY", "s3cret")
    settings = get_settings()
    assert settings.server.api_key is not None
    assert settings.server.api_key.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(settings)


def test_a_dotenv_file_in_the_working_directory_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("GEMMA_MODEL__TOP_K=7\nGEMMA_LOG_LEVEL=ERROR\n")
    settings = get_settings()
    assert settings.model.top_k == 7
    assert settings.log_level is LogLevel.ERROR


def test_an_environment_variable_wins_over_the_dotenv_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".env").write_text("GEMMA_MODEL__TOP_K=7\n")
    monkeypatch.setenv("GEMMA_MODEL__TOP_K", "9")
    assert get_settings().model.top_k == 9


def test_unrelated_variables_in_the_dotenv_file_are_ignored(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("OTHER_APP_SETTING=1\nDATABASE_URL=x\n")
    assert get_settings().model.name == EMBEDDED_MODEL_NAME


# -- invalid values ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value", "problem"),
    [
        ("GEMMA_MODEL__TEMPERATURE", "hot", "valid number"),
        ("GEMMA_MODEL__TEMPERATURE", "2.5", "less than or equal to 2"),
        ("GEMMA_MODEL__TOP_P", "0", "greater than 0"),
        ("GEMMA_MODEL__SEED", "-1", "greater than or equal to 0"),
        ("GEMMA_MODEL__DTYPE", "float8", "'auto', 'float32', 'bfloat16' or 'float16'"),
        ("GEMMA_MODEL__QUANTIZATION", "int2", "int8"),
        ("GEMMA_PERFORMANCE__DEVICE", "tpu", "'auto', 'cpu' or 'cuda'"),
        ("GEMMA_CACHE__ENABLED", "maybe", "valid boolean"),
        ("GEMMA_PERFORMANCE__HUGE_PAGES", "auto", "valid boolean"),
        ("GEMMA_CACHE__TTL_SECONDS", "0", "greater than 0"),
        ("GEMMA_ENVIRONMENT", "staging", "development"),
        ("GEMMA_LOG_LEVEL", "LOUD", "DEBUG"),
        ("GEMMA_SERVER__PORT", "70000", "less than or equal to 65535"),
        ("GEMMA_SERVER__PORT", "http", "valid integer"),
    ],
)
def test_a_bad_value_names_the_variable_and_the_problem(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, problem: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError) as info:
        get_settings()
    message = str(info.value)
    assert f"{variable}={value!r}" in message
    assert problem in message


def test_a_bad_temperature_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEMMA_MODEL__TEMPERATURE", "hot")
    with pytest.raises(ConfigurationError, match="GEMMA_MODEL__TEMPERATURE='hot'"):
        get_settings()


def test_every_bad_value_is_reported_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEMMA_MODEL__TEMPERATURE", "hot")
    monkeypatch.setenv("GEMMA_SERVER__PORT", "0")
    with pytest.raises(ConfigurationError) as info:
        get_settings()
    assert "GEMMA_MODEL__TEMPERATURE" in str(info.value)
    assert "GEMMA_SERVER__PORT" in str(info.value)


def test_a_misspelt_section_field_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEMMA_MODEL__TEMPRATURE", "0.1")
    with pytest.raises(ConfigurationError, match=r"GEMMA_MODEL__TEMPRATURE='0\.1': Extra inputs"):
        get_settings()


def test_the_configuration_error_is_a_value_error_and_hides_pydantic(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GEMMA_MODEL__TOP_K", "-1")
    with pytest.raises(ValueError, match="Invalid settings") as info:
        get_settings()
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


# -- keyword overrides -------------------------------------------------------------------------


def test_keyword_overrides_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEMMA_LOG_LEVEL", "WARNING")
    assert get_settings(log_level="DEBUG").log_level is LogLevel.DEBUG


def test_a_section_override_keeps_the_other_variables_of_that_section(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GEMMA_MODEL__NAME", "from-env")
    settings = get_settings(model={"temperature": 0.0})
    assert settings.model.temperature == 0.0
    assert settings.model.name == "from-env"


def test_an_invalid_override_names_its_variable() -> None:
    with pytest.raises(ConfigurationError, match="GEMMA_MODEL__TEMPERATURE=9"):
        get_settings(model={"temperature": 9})


def test_overrides_accept_enum_members() -> None:
    settings = get_settings(environment=Environment.TESTING, log_level=LogLevel.CRITICAL)
    assert (settings.environment, settings.log_level) == (Environment.TESTING, LogLevel.CRITICAL)


def test_settings_are_fresh_on_every_call(monkeypatch: pytest.MonkeyPatch) -> None:
    first = get_settings()
    monkeypatch.setenv("GEMMA_MODEL__TOP_K", "3")
    assert get_settings().model.top_k == 3
    assert first.model.top_k == 64


# -- assignment --------------------------------------------------------------------------------


def test_a_valid_assignment_is_converted() -> None:
    settings = get_settings()
    settings.log_level = LogLevel.DEBUG
    assert settings.log_level is LogLevel.DEBUG
    settings.log_level = "ERROR"  # type: ignore[assignment]
    assert settings.log_level is LogLevel.ERROR


def test_an_invalid_assignment_is_rejected() -> None:
    settings = get_settings()
    with pytest.raises(ValueError, match="log_level"):
        settings.log_level = "LOUD"  # type: ignore[assignment]
    assert settings.log_level is LogLevel.INFO


def test_an_invalid_assignment_to_a_section_field_is_rejected() -> None:
    settings = get_settings()
    with pytest.raises(ValueError, match="temperature"):
        settings.model.temperature = 5.0
    with pytest.raises(ValueError, match="port"):
        settings.server.port = 0
    assert settings.model.temperature == 0.7
    assert settings.server.port == 8000


def test_log_level_and_environment_accept_any_case(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEMMA_LOG_LEVEL", "debug")
    monkeypatch.setenv("GEMMA_ENVIRONMENT", "Production")
    settings = get_settings()
    assert settings.log_level is LogLevel.DEBUG
    assert settings.environment is Environment.PRODUCTION


# -- remote and vLLM backends ------------------------------------------------------------------


def test_by_default_no_remote_server_is_configured() -> None:
    remote = get_settings().remote
    assert remote.base_url is None
    assert remote.api_key is None
    assert remote.max_retries == 3
    assert remote.sampling_extras is False
    assert get_settings().vllm.tensor_parallel_size == 1


def test_remote_and_vllm_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEMMA_REMOTE__BASE_URL", " http://vllm.internal:8000/v1/ ")
    monkeypatch.setenv("GEMMA_REMOTE__API_KEY", "token-abc")
    monkeypatch.setenv("GEMMA_REMOTE__TIMEOUT_SECONDS", "30")
    monkeypatch.setenv("GEMMA_REMOTE__SAMPLING_EXTRAS", "true")
    monkeypatch.setenv("GEMMA_VLLM__TENSOR_PARALLEL_SIZE", "4")
    settings = get_settings()
    assert settings.remote.base_url == "http://vllm.internal:8000/v1"
    assert settings.remote.api_key is not None
    assert settings.remote.api_key.get_secret_value() == "token-abc"
    assert "token-abc" not in repr(settings)
    assert settings.remote.timeout_seconds == 30
    assert settings.remote.sampling_extras is True
    assert settings.vllm.tensor_parallel_size == 4


def test_an_empty_base_url_means_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEMMA_REMOTE__BASE_URL", "")
    assert get_settings().remote.base_url is None


@pytest.mark.parametrize(
    ("variable", "value", "problem"),
    [
        ("GEMMA_REMOTE__BASE_URL", "vllm.internal:8000", "must be an http:// or https:// URL"),
        ("GEMMA_REMOTE__MAX_RETRIES", "-1", "greater than or equal to 0"),
        ("GEMMA_REMOTE__TIMEOUT_SECONDS", "0", "greater than 0"),
        ("GEMMA_VLLM__GPU_MEMORY_UTILIZATION", "1.5", "less than or equal to 1"),
    ],
)
def test_a_bad_remote_or_vllm_value_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, problem: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError) as info:
        get_settings()
    assert f"{variable}={value!r}" in str(info.value)
    assert problem in str(info.value)
