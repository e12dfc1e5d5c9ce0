"""Pure ASGI middlewares, one concern each. None of them imports engines."""
