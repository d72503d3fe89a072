"""Tokenizers behind the ``TextTokenizer`` protocol, named by backend: transformers'
(``TransformersTokenizer``), the ``tokenizers`` library's (``HFTokenizersTokenizer``) and our C
BPE (``NativeBPETokenizer``)."""
