"""Configuration: ``get_settings()`` and its sections."""

from gemma_chat.shared.config.settings import (
    EMBEDDED_MODEL_NAME,
    CacheSettings,
    Environment,
    LimitsSettings,
    LogLevel,
    ModelSettings,
    PerformanceSettings,
    RemoteSettings,
    ServerSettings,
    Settings,
    StorageSettings,
    VLLMSettings,
    default_server_storage_url,
    get_settings,
)

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
