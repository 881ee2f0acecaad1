"""Every typed key of the application's state."""

from __future__ import annotations

from aiohttp import web

from .bus import Bus
from .config import Config
from .db import Database
from .hub import Hub
from .metrics import Metrics
from .throttle import Throttle
from .typists import Typists
from .writer import MessageWriter

CONFIG = web.AppKey("config", Config)
DB = web.AppKey("db", Database)
SECRET = web.AppKey("secret", bytes)
HUB = web.AppKey("hub", Hub)
BUS = web.AppKey("bus", Bus)
WRITER = web.AppKey("writer", MessageWriter)
# Absent when metrics are turned off.
METRICS = web.AppKey("metrics", Metrics)
THROTTLE = web.AppKey("throttle", Throttle)
TYPISTS = web.AppKey("typists", Typists)
