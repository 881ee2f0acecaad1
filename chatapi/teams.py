"""Teams: chat kinds, members and roles, read markers and unread counts, invite codes.

A non-member of a private or direct chat gets exactly what an unknown chat gets
(`unknown_chat`), on every route and frame: existence does not leak. Membership
changes and read markers reach the sockets concerned on every process through
the bus (`Bus.route`).
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from . import db
from .auth import USER
from .keys import BUS, CONFIG, DB
from .shapes import (
    Bool,
    Choice,
    Either,
    FieldError,
    Id,
    Ids,
    Int,
    Nested,
    Shape,
    Text,
    Timestamp,
)
from .validation import ApiError, json_object

KINDS = ("public", "private", "direct")
ROLES = ("owner", "member")
UNREAD_CAP = 999  # counts are exact; a list shows at most this many, flagged (a badge's "999+")
MAX_MEMBERS_AT_CREATION = 100
MAX_INVITE_USES = 1000
MAX_INVITE_SECONDS = 365 * 86400
DEFAULT_INVITE_SECONDS = 7 * 86400

CHAT = Shape("Chat", {
    "id": Id(),
    "name": Text(),
    "owner_id": Id(),
    "created_at": Timestamp(),
    "kind": Choice(KINDS),
}, closed=True)
LISTED_CHAT = Shape("ListedChat", {
    **CHAT.fields,
    "is_member": Bool(),
    "role": Choice(ROLES, default=None, description="members only"),
    "last_read_id": Int(0, default=None, description="members only"),
    "unread": Int(
        0, UNREAD_CAP, default=None,
        description="members only: messages after the read marker not sent by the caller; "
        f"{UNREAD_CAP} when capped",
    ),
    "unread_capped": Bool(
        default=None,
        description=f"members only: more than {UNREAD_CAP} unread messages (the count is "
        f"exact; `unread` shows at most {UNREAD_CAP}); show {UNREAD_CAP}+",
    ),
    "other_user": Nested(
        Shape("OtherUser", {"id": Id(), "username": Text()}, closed=True),
        default=None, description="direct chats only: the other member",
    ),
}, closed=True)
JOINED_CHAT = Shape("JoinedChat", {**CHAT.fields, "role": Choice(ROLES)}, closed=True)

CHAT_NAME = Text(1, 255, strip=True, nul=False, description="1 to 255 characters once trimmed.")
USER_ID = Id(null=True, reason="must be a user id (a positive integer)")
TEAM_CHAT = Shape("NewTeamChat", {
    "name": CHAT_NAME,
    "members": Ids(
        MAX_MEMBERS_AT_CREATION, default=(),
        reason=f"must be a list of at most {MAX_MEMBERS_AT_CREATION} user ids",
        description="public and private chats: members besides the creator",
    ),
})
NEW_CHAT = Either("NewChat", "kind", Choice(KINDS, default="public"), {
    "public": TEAM_CHAT,
    "private": TEAM_CHAT,
    "direct": Shape("NewDirectChat", {
        "user_id": Id(
            null=True, reason=USER_ID.reasons["type"], description="direct chats: the other user"
        ),
        "name": Text(1, 255, strip=True, nul=False, default="direct"),
    }),
})

CHAT_PATH = Shape("ChatPath", {
    "chat_id": Int(
        description="a chat; one the caller may not know of answers as an unknown chat"
    ),
})
MEMBER_ID_PATH = Shape("MemberIdPath", {"user_id": Id()})
MEMBER_PATH = Shape("MemberPath", {**CHAT_PATH.fields, **MEMBER_ID_PATH.fields})
MEMBER = Shape("Member", {"user_id": Id(), "username": Text(), "role": Choice(ROLES)}, closed=True)
NEW_MEMBER = Shape("NewMember", {"user_id": USER_ID, "role": Choice(ROLES, default="member")})
# A missing role gets the same words as a wrong one.
ROLE_CHANGE = Shape("RoleChange", {
    "role": Choice(ROLES, reasons={"required": Choice(ROLES).reasons["type"]}),
})
CHANGED_ROLE = Shape("ChangedRole", {"user_id": Id(), "role": Choice(ROLES)}, closed=True)
MESSAGE_ID = Id(0, reason="must be a message id (an integer of 0 or more)")
READ_UP_TO = Shape("ReadUpTo", {"message_id": MESSAGE_ID})
READ_MARKER = Shape("ReadMarker", {"chat_id": Id(), "last_read_id": Int(0)}, closed=True)
NEW_INVITE = Shape("NewInvite", {
    "expires_in": Int(
        60, MAX_INVITE_SECONDS, default=DEFAULT_INVITE_SECONDS,
        reason=f"must be seconds between 60 and {MAX_INVITE_SECONDS}",
        description="seconds (default a week)",
    ),
    "uses": Int(
        1, MAX_INVITE_USES, default=1,
        reason=f"must be an integer between 1 and {MAX_INVITE_USES}",
        description="registrations it allows (default 1)",
    ),
})
INVITE = Shape("Invite", {
    "code": Text(),
    "expires_at": Timestamp(),
    "uses_left": Int(0),
    "created_at": Timestamp(),
}, closed=True)


def unknown_chat(chat_id: Any) -> ApiError:
    """The answer for a chat that does not exist, or that the caller may not know of."""
    return ApiError(404, f"chat {chat_id} does not exist")


def now_text(delta: float = 0.0) -> str:
    """UTC now (plus `delta` seconds) as the ISO 8601 text both backends store."""
    moment = datetime.now(UTC) + timedelta(seconds=delta)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


async def visible_chat(
    app: web.Application, chat_id: int, user: dict[str, Any], admin_sees: bool = False
) -> dict[str, Any] | None:
    """The chat with the user's `role` in it, or None when it does not exist or the user
    may not know of it (admins see every chat where `admin_sees`)."""
    if not 1 <= chat_id <= db.MAX_ID:
        return None
    chat = await db.chat_access(app[DB], chat_id, user["id"])
    if chat is None or chat["kind"] == "public" or chat["role"] is not None:
        return chat
    return chat if admin_sees and user.get("is_admin") else None


async def enter_chat(app: web.Application, user_id: int, chat_id: int) -> bool:
    """Whether the user may read and post in the chat; joining a public chat makes
    them a member. False exactly when the chat is unknown to them.

    Joining a public chat is not announced: anyone may, and a client that knows only
    the base frames sees no frame it did not ask for.
    """
    chat = await visible_chat(app, chat_id, {"id": user_id})
    if chat is None:
        return False
    if chat["role"] is None:
        await db.add_member(app[DB], chat_id, user_id, "member")
    return True


def chat_json(chat: dict[str, Any]) -> dict[str, Any]:
    return CHAT.dump(chat)


def listed_chat_json(row: dict[str, Any]) -> dict[str, Any]:
    """A chat of GET /chats/ as the caller sees it."""
    body = chat_json(row)
    body["is_member"] = row["role"] is not None
    if row["role"] is not None:
        body["role"] = row["role"]
        body["last_read_id"] = row["last_read_id"]
        body["unread"] = min(row["unread"], UNREAD_CAP)
        body["unread_capped"] = row["unread"] > UNREAD_CAP
    if row["kind"] == "direct" and row["other_id"] is not None:
        body["other_user"] = {"id": row["other_id"], "username": row["other_username"]}
    return body


def announce_member(
    app: web.Application, chat: dict[str, Any], kind: str, member: dict[str, Any], by: int
) -> None:
    """A membership change, to the chat's subscribers and the member's sockets, on every
    process; a removed or leaving member's sockets lose the chat first."""
    frame: dict[str, Any] = {"type": kind, "chat_id": chat["id"], "user_id": member["user_id"]}
    if "username" in member:
        frame["username"] = member["username"]
    if kind in ("member_added", "member_role"):
        frame["role"] = member["role"]
    if kind == "member_added":
        frame["chat"] = chat_json(chat)
    if kind != "member_left":
        frame["by"] = by
    revoke = member["user_id"] if kind in ("member_removed", "member_left") else None
    app[BUS].route({
        "frame": frame,
        "chat_id": chat["id"],
        "to_subscribers": True,
        "users": [member["user_id"]],
        "revoke": revoke,
    })


