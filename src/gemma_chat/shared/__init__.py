"""Cross-cutting code: configuration and errors."""
