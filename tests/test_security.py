"""Tokens (RFC 8725): every malformed, forged or stale token is 401, over HTTP and on the handshake."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import aiohttp
import jwt
import pytest
from conftest import assert_error, chatapi_process

from chatapi import create_app
from chatapi.keys import SECRET
from chatapi.testing import ChatServer


def signed(client, algorithm: str = "HS256", key: bytes | None = None, **claims) -> str:
    now = int(time.time())
    payload = {"sub": "1", "ver": 0, "iat": now, "exp": now + 60, **claims}
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode(payload, key or client.app[SECRET], algorithm=algorithm)


def b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def alg_none(client) -> str:
    now = int(time.time())
    claims = {"sub": "1", "ver": 0, "iat": now, "exp": now + 60}
    return f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims)}."


def tampered(client) -> str:
    header, _, signature = signed(client).split(".")
    now = int(time.time())
    forged = b64({"sub": "2", "ver": 0, "iat": now, "exp": now + 60})
    return f"{header}.{forged}.{signature}"


BAD_TOKENS = {
    "garbage": lambda c: "not-a-jwt",
    "alg-none": alg_none,
    "alg-none-uppercase": lambda c: alg_none(c).replace(b64({"alg": "none", "typ": "JWT"}),
                                                       b64({"alg": "NONE", "typ": "JWT"})),
    "hs512-same-secret": lambda c: signed(c, "HS512"),
    "tampered-payload": tampered,
    "wrong-key": lambda c: signed(c, key=b"k" * 32),
    "no-exp": lambda c: signed(c, exp=None),
    "no-iat": lambda c: signed(c, iat=None),
    "no-sub": lambda c: signed(c, sub=None),
    "sub-not-a-number": lambda c: signed(c, sub="alice"),
    "expired": lambda c: signed(c, exp=int(time.time()) - 5),
    "future-nbf": lambda c: signed(c, nbf=int(time.time()) + 3600),
    "unknown-user": lambda c: signed(c, sub="999"),
    "revoked-version": lambda c: signed(c, ver=7),
}


@pytest.fixture
async def alice(client, register):
    user = await register(client, "alice")
    assert user["id"] == 1
    return user


async def test_a_good_token_works_both_ways(client, alice):
    token = signed(client)
    assert (await client.get("/users/me", headers={"Authorization": f"Bearer {token}"})).status == 200
    ws = await client.ws_connect("/chats/ws", params={"token": token})
    await ws.close()


@pytest.mark.parametrize("make", BAD_TOKENS.values(), ids=BAD_TOKENS.keys())
async def test_bad_token_is_401_over_http(client, alice, make):
    headers = {"Authorization": f"Bearer {make(client)}"}
    body = await assert_error(await client.get("/users/me", headers=headers), 401)
    assert "eyJ" not in json.dumps(body)


@pytest.mark.parametrize("make", BAD_TOKENS.values(), ids=BAD_TOKENS.keys())
async def test_bad_token_is_401_on_the_handshake(client, alice, make):
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect("/chats/ws", params={"token": make(client)})
    assert info.value.status == 401
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect("/chats/ws", headers={"Authorization": f"Bearer {make(client)}"})
    assert info.value.status == 401


async def test_a_token_that_worked_is_refused_once_it_expires(aiohttp_client, config, register):
    # Verified tokens are remembered (chatapi.security._verified): expiry must not be.
    client = await aiohttp_client(create_app(config.replace(token_ttl=2)))
    user = await register(client, "brief")
    for _ in range(3):
        assert (await client.get("/users/me", headers=user.headers)).status == 200
    await asyncio.sleep(3.1)
    body = await assert_error(await client.get("/users/me", headers=user.headers), 401)
    assert body["error"] == "invalid or expired token"
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect("/chats/ws", params={"token": user["token"]})
    assert info.value.status == 401


async def test_query_token_is_redacted_from_access_lines(caplog, database):
    # The threaded server runs the production runner and access logger.
    async with ChatServer(db_path=database, bcrypt_rounds=4) as server, aiohttp.ClientSession() as http:
        body = {"email": "r@example.com", "username": "redact", "password": "password1"}
        async with http.post(server.url + "/auth/reg", json=body) as resp:
            token = (await resp.json())["token"]
        async with http.ws_connect(server.ws_url, params={"token": token}) as ws:
            await ws.send_json({"type": "leave", "chat_id": 1})
            await ws.receive_json(timeout=5)
        async with http.get(server.url + "/users/me", params={"token": token}):
            pass  # a misplaced token, too
        for _ in range(250):  # the websocket's line is written when its handler ends
            lines = [r.getMessage() for r in caplog.records if r.name == "aiohttp.access"]
            if any("/chats/ws" in line for line in lines) and any(
                "/users/me" in line for line in lines
            ):
                break
            await asyncio.sleep(0.02)
    assert any("/chats/ws?token=REDACTED" in line for line in lines), lines
    assert any("/users/me?token=REDACTED" in line for line in lines), lines
    assert not any(token in line for line in lines)


async def raw_request(url: str, request: str) -> bytes:
    """Send `request` as it is, byte for byte; the server's whole answer."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(request.encode("latin-1"))
    try:
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        await writer.wait_closed()


