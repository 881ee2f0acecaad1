"""An async client for ChatAPI: the HTTP routes, and a websocket session that resumes.

    async with ChatClient("http://127.0.0.1:8080") as api:
        await api.login("ada@example.com", "correct horse")
        async with api.connect() as session:
            await session.join(chat_id)
            async for frame in session:
                ...

The session survives dropped connections and server restarts: it reconnects, joins
its chats again with `since=<last id seen>` and drops what it has already delivered,
so every message of a followed chat is seen exactly once.

A script or bot passes an API token instead of logging in:

    async with ChatClient("http://127.0.0.1:8080", token="chatapi_...") as api:
        ...
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import random
import uuid
from collections import Counter
from types import TracebackType
from typing import Any, Self

import aiohttp

log = logging.getLogger(__name__)

LOGGED_OUT = 4001  # close code of a socket whose tokens were revoked
CONNECT_TIMEOUT = 30.0  # seconds a websocket handshake may take
CLOSE_TIMEOUT = 5.0  # seconds a closing handshake may take before the socket is cut
# A refused handshake with one of these statuses will not succeed by retrying.
FATAL_HANDSHAKE = frozenset({400, 401, 403, 404, 405})


class ChatAPIError(Exception):
    """An error answer of the server: its status, its message and per-field details."""

    def __init__(self, status: int, message: str, details: dict[str, str] | None = None) -> None:
        super().__init__(status, message, details)
        self.status = status
        self.message = message
        self.details = details

    def __str__(self) -> str:
        text = f"{self.status}: {self.message}"
        if self.details:
            text += f" {self.details}"
        return text


class ChatConnectionError(ConnectionError):
    """The server cannot be reached, or the websocket session is closed or stayed
    disconnected for too long."""


def error_of_answer(status: int, text: str | bytes, reason: str | None) -> ChatAPIError:
    """The ChatAPIError of an error answer: its {"error", "details"?} body, else its reason."""
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        details = body.get("details")
        if not isinstance(details, dict):
            details = None
        return ChatAPIError(status, body["error"], details)
    return ChatAPIError(status, reason or f"HTTP {status}")


def _given(**params: Any) -> dict[str, Any]:
    """The query parameters that have a value."""
    return {name: value for name, value in params.items() if value is not None}


async def _error_of(resp: aiohttp.ClientResponse) -> ChatAPIError:
    return error_of_answer(resp.status, await resp.read(), resp.reason)


class ChatClient:
    """The HTTP routes of a ChatAPI server, and `connect()` for its websocket."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        # Public and mutable: a session reads both again on every reconnect.
        self.base_url = base_url.rstrip("/")
        self.token = token
        self._http = session
        self._owns_http = session is None
        self._sessions: set[ChatSession] = set()
        self._identified: tuple[str, int] | None = None  # (API token, its user's id)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the websocket sessions opened here, and the HTTP session if it is ours."""
        for session in list(self._sessions):
            await session.close()
        if self._owns_http and self._http is not None:
            await self._http.close()
            self._http = None

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            # Created lazily: a ClientSession belongs inside a running event loop.
            self._http = aiohttp.ClientSession()
        return self._http

    def _url(self, path: str) -> str:
        return self.base_url + path

    def user_id(self) -> int | None:
        """The id of the user the token belongs to (read from a session token; for an
        API token, known once `me()` answered), or None."""
        if self._identified is not None and self._identified[0] == self.token:
            return self._identified[1]
        try:
            payload = (self.token or "").split(".")[1]
            claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            return int(claims["sub"])
        except (IndexError, ValueError, KeyError, TypeError):
            return None

    def _auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def _request(
        self,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        auth: bool = True,
    ) -> Any:
        headers = self._auth_headers() if auth else {}
        try:
            async with self._session().request(
                method, self._url(path), json=body, params=params, headers=headers
            ) as resp:
                if resp.status >= 400:
                    raise await _error_of(resp)
                if resp.status == 204:
                    return None
                return await resp.json()
        except (aiohttp.ClientConnectionError, OSError, TimeoutError) as exc:
            raise ChatConnectionError(f"could not reach {self.base_url}: {exc!r}") from exc

    async def register(self, email: str, username: str, password: str) -> dict[str, Any]:
        """Create an account; keeps its token. Returns {"token", "username", "id"}."""
        body = {"email": email, "username": username, "password": password}
        answer = await self._request("POST", "/auth/reg", body=body, auth=False)
        self.token = answer["token"]
        return answer

    async def login(self, email: str, password: str) -> dict[str, Any]:
        """Log in; keeps the token. Returns {"token", "username", "id"}."""
        body = {"email": email, "password": password}
        answer = await self._request("POST", "/auth/login", body=body, auth=False)
        self.token = answer["token"]
        return answer

    async def logout(self) -> None:
        """Revoke every session token of this user (their open sockets close with 4001)
        and forget ours. API tokens stay valid; an API token cannot log out (403)."""
        await self._request("POST", "/auth/logout")
        self.token = None

    async def me(self) -> dict[str, Any]:
        """The caller: {"id", "email", "username", "is_online"}."""
        token = self.token
        answer = await self._request("GET", "/users/me")
        if token is not None:
            self._identified = (token, answer["id"])
        return answer

    async def create_api_token(self, name: str) -> dict[str, Any]:
        """A new API token (needs a session token): {"id", "name", "created_at",
        "last_used_at", "token"}; the token is shown this once."""
        return await self._request("POST", "/auth/tokens", body={"name": name})

    async def api_tokens(self) -> list[dict[str, Any]]:
        """The caller's API tokens, without their value (needs a session token)."""
        return await self._request("GET", "/auth/tokens")

    async def revoke_api_token(self, token_id: int) -> None:
        """Revoke an API token: its sockets close with 4001 (needs a session token)."""
        await self._request("DELETE", f"/auth/tokens/{token_id}")

    async def users(self) -> list[dict[str, Any]]:
        """Every user, ordered by id."""
        return await self._request("GET", "/users/")

    async def create_chat(self, name: str) -> dict[str, Any]:
        """Create a chat; returns it ({"id", "name", ...})."""
        return await self._request("POST", "/chats/create", body={"name": name})

    async def chats(self) -> list[dict[str, Any]]:
        """Every chat, ordered by id."""
        return await self._request("GET", "/chats/")

    async def messages(
        self,
        chat_id: int,
        limit: int | None = None,
        before: int | None = None,
        after: int | None = None,
    ) -> list[dict[str, Any]]:
        """Messages of a chat, oldest first; all of them unless paged by limit/before/after."""
        params = _given(id=chat_id, limit=limit, before=before, after=after)
        return await self._request("GET", "/chats/messages", params=params)

    async def search(
        self,
        q: str,
        chat_id: int | None = None,
        limit: int | None = None,
        before: int | None = None,
    ) -> list[dict[str, Any]]:
        """Messages containing every word of q (the last also as a prefix), newest first,
        from the chats this user may read (or only `chat_id`); page with `before`."""
        params = _given(q=q, chat_id=chat_id, limit=limit, before=before)
        return await self._request("GET", "/search", params=params)

    def connect(
        self,
        *,
        send_timeout: float = 30.0,
        backoff: float = 0.1,
        max_backoff: float = 5.0,
        heartbeat: float | None = 20.0,
        max_queue: int = 1000,
    ) -> ChatSession:
        """A websocket session (use it with `async with`); see ChatSession."""
        return ChatSession(
            self,
            send_timeout=send_timeout,
            backoff=backoff,
            max_backoff=max_backoff,
            heartbeat=heartbeat,
            max_queue=max_queue,
        )


