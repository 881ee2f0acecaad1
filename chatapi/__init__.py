"""ChatAPI: a small, self-hostable chat server."""

__version__ = "0.1.0"

from .app import create_app
from .config import Config

__all__ = ["Config", "__version__", "create_app"]