def announce_chat(app: web.Application, chat: dict[str, Any], member_ids: list[int]) -> None:
    """A new private or direct chat, to its members' sockets on every process."""
    frame = {"type": "chat_created", "chat": chat_json(chat)}
    app[BUS].route({"frame": frame, "users": member_ids})


def chat_id_in_path(request: web.Request) -> int:
    try:
        return CHAT_PATH.read_query(request.match_info)["chat_id"]
    except FieldError:
        raise unknown_chat(request.match_info["chat_id"]) from None


# Chats


async def create_chat(request: web.Request) -> web.Response:
    """POST /chats/create: a public chat (the base behaviour), a private one with
    members, or the caller's direct chat with another user (200 when it exists)."""
    new = NEW_CHAT.read(await json_object(request))
    user = request[USER]
    kind = new["kind"]
    if kind == "direct":
        return await _direct_chat(request, new, user)
    members = list(new["members"])
    try:
        chat = await db.create_team_chat(request.app[DB], new["name"], kind, user["id"], members)
    except db.NotFound:
        raise ApiError(404, "a member id names no user") from None
    if kind == "public":
        request.app[BUS].announce_chat(chat)
    else:
        announce_chat(request.app, chat, sorted({user["id"], *members}))
    return web.json_response(chat_json(chat), status=201)