class _Link:
    """One websocket connection of a session."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, opened_at: float) -> None:
        self.ws = ws
        self.opened_at = opened_at
        # chat id -> "joined" answers still due for joins the session sent by itself
        self.auto_joins: Counter[int] = Counter()


_END = object()


class ChatSession:
    """A websocket session that reconnects and resumes where it stopped.

    Iterate over it for the server's frames (dicts). The session follows every chat
    it joined or posted to: it remembers the highest message id it delivered per
    chat, and when the connection drops (anything but `close()` or close code 4001,
    logged out) it reconnects with a growing backoff, joins each chat again with
    `since=<that id>` and drops message frames it has already delivered. A consumer
    therefore sees every message of those chats once, in id order, across drops and
    server restarts. The "joined" answers to those automatic joins are not passed on.

    `send`, `join` and `leave` wait for a reconnection, at most `send_timeout`
    seconds, then raise ChatConnectionError. A message handed to a socket that then
    drops may or may not have reached the server: give every message a `nonce` (a
    UUID) and, if its acknowledgement does not arrive, send it again with the same
    nonce; the server stores it once, and the session delivers it once.

    Iteration ends after `close()`; it raises ChatAPIError(401) once the user is
    logged out (close code 4001, or a refused reconnect). `connected`, `reconnects`
    and `last_ids` tell how it is going; the client's `base_url` and `token` are read
    again on every reconnect, so a server that moved can be followed.
    """

    def __init__(
        self,
        client: ChatClient,
        *,
        send_timeout: float = 30.0,
        backoff: float = 0.1,
        max_backoff: float = 5.0,
        heartbeat: float | None = 20.0,
        max_queue: int = 1000,
    ) -> None:
        self._client = client
        self._send_timeout = send_timeout
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._heartbeat = heartbeat
        # Bounded: a consumer that stops reading stops the reader, and a server
        # that drops us for it is resumed from the last id like any other drop.
        self._inbox: asyncio.Queue[Any] = asyncio.Queue(max_queue)
        self._last_ids: dict[int, int] = {}  # chat id -> highest message id delivered
        # nonce -> (chat id, future) of each send waiting for its acknowledgement
        self._acks: dict[str, list[tuple[int, asyncio.Future[dict[str, Any]]]]] = {}
        self._link: _Link | None = None
        self._changed = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._attempt = 0
        self._closed = False  # by close()
        self._error: BaseException | None = None  # why the session ended by itself
        self._ended = False
        self.reconnects = 0

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        """True while a connection is up (and its chats joined again)."""
        return self._link is not None

    @property
    def last_ids(self) -> dict[int, int]:
        """The followed chats and the highest message id delivered for each."""
        return dict(self._last_ids)

    async def open(self) -> None:
        """Connect; raises ChatAPIError when refused, ChatConnectionError when unreachable."""
        if self._reader is not None or self._closed:
            raise ChatConnectionError("a session can be opened once")
        if self._client.token and self._client.user_id() is None:
            # An API token does not say whose it is: acknowledgements are matched by user.
            await self._client.me()
        try:
            link = await self._open_link()
        except aiohttp.WSServerHandshakeError as exc:
            raise ChatAPIError(exc.status, f"websocket refused: {exc.message}") from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ChatConnectionError(
                f"could not reach {self._client.base_url}: {exc!r}"
            ) from exc
        self._client._sessions.add(self)
        self._set_link(link)
        self._reader = asyncio.create_task(self._run(link))

    async def close(self) -> None:
        """Close the connection for good; iteration ends, sends raise."""
        if self._closed:
            return
        self._closed = True
        self._client._sessions.discard(self)
        link = self._link
        self._lose(link)
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except asyncio.CancelledError:
                if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                    raise
        if link is not None:
            await self._close_ws(link.ws)
        # Wakes a consumer waiting on an empty inbox; a full one has none waiting.
        with contextlib.suppress(asyncio.QueueFull):
            self._inbox.put_nowait(_END)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> dict[str, Any]:
        if self._closed:
            raise StopAsyncIteration
        item = await self._inbox.get()
        if item is _END:
            with contextlib.suppress(asyncio.QueueFull):
                self._inbox.put_nowait(_END)  # later calls end too
            if self._error is not None and not self._closed:
                raise self._error
            raise StopAsyncIteration
        return item

    async def send(self, chat_id: int, text: str, nonce: str | None = None) -> dict[str, Any]:
        """Post a message and return it as stored: the server's acknowledgement, matched by
        nonce (a UUID is generated when none is given).

        If the connection drops before the acknowledgement, the message is sent again
        with the same nonce once reconnected; the server stores it once. Raises
        ChatAPIError(400) when the server refuses the message (an error frame), and
        ChatConnectionError when no acknowledgement came within `send_timeout`. The
        acknowledgement is also passed on to the iterator, like every message frame.
        Posting to a chat the session does not follow yet joins it first (from its
        newest message), so that its messages are resumed after a drop too.
        """
        deadline = self._deadline()
        if chat_id not in self._last_ids:
            await self._follow(chat_id, None, deadline, automatic=True)
        nonce = uuid.uuid4().hex if nonce is None else nonce
        frame: dict[str, Any] = {"chat_id": chat_id, "text": text, "nonce": nonce}
        ack: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        waiting = self._acks.setdefault(nonce, [])
        waiting.append((chat_id, ack))
        try:
            while True:
                link = await self._send(frame, deadline)
                if await self._acknowledged(ack, link, deadline):
                    return ack.result()
        finally:
            waiting.remove((chat_id, ack))
            if not waiting:
                self._acks.pop(nonce, None)

    async def _acknowledged(
        self, ack: asyncio.Future[dict[str, Any]], link: _Link, deadline: float
    ) -> bool:
        """Wait for `ack`: True once it came, False when `link` was lost first."""
        while not ack.done():
            self._check_usable()
            if self._link is not link:
                return False
            changed = asyncio.ensure_future(self._changed.wait())
            try:
                async with asyncio.timeout_at(deadline):
                    await asyncio.wait([ack, changed], return_when=asyncio.FIRST_COMPLETED)
            except TimeoutError:
                raise ChatConnectionError(
                    f"no acknowledgement from {self._client.base_url} "
                    f"within {self._send_timeout:g} s"
                ) from None
            finally:
                changed.cancel()
        return True

    async def join(self, chat_id: int, since: int | None = None) -> None:
        """Follow a chat: messages after `since`, or from now on; a "joined" frame follows."""
        await self._follow(chat_id, since, self._deadline(), automatic=False)

    async def typing(self, chat_id: int) -> None:
        """Tell the chat's other subscribers that this user is typing. Call it on
        keystrokes freely: the server passes at most one every few seconds and drops the
        rest. No stop is needed (the indication expires; a message from the user ends it
        on the other clients). Not resent after a reconnect."""
        self._check_usable()
        await self._send({"type": "typing", "chat_id": chat_id}, self._deadline())

    async def leave(self, chat_id: int) -> None:
        """Stop following a chat; a "left" frame follows."""
        self._check_usable()
        self._last_ids.pop(chat_id, None)
        await self._send({"type": "leave", "chat_id": chat_id}, self._deadline())

    def _deadline(self) -> float:
        return asyncio.get_running_loop().time() + self._send_timeout

    async def _follow(
        self, chat_id: int, since: int | None, deadline: float, *, automatic: bool
    ) -> None:
        self._check_usable()
        if chat_id in self._last_ids:
            # Never deliver a message twice, whatever `since` asks for.
            since = max(since or 0, self._last_ids[chat_id])
        elif since is None:
            # A join without `since` has no cursor to resume from after a drop;
            # the newest id now is one, and joining with it loses nothing.
            since = await self._newest_id(chat_id, deadline)
        self._last_ids[chat_id] = since
        frame = {"type": "join", "chat_id": chat_id, "since": since}
        await self._send(frame, deadline, auto_join=chat_id if automatic else None)

    async def _newest_id(self, chat_id: int, deadline: float) -> int:
        while True:
            await self._wait_link(deadline)  # while disconnected, HTTP would fail too
            try:
                newest = await self._client.messages(chat_id, limit=1)
            except ChatConnectionError:
                # The server just went away; the reader will notice it soon.
                if asyncio.get_running_loop().time() >= deadline:
                    raise
                await asyncio.sleep(self._backoff)
                continue
            return newest[-1]["id"] if newest else 0

    def _check_usable(self) -> None:
        if self._closed:
            raise ChatConnectionError("the websocket session is closed")
        if self._ended:
            if self._error is not None:
                raise self._error
            raise ChatConnectionError("the websocket session has ended")
        if self._reader is None:
            raise ChatConnectionError("the websocket session is not open: use `async with`")

    async def _send(
        self, frame: dict[str, Any], deadline: float, auto_join: int | None = None
    ) -> _Link:
        """Write a frame on the current connection (waiting for one); returns that link."""
        data = json.dumps(frame, ensure_ascii=False)
        while True:
            link = await self._wait_link(deadline)
            if auto_join is not None:
                # Counted before sending: the answer may be read before send_str returns.
                link.auto_joins[auto_join] += 1
            try:
                await link.ws.send_str(data)
                return link
            except (aiohttp.ClientConnectionError, ConnectionError):
                # Not written at all; the reader notices the drop and reconnects.
                self._lose(link)

    async def _wait_link(self, deadline: float) -> _Link:
        while True:
            self._check_usable()
            link = self._link
            if link is not None and not link.ws.closed:
                return link
            if link is not None:
                self._lose(link)
            changed = self._changed
            try:
                async with asyncio.timeout_at(deadline):
                    await changed.wait()
            except TimeoutError:
                raise ChatConnectionError(
                    f"not connected: no connection to {self._client.base_url} "
                    f"within {self._send_timeout:g} s"
                ) from None

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _set_link(self, link: _Link) -> None:
        self._link = link
        self._notify()

    def _lose(self, link: _Link | None) -> None:
        if link is not None and self._link is link:
            self._link = None
            self._notify()

    async def _open_link(self) -> _Link:
        """Connect, and join every followed chat again from its last delivered id."""
        http = self._client._session()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                ws = await http.ws_connect(
                    self._client._url("/chats/ws"),
                    headers=self._client._auth_headers(),
                    heartbeat=self._heartbeat,
                )
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status in FATAL_HANDSHAKE:
                message = "invalid or expired token" if exc.status == 401 else exc.message
                raise ChatAPIError(exc.status, f"websocket refused: {message}") from None
            raise
        link = _Link(ws, asyncio.get_running_loop().time())
        try:
            for chat_id, last_id in list(self._last_ids.items()):
                link.auto_joins[chat_id] += 1
                frame = {"type": "join", "chat_id": chat_id, "since": last_id}
                await ws.send_str(json.dumps(frame))
        except BaseException:
            await self._close_ws(ws)
            raise
        return link

    async def _reconnect(self) -> _Link:
        while True:
            delay = min(self._max_backoff, self._backoff * 2**self._attempt)
            self._attempt += 1
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            try:
                link = await self._open_link()
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                log.info("reconnecting to %s failed: %r", self._client.base_url, exc)
                continue
            self.reconnects += 1
            log.info("reconnected to %s", self._client.base_url)
            return link

    async def _run(self, link: _Link) -> None:
        """The one reader: read, and on a drop reconnect, until closed or logged out."""
        try:
            while True:
                code, reason = await self._read(link)
                self._lose(link)
                await self._close_ws(link.ws)
                if code == LOGGED_OUT:
                    reason = reason or "logged out"
                    raise ChatAPIError(401, f"connection closed by the server: {reason}")
                log.info("websocket to %s dropped (close code %s)", self._client.base_url, code)
                if asyncio.get_running_loop().time() - link.opened_at >= self._max_backoff:
                    self._attempt = 0  # it was up long enough: start the backoff again
                link = await self._reconnect()
                self._set_link(link)
        except ChatAPIError as exc:
            await self._finish(exc)
        except Exception as exc:
            log.exception("websocket session to %s failed", self._client.base_url)
            await self._finish(ChatConnectionError(f"websocket session failed: {exc!r}"))

    async def _finish(self, error: BaseException) -> None:
        self._error = error
        self._ended = True
        self._notify()
        await self._inbox.put(_END)

    async def _read(self, link: _Link) -> tuple[int | None, str]:
        """Read frames until the connection ends; returns the close code and reason."""
        ws = link.ws
        while True:
            msg = await ws.receive()
            if msg.type == aiohttp.WSMsgType.TEXT:
                await self._accept(link, msg.data)
            elif msg.type == aiohttp.WSMsgType.CLOSE:
                return ws.close_code, msg.extra or ""
            elif msg.type in (
                aiohttp.WSMsgType.CLOSING,
                aiohttp.WSMsgType.CLOSED,
                aiohttp.WSMsgType.ERROR,
            ):
                return ws.close_code, ""

    async def _accept(self, link: _Link, data: str) -> None:
        try:
            frame = json.loads(data)
        except ValueError:
            log.warning("ignoring a websocket frame that is not JSON")
            return
        if not isinstance(frame, dict):
            return
        kind, chat_id = frame.get("type"), frame.get("chat_id")
        if isinstance(frame.get("nonce"), str) and frame["nonce"] in self._acks:
            self._acknowledge(frame)
        if kind == "message" and chat_id in self._last_ids and isinstance(frame.get("id"), int):
            if frame["id"] <= self._last_ids[chat_id]:
                return  # delivered already (a replay after a reconnect, or a nonce echo)
            self._last_ids[chat_id] = frame["id"]
        elif kind == "joined" and frame.get("cursor_reset") and chat_id in self._last_ids:
            # Our cursor was beyond the chat's newest message: resume from the server's.
            self._last_ids[chat_id] = frame["last_id"]
        if kind == "joined" and link.auto_joins[chat_id] > 0:
            link.auto_joins[chat_id] -= 1
            return
        await self._inbox.put(frame)

    def _acknowledge(self, frame: dict[str, Any]) -> None:
        """Complete the sends waiting for this frame's nonce: a message is their
        acknowledgement, an error frame (sent to this socket only) their refusal."""
        kind = frame.get("type")
        if kind == "message" and frame.get("owner_id") not in (None, self._client.user_id()):
            return  # another user's message that happens to carry the same nonce
        for chat_id, ack in self._acks[frame["nonce"]]:
            if ack.done():
                continue
            if kind == "error":
                ack.set_exception(ChatAPIError(400, f"message refused: {frame.get('error')}"))
            elif kind == "message" and frame.get("chat_id") == chat_id:
                ack.set_result(frame)

    @staticmethod
    async def _close_ws(ws: aiohttp.ClientWebSocketResponse) -> None:
        with contextlib.suppress(TimeoutError, aiohttp.ClientError, OSError):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await ws.close()
