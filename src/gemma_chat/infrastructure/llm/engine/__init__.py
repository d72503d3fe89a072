"""The native CPU engine for Gemma 3 text models (see DEVELOPMENT.md)."""
