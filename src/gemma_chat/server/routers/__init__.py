"""One router per API; each has ``attach_router(app)``, and none imports ``server.app``."""

__all__: list[str] = []
