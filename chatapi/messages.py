"""Messages over HTTP, and the changes of a message (edit, delete, reactions) over HTTP
and the websocket alike.

Every change goes through the writer, like a new message: stored in a batch, given a
new `seq`, and published as an `update` frame after its commit (on every process).
"""

from __future__ import annotations

import functools
from typing import Any

from aiohttp import web

from . import db, teams
from .auth import USER
from .keys import CONFIG, DB, WRITER
from .shapes import FieldError, Id, Json, Shape, Text, Timestamp, Word
from .validation import ApiError, json_object

MAX_NONCE = 64
MAX_EMOJI = 32
# The fields of a message (chatapi.chats.MESSAGE) besides the base ones; see
# chatapi.db.public_message.
MESSAGE_FIELDS = {
    "seq": Id(description="the message's id until it changes; then a new value from the same "
              "sequence at every change (the cursor of `join` with `since`)"),
    "reply_to": Id(default=None, description="the message (of the same chat) this one answers"),
    "edited_at": Timestamp(default=None, description="when its text was last edited"),
    "deleted": Json({"type": "boolean", "enum": [True]}, default=None,
                    description="a tombstone: its text is empty and its reactions gone"),
    "deleted_at": Timestamp(default=None),
    "reactions": Json({
        "type": "array",
        "items": {
            "type": "object",
            "properties": {"emoji": {"type": "string"},
                           "user_ids": {"type": "array", "minItems": 1, "items": {
                               "type": "integer", "format": "int64", "minimum": 1}}},
            "required": ["emoji", "user_ids"],
            "additionalProperties": False,
        },
    }, default=None, description="by emoji; absent when there is none"),
}
REFUSED = {
    db.NO_MESSAGE: (404, "message {message_id} does not exist in chat {chat_id}"),
    db.GONE: (409, "message {message_id} is deleted"),
    db.TOO_MANY: (409, f"at most {db.MAX_REACTIONS} reactions per user on one message"),
    db.REVOKED: (401, db.REVOKED),
}
FORBIDDEN = {
    db.EDIT: "only its author edits a message",
    db.DELETE: "only its author, the chat's owners and admins delete a message",
}


@functools.cache
def message_text(max_text: int) -> Text:
    """A message's text, as posted or edited (over HTTP and the websocket alike)."""
    return Text(1, max_text, blank=False, nul=False, reasons={
        "required": "is required and must be a string",
        "type": "is required and must be a string",
        "empty": "must not be empty or only white space",
        "unicode": "must be valid Unicode (no lone surrogates)",
    }, description="not only white space; no U+0000")


NONCE = Text(
    1, MAX_NONCE, nul=False, null=True, default=None,
    reason=f"must be a string of 1 to {MAX_NONCE} characters (not U+0000)",
    description="makes the post idempotent (per user)",
)
REPLY_TO = Id(null=True, default=None, reason="must be a message id (a positive integer)",
              description="a message of the same chat")
EMOJI_LENGTH = f"must be a string of 1 to {MAX_EMOJI} characters"
# An emoji, a ZWJ sequence (a zero width joiner is Cf, not Cc) or a short name such as `+1`.
EMOJI = Word(1, MAX_EMOJI, refused="/", reasons={
    key: EMOJI_LENGTH for key in ("required", "type", "empty", "long", "unicode")
}, description=f"1 to {MAX_EMOJI} characters, no white space, '/' or control characters; "
   f"at most {db.MAX_REACTIONS} per user per message")


@functools.cache
def new_message(max_text: int) -> Shape:
    return Shape("NewMessage", {"text": message_text(max_text), "nonce": NONCE,
                                "reply_to": REPLY_TO})


@functools.cache
def message_edit(max_text: int) -> Shape:
    return Shape("MessageEdit", {"text": message_text(max_text)})


REACTION = Shape("Reaction", {"emoji": EMOJI})
MESSAGE_PATH = Shape("MessagePath", {
    **teams.CHAT_PATH.fields,
    "message_id": Id(description="a message of the chat; any other value answers 404"),
})
REACTION_PATH = Shape("ReactionPath", {**MESSAGE_PATH.fields, **REACTION.fields})


def read(shape: Shape, body: dict[str, Any]) -> dict[str, Any]:
    """The body's fields; a refusal is a 400 worded as the websocket words it:
    {"error": "text must ...", "details": {"text": "text must ..."}}."""
    try:
        return shape.read(body)
    except FieldError as exc:
        words = exc.frame_text()
        raise ApiError(400, words, {exc.field: words}) from None


async def check_reply(app: web.Application, chat_id: int, reply_to: int | None) -> int | None:
    """`reply_to` of a new message (as REPLY_TO reads it): None, or the id of a message
    of the same chat."""
    if reply_to is None:
        return None
    if await db.message_by_id(app[DB], chat_id, reply_to) is None:
        # Well-formed, but naming nothing: a 404, as an unknown member is.
        raise ApiError(404, f"reply_to: message {reply_to} does not exist in chat {chat_id}")
    return reply_to


