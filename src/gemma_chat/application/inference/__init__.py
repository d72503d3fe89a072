"""Inference orchestration."""

from gemma_chat.application.inference.service import InferenceService, ServiceState

__all__ = ["InferenceService", "ServiceState"]
