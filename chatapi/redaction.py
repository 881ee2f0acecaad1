"""No token in any log line: anything shaped like a JWT is replaced before it is written.

Tokens travel in headers, in `?token=` and, by mistake, anywhere else a client puts
them (`?TOKEN=`, another parameter, the path, a malformed request line that aiohttp
quotes in its error). Every session token this server issues starts with `eyJ`
(base64 of `{"`) and every API token with `chatapi_`, so the filter looks for those
shapes rather than for where a token may be.
"""

from __future__ import annotations

import logging
import re

REDACTED = "REDACTED"
# A JWT's segments are base64url; a client may percent-encode the dots. An API
# token is `chatapi_` and 64 hex digits: a part of one (16 digits on) is hidden too.
_TOKEN = re.compile(
    r"eyJ[A-Za-z0-9_-]*(?:(?:\.|%2[Ee])[A-Za-z0-9_-]*){0,2}|chatapi_[0-9A-Fa-f]{16,}"
)
MARKS = ("eyJ", "chatapi_")  # what every token contains
# Loggers whose records may quote a request: aiohttp's, and this package's.
LOGGERS = ("aiohttp.access", "aiohttp.server", "aiohttp.web", "aiohttp.websocket", "chatapi")


def has_token_mark(text: str) -> bool:
    """True when `text` may hold a token (the quick test before the expression)."""
    return any(mark in text for mark in MARKS)


def redact(text: str) -> str:
    """`text` with every token-shaped string replaced by REDACTED."""
    return _TOKEN.sub(REDACTED, text) if has_token_mark(text) else text


class TokenFilter(logging.Filter):
    """Rewrites a record's message and traceback without tokens (never drops a record)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if has_token_mark(message):
            record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


_FILTER = TokenFilter()


def redact_logs(*handlers: logging.Handler) -> None:
    """Filter the records of LOGGERS, and everything that reaches `handlers`.

    A logger's filter sees only the records created on that very logger, so the
    package's modules are filtered through `handlers` (the ones `main` configures)
    and, for embedders, through each module logger that exists by now.
    """
    names = [
        name for name in logging.root.manager.loggerDict
        if name == "chatapi" or name.startswith("chatapi.")
    ]
    for name in (*LOGGERS, *names):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    for handler in handlers:
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)