async def change_message(
    app: web.Application, user: dict[str, Any], change: db.Change
) -> db.Stored:
    """Store a change of a message the user may make: the message after it (is_new when
    it changed); ApiError when it is refused (404 for an unknown chat or message)."""
    chat = await teams.visible_chat(app, change.chat_id, user, admin_sees=change.kind == db.DELETE)
    if chat is None:
        raise teams.unknown_chat(change.chat_id)
    if change.kind in (db.REACT, db.UNREACT) and not await teams.enter_chat(
        app, user["id"], change.chat_id
    ):
        raise teams.unknown_chat(change.chat_id)
    if change.kind == db.DELETE:
        if "is_admin" not in user:
            user = await db.user_by_id(app[DB], user["id"]) or user
        change.moderator = chat["role"] == "owner" or bool(user.get("is_admin"))
    stored = await app[WRITER].post(change)
    if stored.error == db.FORBIDDEN:
        raise ApiError(403, FORBIDDEN[change.kind])
    if stored.error in REFUSED:
        status, text = REFUSED[stored.error]
        raise ApiError(status, text.format(message_id=change.message_id, chat_id=change.chat_id))
    if stored.error:
        raise ApiError(503, stored.error, headers={"Retry-After": "1"})
    return stored


def credentials(user: dict[str, Any]) -> dict[str, int | None]:
    """What a draft or change checks when it is stored: the API token the user
    authenticated with, or else the version of their session token."""
    if user.get("api_token_id") is not None:
        return {"token_version": None, "api_token_id": user["api_token_id"]}
    return {"token_version": user["token_version"], "api_token_id": None}


# HTTP routes


def _ids_in_path(request: web.Request) -> tuple[int, int]:
    chat_id = teams.chat_id_in_path(request)
    try:
        message_id = MESSAGE_PATH.read_query(request.match_info)["message_id"]
    except FieldError:
        raw = request.match_info["message_id"]
        raise ApiError(404, f"message {raw} does not exist in chat {chat_id}") from None
    return chat_id, message_id


def _answer(stored: db.Stored, status: int = 200) -> web.Response:
    assert stored.message is not None
    return web.json_response(db.public_message(stored.message), status=status)


async def post_message(request: web.Request) -> web.Response:
    """POST /chats/{chat_id}/messages {text, nonce?, reply_to?}: 201 with the stored
    message, 200 with the original when the nonce was used before."""
    app, user = request.app, request[USER]
    chat_id = teams.chat_id_in_path(request)
    body = read(new_message(app[CONFIG].max_text), await json_object(request))
    if not await teams.enter_chat(app, user["id"], chat_id):
        raise teams.unknown_chat(chat_id)
    reply_to = await check_reply(app, chat_id, body["reply_to"])
    draft = db.Draft(
        chat_id, user["id"], user["username"], body["text"], body["nonce"],
        reply_to=reply_to, **credentials(user),
    )
    stored = await app[WRITER].post(draft)
    if stored.error == db.REVOKED:
        raise ApiError(401, stored.error)
    if stored.error:
        raise ApiError(503, stored.error, headers={"Retry-After": "1"})
    return _answer(stored, 201 if stored.is_new else 200)


async def get_message(request: web.Request) -> web.Response:
    """GET /chats/{chat_id}/messages/{message_id}."""
    chat_id, message_id = _ids_in_path(request)
    if await teams.visible_chat(request.app, chat_id, request[USER]) is None:
        raise teams.unknown_chat(chat_id)
    message = await db.message_by_id(request.app[DB], chat_id, message_id)
    if message is None:
        raise ApiError(404, f"message {message_id} does not exist in chat {chat_id}")
    return web.json_response(db.public_message(message))


async def edit_message(request: web.Request) -> web.Response:
    """PATCH /chats/{chat_id}/messages/{message_id} {text}: the author edits."""
    chat_id, message_id = _ids_in_path(request)
    body = read(message_edit(request.app[CONFIG].max_text), await json_object(request))
    user = request[USER]
    change = db.Change(db.EDIT, chat_id, message_id, user["id"], text=body["text"],
                       **credentials(user))
    return _answer(await change_message(request.app, user, change))


async def delete_message(request: web.Request) -> web.Response:
    """DELETE /chats/{chat_id}/messages/{message_id}: the tombstone."""
    chat_id, message_id = _ids_in_path(request)
    user = request[USER]
    change = db.Change(db.DELETE, chat_id, message_id, user["id"], **credentials(user))
    return _answer(await change_message(request.app, user, change))


async def react(request: web.Request) -> web.Response:
    """PUT (add) and DELETE (remove) /chats/{chat_id}/messages/{message_id}/reactions/{emoji}."""
    chat_id, message_id = _ids_in_path(request)
    emoji = read(REACTION, request.match_info)["emoji"]
    user = request[USER]
    kind = db.REACT if request.method == "PUT" else db.UNREACT
    change = db.Change(kind, chat_id, message_id, user["id"], emoji=emoji, **credentials(user))
    return _answer(await change_message(request.app, user, change))


def add_routes(app: web.Application) -> None:
    app.router.add_post("/chats/{chat_id}/messages", post_message)
    one = "/chats/{chat_id}/messages/{message_id}"
    app.router.add_get(one, get_message, allow_head=False)
    app.router.add_patch(one, edit_message)
    app.router.add_delete(one, delete_message)
    app.router.add_put(one + "/reactions/{emoji}", react)
    app.router.add_delete(one + "/reactions/{emoji}", react)