async def _direct_chat(request: web.Request, new: dict[str, Any], user: dict[str, Any]) -> web.Response:
    other_id, name = new["user_id"], new["name"]
    if other_id == user["id"]:
        # Well-formed, but a direct chat is between two users.
        raise ApiError(409, "a direct chat needs another user: user_id is your own id")
    try:
        chat, created = await db.direct_chat(request.app[DB], user["id"], other_id, name)
    except db.NotFound:
        raise ApiError(404, f"user {other_id} does not exist") from None
    if created:
        announce_chat(request.app, chat, [user["id"], other_id])
    return web.json_response(chat_json(chat), status=201 if created else 200)


async def list_chats(request: web.Request) -> web.Response:
    """GET /chats/: public chats and the caller's own, with membership and unread counts."""
    rows = await db.chats_of(request.app[DB], request[USER]["id"])
    return web.json_response([listed_chat_json(row) for row in rows])


async def join_chat(request: web.Request) -> web.Response:
    """POST /chats/{id}/join: become a member of a public chat."""
    chat_id = chat_id_in_path(request)
    if not await enter_chat(request.app, request[USER]["id"], chat_id):
        raise unknown_chat(chat_id)
    chat = await visible_chat(request.app, chat_id, request[USER])
    assert chat is not None
    return web.json_response({**chat_json(chat), "role": chat["role"]})


# Members


async def _managed_chat(request: web.Request) -> dict[str, Any]:
    """The chat of the path, if the caller may change its members (an owner or an admin)."""
    user = request[USER]
    chat_id = chat_id_in_path(request)
    chat = await visible_chat(request.app, chat_id, user, admin_sees=True)
    if chat is None:
        raise unknown_chat(chat_id)
    if chat["role"] != "owner" and not user["is_admin"]:
        raise ApiError(403, "only the chat's owners and admins manage its members")
    if chat["kind"] == "direct":
        raise ApiError(409, "a direct chat's two members never change")
    return chat


async def list_members(request: web.Request) -> web.Response:
    """GET /chats/{id}/members."""
    chat_id = chat_id_in_path(request)
    if await visible_chat(request.app, chat_id, request[USER], admin_sees=True) is None:
        raise unknown_chat(chat_id)
    members = await db.members_of(request.app[DB], chat_id)
    return web.json_response(
        [{"user_id": m["user_id"], "username": m["username"], "role": m["role"]} for m in members]
    )


async def add_member(request: web.Request) -> web.Response:
    """POST /chats/{id}/members {user_id, role?}: owners and admins add a member."""
    chat = await _managed_chat(request)
    new = NEW_MEMBER.read(await json_object(request))
    user_id, role = new["user_id"], new["role"]
    try:
        member = await db.add_member(request.app[DB], chat["id"], user_id, role)
    except db.NotFound:
        raise ApiError(404, f"user {user_id} does not exist") from None
    if member is None:
        raise ApiError(409, f"user {user_id} is already a member of chat {chat['id']}")
    announce_member(request.app, chat, "member_added", member, by=request[USER]["id"])
    return web.json_response(member, status=201)


async def change_member(request: web.Request) -> web.Response:
    """PATCH /chats/{id}/members/{user_id} {role}: owners and admins change a role."""
    chat = await _managed_chat(request)
    user_id = _member_in_path(request)
    role = ROLE_CHANGE.read(await json_object(request))["role"]
    try:
        changed = await db.set_role(request.app[DB], chat["id"], user_id, role)
    except db.LastOwner:
        raise ApiError(409, "a chat needs an owner: make another member an owner first") from None
    if not changed:
        raise ApiError(404, f"user {user_id} is not a member of chat {chat['id']}")
    member = {"user_id": user_id, "role": role}
    announce_member(request.app, chat, "member_role", member, by=request[USER]["id"])
    return web.json_response(member)


