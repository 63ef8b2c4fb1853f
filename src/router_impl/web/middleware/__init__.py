"""Pure-ASGI middleware, one per module."""
