"""The HTTP edge: an OpenAI-compatible API on one ``InferenceService``."""

from gemma_chat.server.app import create_app

__all__ = ["create_app"]
