"""From prompt tokens to text, whatever runs the model: the ``TokenGenerator`` port and its
transformers implementation, one request's ``GenerationJob``, sampling, prefill/decode steps,
incremental detokenizing, stop sequences and chat formats."""