MALFORMED = {
    "junk after the version": "GET /chats/ws?token={t} HTTP/1.1 junk\r\nHost: x\r\n\r\n",
    "control character in the query": "GET /chats/ws?token={t}\x01 HTTP/1.1\r\nHost: x\r\n\r\n",
    "unknown method": "BREW /chats/ws?token={t} HTTP/1.1\r\nHost: x\r\n\r\n",
    "token in a bad header": "GET /users/me HTTP/1.1\r\nHost: x\r\nBad Header: {t}\r\n\r\n",
    "line too long": "GET /users/me?token={t}&pad=" + "x" * 9000 + " HTTP/1.1\r\n\r\n",
}
WELL_FORMED = {
    "misspelt parameter": "GET /users/me?TOKEN={t} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    "mixed case": "GET /chats/ws?Token={t} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    "another parameter": "GET /chats/messages?chat_id=1&auth={t} HTTP/1.1\r\nHost: x\r\n"
    "Connection: close\r\n\r\n",
    "in the path": "GET /users/{t} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    "percent-encoded dots": "GET /x?t={e} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
}


async def test_no_request_however_malformed_puts_a_token_in_the_log(tmp_path, database):
    # As the attacking client did: raw requests to a server process, its stderr read.
    async with chatapi_process(tmp_path, database=database) as (url, stderr_path), aiohttp.ClientSession() as http:
        body = {"email": "t@example.com", "username": "tokens", "password": "password1"}
        async with http.post(url + "/auth/reg", json=body) as resp:
            token = (await resp.json())["token"]
        encoded = token.replace(".", "%2E")
        for request in MALFORMED.values():
            answer = await raw_request(url, request.format(t=token))
            head, _, payload = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.") and b" 400 " in head.split(b"\r\n")[0], answer[:200]
            assert b"application/json" in head, head  # the contract's error shape
            assert json.loads(payload)["error"].startswith("bad request")
            assert token.encode() not in answer  # nor echoed back
        for request in WELL_FORMED.values():
            answer = await raw_request(url, request.format(t=token, e=encoded))
            assert answer.startswith(b"HTTP/1.1 4"), answer[:200]
        await asyncio.sleep(0.5)  # the last access lines are written
    log = stderr_path.read_text()
    assert log.count('"UNKNOWN / HTTP/1.0" 400') >= len(MALFORMED) - 1, log  # each was logged
    assert log.count("REDACTED") >= len(WELL_FORMED), log
    assert "eyJ" not in log and token not in log, log
    assert "Traceback" not in log, log
