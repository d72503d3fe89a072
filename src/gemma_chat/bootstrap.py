"""The composition root: the one place that builds the application from settings.

As in cosmicpython's ``bootstrap.py``: the application layer (``InferenceService`` in
``gemma_chat.application.inference``) receives its ports and imports nothing from
infrastructure; this module picks the adapters:

- the LLMs: ``LLMRegistry`` (``default_registry`` unless one is given) is the ``LLMProvider``
  port, building the adapter registered for a model name;
- the session store: ``create_session_repository(settings.storage.url)`` is the
  ``SessionRepository`` port (owned, so closed with the service).

Design: ``gemma_chat.InferenceService`` is the class below, a subclass of the application's
that only fills the default ports, so ``InferenceService()`` keeps working with the constructor
users know (``settings=None, llm=None, *, sessions=None, registry=None``); ``build_service`` is
what the server and the CLI call. Nothing is built or loaded at import time: the model adapter
is created on first use of ``service.llm`` and loads in ``start()``.
"""

from __future__ import annotations

from gemma_chat.application.inference import service as application
from gemma_chat.domain.interfaces import LLMProtocol, SessionRepository
from gemma_chat.infrastructure.llm.registry import LLMRegistry, default_registry
from gemma_chat.infrastructure.repositories import create_session_repository
from gemma_chat.shared.config import Settings, get_settings

__all__ = ["InferenceService", "build_service"]


class InferenceService(application.InferenceService):
    """Generates assistant turns for chat sessions, and answers stateless chats and prompts.

    Without ``llm``, the model is the one ``registry`` (default: ``default_registry``, see
    ``register_llm``) builds for ``settings.model.name``; without ``sessions``, the store
    ``GEMMA_STORAGE__URL`` names. ``async with`` loads the model and unloads it again on exit
    (a model passed in as ``llm`` is loaded if needed but left loaded: its owner decides when
    to unload it).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        llm: LLMProtocol | None = None,
        *,
        sessions: SessionRepository | None = None,
        registry: LLMRegistry | None = None,
    ) -> None:
        settings = settings if settings is not None else get_settings()
        super().__init__(
            settings,
            llm,
            sessions=(
                sessions
                if sessions is not None
                else create_session_repository(settings.storage.url)
            ),
            llms=registry if registry is not None else default_registry,
            owns_sessions=sessions is None,
        )


def build_service(settings: Settings | None = None) -> InferenceService:
    """The service as settings describe it: the registered model and the configured store."""
    return InferenceService(settings)
