"""ChatAPI: a small, self-hostable chat server."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["Config", "__version__", "create_app"]


def __getattr__(name: str) -> Any:
    # Imported on first use, so that the pytest plugin (chatapi.pytest_plugin)
    # costs other projects' test runs nothing until a fixture is used.
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "Config":
        from .config import Config

        return Config
    raise AttributeError(f"module 'chatapi' has no attribute {name!r}")
