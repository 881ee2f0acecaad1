"""Chats and their history."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import aclosing

from aiohttp import web

from . import db
from .auth import USER
from .keys import BUS, DB
from .validation import NUL, ApiError, int_query, invalid, json_object, string_field

log = logging.getLogger(__name__)

MAX_PAGE = 1000


async def create_chat(request: web.Request) -> web.Response:
    body = await json_object(request)
    name = string_field(body, "name", max_len=255, strip=True)
    if NUL in name:
        raise invalid("name", "must not contain the character U+0000")
    chat = await db.create_chat(request.app[DB], name, request[USER]["id"])
    request.app[BUS].announce_chat(chat)
    return web.json_response(chat, status=201)


async def list_chats(request: web.Request) -> web.Response:
    return web.json_response(await db.list_chats(request.app[DB]))


async def chat_messages(request: web.Request) -> web.StreamResponse:
    """The history of a chat, oldest first; streamed, so a long history costs no memory."""
    # Any integer is a well-formed id; one that names no chat is a 404.
    chat_id = int_query(request, "id", required=True, min_value=-(10**100), max_value=10**100)
    limit = int_query(request, "limit", max_value=MAX_PAGE)
    before = int_query(request, "before")
    after = int_query(request, "after", min_value=0)
    database = request.app[DB]
    if not 1 <= chat_id <= db.MAX_ID or not await db.chat_exists(database, chat_id):
        raise ApiError(404, f"chat {chat_id} does not exist")
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
