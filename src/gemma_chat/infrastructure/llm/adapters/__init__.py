"""LLM adapters: ``BaseLLM`` and its implementations (``GemmaLLM``, ``VLLMLLM``,
``OpenAICompatibleLLM``), each a full ``LLMProtocol``."""
