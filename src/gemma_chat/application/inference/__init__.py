"""Inference orchestration."""

from gemma_chat.application.inference.lifecycle import ServiceState
from gemma_chat.application.inference.service import InferenceService

__all__ = ["InferenceService", "ServiceState"]
