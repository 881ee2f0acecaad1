"""Chats and their history."""

from __future__ import annotations

import json

from aiohttp import web

from . import db
from .auth import USER
from .keys import DB
from .validation import ApiError, int_query, json_object, string_field

MAX_PAGE = 1000


async def create_chat(request: web.Request) -> web.Response:
    body = await json_object(request)
    name = string_field(body, "name", max_len=255, strip=True)
    chat = await db.create_chat(request.app[DB], name, request[USER]["id"])
    return web.json_response(chat, status=201)


async def list_chats(request: web.Request) -> web.Response:
    return web.json_response(await db.list_chats(request.app[DB]))


async def chat_messages(request: web.Request) -> web.StreamResponse:
    """The history of a chat, oldest first; streamed, so a long history costs no memory."""
    chat_id = int_query(request, "id", required=True)
    limit = int_query(request, "limit", max_value=MAX_PAGE)
    before = int_query(request, "before")
    after = int_query(request, "after", min_value=0)
    if not await db.chat_exists(request.app[DB], chat_id):
        raise ApiError(404, f"chat {chat_id} does not exist")
    rows = db.chat_messages(request.app[DB], chat_id, limit=limit, before=before, after=after)
    response = web.StreamResponse(headers={"Content-Type": "application/json; charset=utf-8"})
    await response.prepare(request)
    separator = b"["
    chunk = []
    async for row in rows:
        if row["nonce"] is None:
            del row["nonce"]
        chunk.append(separator + json.dumps(row, ensure_ascii=False).encode())
        separator = b","
        if len(chunk) >= 200:
            await response.write(b"".join(chunk))
            chunk.clear()
    chunk.append(b"]" if separator == b"," else b"[]")
    await response.write(b"".join(chunk))
    await response.write_eof()
    return response
