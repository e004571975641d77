"""The web console: static page, ``GET /v1/status`` and the ``GET /v1/events`` feed."""

from llama_orch.server.console.feed import StatusFeed
from llama_orch.server.console.routes import attach, routes

__all__ = ["StatusFeed", "attach", "routes"]
