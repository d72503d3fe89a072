"""LLMs behind ``LLMProtocol``, grouped by role.

- ``adapters/``: ``BaseLLM`` and its implementations (local checkpoints, vLLM, any
  OpenAI-compatible server); ``registry.py`` chooses one by model name.
- ``generation/``: what turns a prompt's tokens into text whatever runs the model: the
  ``TokenGenerator`` port, generation jobs, sampling, detokenizing, stop sequences, chat formats,
  and the transformers generator.
- ``engine/``: the native CPU engine for Gemma 3 and Gemma 4 text models (another
  ``TokenGenerator``).
- ``tokenizers/``: tokenizers named by backend (transformers, the ``tokenizers`` library, our C
  BPE).
- ``loading/``: where a model's weights come from, and on which device and in which precision.
"""
