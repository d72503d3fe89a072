"""The native CPU engine for Gemma 3 and Gemma 4 text models (see DEVELOPMENT.md): the lean
models, their KV cache, continuous batching (``BatchScheduler``), int8 kernels, converted weights
on disk, and ``NativeGenerator``, the engine behind the ``TokenGenerator`` port."""
