"""Search: messages containing words, from the chats the caller may read."""

from __future__ import annotations

from aiohttp import web

from . import db, teams
from .auth import USER
from .keys import DB
from .shapes import Id, Int, Shape, Text

DEFAULT_LIMIT = 50
MAX_LIMIT = 1000  # the bounds of a history page
MAX_QUERY = 1000  # characters of q

SEARCH = Shape("Search", {
    "q": Text(
        1, MAX_QUERY, blank=False, nul=False,
        reasons={
            "unicode": "must be text without the character U+0000",
            "nul": "must be text without the character U+0000",
        },
        description="the words, separated by white space",
    ),
    # Any integer is a well-formed id; one the caller may not read is a 404.
    "chat_id": Int(
        default=None,
        description="only this chat: any integer, one the caller may not read (or that "
        "names no chat) is a 404",
    ),
    "limit": Int(1, MAX_LIMIT, default=DEFAULT_LIMIT, description="at most this many messages"),
    "before": Id(default=None, description="only messages with a smaller id"),
})


async def search_messages(request: web.Request) -> web.Response:
    """`GET /search?q=...`: matching messages, newest first (the history's objects).

    Every word of q must appear (case and diacritics aside), the last one as a prefix.
    Words are never query syntax: quotes, `*`, `AND` or `(` are searched as text.
    """
    wanted = SEARCH.read_query(request.query)
    terms = wanted["q"].split()
    chat_id, limit, before = wanted["chat_id"], wanted["limit"], wanted["before"]
    user = request[USER]
    if chat_id is not None and await teams.visible_chat(request.app, chat_id, user) is None:
        raise teams.unknown_chat(chat_id)
    rows = await db.search_messages(
        request.app[DB], user["id"], terms, chat_id=chat_id, before=before, limit=limit
    )
    return web.Response(text="[" + ",".join(rows) + "]", content_type="application/json")

