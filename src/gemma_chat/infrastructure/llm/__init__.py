"""LLM adapters: ``BaseLLM`` and its implementations, chosen through the registry."""
