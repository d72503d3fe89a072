"""The domain: models, errors and ports. Imports only the standard library."""
