"""Search: messages containing words, from the chats the caller may read."""

from __future__ import annotations

from aiohttp import web

from . import db, teams
from .auth import USER
from .keys import DB
from .validation import NUL, int_query, invalid, is_utf8

DEFAULT_LIMIT = 50
MAX_LIMIT = 1000  # the bounds of a history page
MAX_QUERY = 1000  # characters of q


async def search_messages(request: web.Request) -> web.Response:
    """`GET /search?q=...`: matching messages, newest first (the history's objects).

    Every word of q must appear (case and diacritics aside), the last one as a prefix.
    Words are never query syntax: quotes, `*`, `AND` or `(` are searched as text.
    """
    terms = query_terms(request.query.get("q"))
    # Any integer is a well-formed id; one the caller may not read is a 404.
    chat_id = int_query(request, "chat_id", min_value=-(10**100), max_value=10**100)
    limit = int_query(request, "limit", max_value=MAX_LIMIT) or DEFAULT_LIMIT
    before = int_query(request, "before")
    user = request[USER]
    if chat_id is not None and await teams.visible_chat(request.app, chat_id, user) is None:
        raise teams.unknown_chat(chat_id)
    rows = await db.search_messages(
        request.app[DB], user["id"], terms, chat_id=chat_id, before=before, limit=limit
    )
    return web.Response(text="[" + ",".join(rows) + "]", content_type="application/json")


def query_terms(q: str | None) -> list[str]:
    """The words of q (split at white space), or 400."""
    if q is None:
        raise invalid("q", "query parameter is required")
    if len(q) > MAX_QUERY:
        raise invalid("q", f"must be at most {MAX_QUERY} characters")
    if NUL in q or not is_utf8(q):
        raise invalid("q", "must be text without the character U+0000")
    terms = q.split()
    if not terms:
        raise invalid("q", "must not be empty")
    return terms
