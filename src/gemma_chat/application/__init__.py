"""Use cases: the services that applications call."""
