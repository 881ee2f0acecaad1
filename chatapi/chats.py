"""Chats and their history."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import aclosing

from aiohttp import web

from . import db, teams
from .auth import USER
from .keys import DB
from .shapes import Id, Int, Shape, Text, Timestamp

log = logging.getLogger(__name__)

MAX_PAGE = 1000

HISTORY = Shape("History", {
    # Any integer is a well-formed id; one that names no chat is a 404.
    "id": Int(description="the chat: any integer, one that names no chat is a 404"),
    "limit": Int(1, MAX_PAGE, default=None, description="at most this many messages"),
    "before": Id(default=None, description="only messages with a smaller id"),
    "after": Id(0, default=None, description="only messages with a greater id"),
})
MESSAGE = Shape("Message", {
    "id": Id(),
    "chat_id": Id(),
    "owner_id": Id(),
    "username": Text(),
    "text": Text(),
    "created_at": Timestamp(),
    "nonce": Text(default=None, description="present when the sender gave one"),
}, closed=True)


async def chat_messages(request: web.Request) -> web.StreamResponse:
    """The history of a chat, oldest first; streamed, so a long history costs no memory."""
    wanted = HISTORY.read_query(request.query)
    chat_id, limit, before, after = wanted["id"], wanted["limit"], wanted["before"], wanted["after"]
    database = request.app[DB]
    # A private chat the caller is not a member of answers as an unknown chat.
    if await teams.visible_chat(request.app, chat_id, request[USER]) is None:
        raise teams.unknown_chat(chat_id)
    rows = db.chat_messages_json(database, chat_id, limit=limit, before=before, after=after)
    response = web.StreamResponse(headers={"Content-Type": "application/json; charset=utf-8"})
    await response.prepare(request)
    try:
        async with aclosing(rows):
            await write_json_array(response, rows)
    except ConnectionError:
        log.debug("client left while reading the history of chat %d", chat_id)
    return response


async def write_json_array(response: web.StreamResponse, items: AsyncIterator[str]) -> None:
    """Stream JSON texts as one array, in chunks."""
    separator = "["
    chunk = []
    async for item in items:
        chunk.append(separator + item)
        separator = ","
        if len(chunk) >= 500:
            await response.write("".join(chunk).encode())
            chunk.clear()
    chunk.append("]" if separator == "," else "[]")
    await response.write("".join(chunk).encode())
    await response.write_eof()