async def remove_member(request: web.Request) -> web.Response:
    """DELETE /chats/{id}/members/{user_id}: owners and admins remove a member; anyone
    leaves (their own id)."""
    user = request[USER]
    user_id = _member_in_path(request)
    if user_id == user["id"]:
        chat_id = chat_id_in_path(request)
        chat = await visible_chat(request.app, chat_id, user)
        if chat is None:
            raise unknown_chat(chat_id)
        if chat["kind"] == "direct":
            raise ApiError(409, "a direct chat's two members never change")
        kind = "member_left"
    else:
        chat = await _managed_chat(request)
        kind = "member_removed"
    try:
        removed = await db.remove_member(request.app[DB], chat["id"], user_id)
    except db.LastOwner:
        raise ApiError(
            409, "the last owner cannot leave: make another member an owner first"
        ) from None
    if not removed:
        raise ApiError(404, f"user {user_id} is not a member of chat {chat['id']}")
    announce_member(request.app, chat, kind, {"user_id": user_id}, by=user["id"])
    return web.Response(status=204)


def _member_in_path(request: web.Request) -> int:
    try:
        return MEMBER_ID_PATH.read_query(request.match_info)["user_id"]
    except FieldError:
        raise ApiError(404, f"user {request.match_info['user_id']} does not exist") from None


# Read markers


async def mark_read(app: web.Application, user_id: int, chat_id: int, message_id: int) -> int:
    """Move the user's read marker of a chat forward and tell their sockets on every
    process; the marker. ApiError 404 as an unknown chat, 409 for a public chat the
    user has not joined."""
    chat = await visible_chat(app, chat_id, {"id": user_id})
    if chat is None:
        raise unknown_chat(chat_id)
    if chat["role"] is None:
        raise ApiError(409, f"not a member of chat {chat_id}: join it first")
    marker = await db.mark_read(app[DB], chat_id, user_id, message_id)
    frame = {"type": "read", "chat_id": chat_id, "last_read_id": marker}
    app[BUS].route({"frame": frame, "users": [user_id]})
    return marker


async def read_chat(request: web.Request) -> web.Response:
    """POST /chats/{id}/read {message_id}: the caller has read up to this message."""
    chat_id = chat_id_in_path(request)
    message_id = READ_UP_TO.read(await json_object(request))["message_id"]
    marker = await mark_read(request.app, request[USER]["id"], chat_id, message_id)
    return web.json_response({"chat_id": chat_id, "last_read_id": marker})


# Invite codes


async def create_invite(request: web.Request) -> web.Response:
    """POST /invites {expires_in?, uses?}: admins (and members, if allowed) make a code."""
    user = request[USER]
    if not user["is_admin"] and not request.app[CONFIG].member_invites:
        raise ApiError(403, "only admins create invite codes")
    new = NEW_INVITE.read(await json_object(request))
    code = secrets.token_urlsafe(16)
    expires_at = now_text(new["expires_in"])
    invite = await db.create_invite(request.app[DB], code, user["id"], expires_at, new["uses"])
    return web.json_response(invite, status=201)


async def check_registration(app: web.Application, body: dict[str, Any]) -> str | None:
    """The invite code a registration will spend (None when registration is open);
    ApiError 403 naming the mode when this registration is refused."""
    mode = app[CONFIG].registration
    if mode == "open":
        return None
    if mode == "closed":
        raise ApiError(403, "registration is closed: an admin creates accounts")
    code = body.get("invite")
    if not isinstance(code, str) or not code:
        raise ApiError(403, "registration is by invite: send an invite code in 'invite'")
    if len(code) > 100 or "\x00" in code or not await db.invite_usable(app[DB], code, now_text()):
        raise ApiError(403, "registration is by invite: this invite code is invalid, expired or used up")
    return code


def add_routes(app: web.Application) -> None:
    """The Teams routes (besides /chats/create and /chats/, which app.py routes here)."""
    app.router.add_post("/chats/{chat_id}/join", join_chat)
    app.router.add_post("/chats/{chat_id}/read", read_chat)
    app.router.add_get("/chats/{chat_id}/members", list_members)
    app.router.add_post("/chats/{chat_id}/members", add_member)
    app.router.add_patch("/chats/{chat_id}/members/{user_id}", change_member)
    app.router.add_delete("/chats/{chat_id}/members/{user_id}", remove_member)
    app.router.add_post("/invites", create_invite)
