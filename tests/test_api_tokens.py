"""API tokens for scripts and bots: created with a session token, shown once, stored
hashed, listed without their value, accepted wherever a session token is, revoked one
by one (their sockets closed at once, on every process), kept by logout, ended by a
password reset, never in a log line. Both backends."""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import Awaitable

import aiohttp
import pytest
from conftest import (
    assert_error,
    chatapi_process,
    connect,
    create_chat,
    next_frame,
    no_frame,
    run_sql,
)
from test_faults import api
from test_faults import register as register_over_http
from test_revocation import closed_with, reset_password
from test_scaleout import cluster, session  # noqa: F401 (cluster is a fixture)
from test_security import MALFORMED, WELL_FORMED, raw_request

from chatapi import tokens
from chatapi.redaction import redact

TOKEN = re.compile(r"chatapi_[0-9a-f]{64}")


async def new_token(client, user, name: str = "bot") -> dict:
    resp = await client.post("/auth/tokens", json={"name": name}, headers=user.headers)
    assert resp.status == 201, await resp.text()
    return await resp.json()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_a_token_is_shown_once_stored_hashed_listed_without_its_value_and_revoked(
    client, register, config
):
    alice = await register(client, "alice")
    created = await new_token(client, alice, "  deploy bot  ")
    assert set(created) == {"id", "name", "created_at", "last_used_at", "token"}
    assert TOKEN.fullmatch(created["token"]) and created["name"] == "deploy bot"
    assert created["last_used_at"] is None

    resp = await client.get("/auth/tokens", headers=alice.headers)
    assert resp.status == 200
    listed = await resp.json()
    assert listed == [{k: v for k, v in created.items() if k != "token"}]
    rows = await run_sql(config.db_path, "SELECT user_id, name, hash FROM api_tokens")
    digest = hashlib.sha256(created["token"].encode()).hexdigest()
    assert [tuple(row) for row in rows] == [(alice["id"], "deploy bot", digest)]

    resp = await client.delete(f"/auth/tokens/{created['id']}", headers=alice.headers)
    assert resp.status == 204
    await assert_error(await client.get("/users/me", headers=bearer(created["token"])), 401)
    assert await (await client.get("/auth/tokens", headers=alice.headers)).json() == []
    await assert_error(
        await client.delete(f"/auth/tokens/{created['id']}", headers=alice.headers), 404
    )


async def test_a_token_of_another_user_cannot_be_revoked_nor_seen(client, register):
    alice, bob = await register(client, "alice"), await register(client, "bob")
    created = await new_token(client, alice)
    await assert_error(await client.delete(f"/auth/tokens/{created['id']}", headers=bob.headers), 404)
    assert await (await client.get("/auth/tokens", headers=bob.headers)).json() == []
    assert (await client.get("/users/me", headers=bearer(created["token"]))).status == 200


@pytest.mark.parametrize("token_id", ["abc", "0x1", "99999999999999999999", "-1"])
async def test_revoking_an_id_that_is_no_token_is_404(client, register, token_id):
    alice = await register(client, "alice")
    await assert_error(await client.delete(f"/auth/tokens/{token_id}", headers=alice.headers), 404)


@pytest.mark.parametrize("body", [
    {}, {"name": ""}, {"name": "   "}, {"name": 7}, {"name": "x" * 101}, {"name": "a\x00b"},
    {"name": "line\nbreak"},
])
async def test_a_token_needs_a_readable_name(client, register, body):
    alice = await register(client, "alice")
    error = await assert_error(
        await client.post("/auth/tokens", json=body, headers=alice.headers), 400
    )
    assert error["details"] == {"name": error["details"]["name"]}
    assert await (await client.get("/auth/tokens", headers=alice.headers)).json() == []


async def test_a_token_works_over_http_and_both_websocket_handshakes(client, register, config):
    alice, bob = await register(client, "alice"), await register(client, "bob")
    chat = await create_chat(client, alice)
    token = (await new_token(client, bob))["token"]

    resp = await client.get("/users/me", headers=bearer(token))
    assert resp.status == 200 and (await resp.json())["username"] == "bob"
    by_query = await client.ws_connect("/chats/ws", params={"token": token})
    by_header = await client.ws_connect("/chats/ws", headers=bearer(token))
    await by_header.send_json({"type": "join", "chat_id": chat})
    assert (await next_frame(by_header))["type"] == "joined"
    await by_query.send_json({"chat_id": chat, "text": "from the bot", "nonce": "b1"})
    own = await next_frame(by_query)
    assert (own["owner_id"], own["username"], own["nonce"]) == (bob["id"], "bob", "b1")
    assert (await next_frame(by_header))["text"] == "from the bot"
    (listed,) = await (await client.get("/auth/tokens", headers=bob.headers)).json()
    assert listed["last_used_at"] is not None
    for ws in (by_query, by_header):
        await ws.close()


async def test_an_api_token_cannot_manage_tokens_nor_log_out(client, register):
    alice = await register(client, "alice")
    created = await new_token(client, alice)
    headers = bearer(created["token"])
    for method, path, body in (
        ("POST", "/auth/tokens", {"name": "another"}),
        ("GET", "/auth/tokens", None),
        ("DELETE", f"/auth/tokens/{created['id']}", None),
        ("POST", "/auth/logout", None),
    ):
        await assert_error(await client.request(method, path, json=body, headers=headers), 403)
    # Nothing changed: one token, still valid, and the session too.
    assert len(await (await client.get("/auth/tokens", headers=alice.headers)).json()) == 1
    assert (await client.get("/users/me", headers=headers)).status == 200
    assert (await client.get("/users/me", headers=alice.headers)).status == 200


async def test_logout_keeps_api_tokens_and_their_sockets(client, register):
    alice = await register(client, "alice")
    chat = await create_chat(client, alice)
    token = (await new_token(client, alice))["token"]
    session_ws = await connect(client, alice)
    bot_ws = await client.ws_connect("/chats/ws", params={"token": token})
    resp = await client.post("/auth/logout", headers=alice.headers)
    assert resp.status == 204
    assert await closed_with(session_ws) == 4001
    await bot_ws.send_json({"chat_id": chat, "text": "still working", "nonce": "n"})
    assert (await next_frame(bot_ws))["text"] == "still working"
    assert (await client.get("/users/me", headers=bearer(token))).status == 200
    await assert_error(await client.get("/users/me", headers=alice.headers), 401)
    await bot_ws.close()


async def test_revoking_a_token_closes_its_sockets_at_once_and_no_other(client, register):
    alice = await register(client, "alice")
    chat = await create_chat(client, alice)
    first, second = await new_token(client, alice, "one"), await new_token(client, alice, "two")
    doomed = await client.ws_connect("/chats/ws", params={"token": first["token"]})
    kept = await client.ws_connect("/chats/ws", params={"token": second["token"]})
    session_ws = await connect(client, alice)
    started = time.monotonic()
    resp = await client.delete(f"/auth/tokens/{first['id']}", headers=alice.headers)
    assert resp.status == 204
    assert await closed_with(doomed, timeout=1.0) == 4001
    assert time.monotonic() - started < 1.0
    for ws in (kept, session_ws):
        await ws.send_json({"chat_id": chat, "text": "alive"})
        assert (await next_frame(ws))["text"] == "alive"
        await ws.close()


async def test_nothing_from_a_revoked_tokens_sockets_is_stored_once_revoking_has_answered(
    client, register, config
):
    alice = await register(client, "alice")
    chat = await create_chat(client, alice)
    created = await new_token(client, alice)
    sockets = [
        await client.ws_connect("/chats/ws", params={"token": created["token"]}) for _ in range(3)
    ]
    stop = asyncio.Event()

    async def flood(ws: aiohttp.ClientWebSocketResponse, n: int) -> None:
        count = 0
        while not stop.is_set() and not ws.closed:
            count += 1
            try:
                await ws.send_json({"chat_id": chat, "text": f"{n}-{count}"})
            except (ConnectionError, RuntimeError):
                return
            await asyncio.sleep(0)

    def stored() -> Awaitable[list]:
        return run_sql(config.db_path, "SELECT id, text FROM messages ORDER BY id")

    floods = [asyncio.create_task(flood(ws, n)) for n, ws in enumerate(sockets)]
    while len(await stored()) < 50:
        await asyncio.sleep(0.01)
    resp = await client.delete(f"/auth/tokens/{created['id']}", headers=alice.headers)
    assert resp.status == 204
    at_revocation = await stored()
    codes = [await closed_with(ws) for ws in sockets]
    stop.set()
    await asyncio.gather(*floods)
    await asyncio.sleep(0.5)  # a straggler would be committed by now
    assert codes == [4001] * 3
    assert await stored() == at_revocation


async def test_reset_password_revokes_api_tokens_and_closes_their_sockets(
    client, register, config
):
    alice = await register(client, "alice")
    token = (await new_token(client, alice))["token"]
    bot_ws = await client.ws_connect("/chats/ws", params={"token": token})
    await reset_password(config.db_path, alice["email"], "a-brand-new-password")
    assert await closed_with(bot_ws) == 4001
    await assert_error(await client.get("/users/me", headers=bearer(token)), 401)
    login = await client.post(
        "/auth/login", json={"email": alice["email"], "password": "a-brand-new-password"}
    )
    fresh = {"Authorization": f"Bearer {(await login.json())['token']}"}
    assert await (await client.get("/auth/tokens", headers=fresh)).json() == []


async def test_a_user_has_at_most_max_tokens(client, register, monkeypatch):
    monkeypatch.setattr(tokens, "MAX_TOKENS", 5)
    alice, bob = await register(client, "alice"), await register(client, "bob")
    results = await asyncio.gather(*(
        client.post("/auth/tokens", json={"name": f"t{n}"}, headers=alice.headers)
        for n in range(8)
    ))
    assert sorted(resp.status for resp in results) == [201] * 5 + [409] * 3
    error = await assert_error(
        await client.post("/auth/tokens", json={"name": "one more"}, headers=alice.headers), 409
    )
    assert "at most 5" in error["error"]
    assert len(await (await client.get("/auth/tokens", headers=alice.headers)).json()) == 5
    await new_token(client, bob)  # the cap is per user
    listed = await (await client.get("/auth/tokens", headers=alice.headers)).json()
    resp = await client.delete(f"/auth/tokens/{listed[0]['id']}", headers=alice.headers)
    assert resp.status == 204
    await new_token(client, alice)  # room again


def test_the_default_cap_is_100():
    assert tokens.MAX_TOKENS == 100


def test_redaction_hides_api_tokens_whole_or_cut():
    token = "chatapi_" + "ab12" * 16
    assert redact(f"GET /x?auth={token} HTTP/1.1") == "GET /x?auth=REDACTED HTTP/1.1"
    assert redact(f"Bearer {token[:30]}") == "Bearer REDACTED"
    assert redact("module chatapi_db started") == "module chatapi_db started"


async def test_no_request_however_malformed_puts_an_api_token_in_the_log(tmp_path, database):
    async with (
        chatapi_process(tmp_path, database=database) as (url, stderr_path),
        aiohttp.ClientSession() as http,
    ):
        user = await register_over_http(http, url, "bots")
        created = await api(http, "POST", url + "/auth/tokens", token=user["token"],
                            body={"name": "leaky"}, status=201)
        token = created["token"]
        await api(http, "GET", url + "/users/me", token=token)
        for request in MALFORMED.values():
            answer = await raw_request(url, request.format(t=token))
            assert token.encode() not in answer  # nor echoed back
        for request in WELL_FORMED.values():
            answer = await raw_request(url, request.format(t=token, e=token))
            assert answer.startswith(b"HTTP/1.1 4"), answer[:200]
        await asyncio.sleep(0.5)  # the last access lines are written
    log = stderr_path.read_text()
    assert log.count("REDACTED") >= len(WELL_FORMED), log
    assert "chatapi_" + token[8:24] not in log and token[8:] not in log, log


@pytest.mark.postgres_only
async def test_revoking_on_one_process_closes_the_sockets_on_another_within_a_second(
    cluster,  # noqa: F811 (the fixture imported above)
):
    first, second = await cluster(2)
    async with session() as http:
        alice = await register_over_http(http, first.url, "alice")
        created = await api(http, "POST", first.url + "/auth/tokens", token=alice["token"],
                            body={"name": "bot"}, status=201)
        sockets = [await http.ws_connect(second.ws_url, params={"token": created["token"]})
                   for _ in range(2)]
        kept = await http.ws_connect(second.ws_url, params={"token": alice["token"]})
        started = time.monotonic()
        await api(http, "DELETE", f"{first.url}/auth/tokens/{created['id']}",
                  token=alice["token"], status=204)
        codes = [await closed_with(ws, timeout=1.0) for ws in sockets]
        assert codes == [4001, 4001] and time.monotonic() - started < 1.0
        await api(http, "GET", second.url + "/users/me", token=created["token"], status=401)
        await no_frame(kept, wait=0.3)
        assert not kept.closed
        await kept.close()


@pytest.mark.postgres_only
async def test_logout_on_one_process_keeps_api_token_sockets_on_another(
    cluster,  # noqa: F811
):
    first, second = await cluster(2)
    async with session() as http:
        alice = await register_over_http(http, first.url, "alice")
        created = await api(http, "POST", first.url + "/auth/tokens", token=alice["token"],
                            body={"name": "bot"}, status=201)
        bot_ws = await http.ws_connect(second.ws_url, params={"token": created["token"]})
        session_ws = await http.ws_connect(second.ws_url, params={"token": alice["token"]})
        await api(http, "POST", first.url + "/auth/logout", token=alice["token"], status=204)
        assert await closed_with(session_ws) == 4001
        await asyncio.sleep(1.5)  # a revocation check of the other process has run
        assert not bot_ws.closed
        await api(http, "GET", second.url + "/users/me", token=created["token"])
        await bot_ws.close()


def test_the_readme_bot_recipe_posts_with_an_api_token_then_revokes_it(tmp_path, backend):
    import json
    import subprocess
    import sys
    import urllib.request
    from pathlib import Path

    from conftest import database_for, readme_block

    from chatapi.testing import ChatServer

    def call(url: str, body=None, token: str | None = None):
        request = urllib.request.Request(url, data=json.dumps(body).encode() if body else None)
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    (tmp_path / ".venv").symlink_to(Path(sys.executable).parent.parent)
    with database_for(backend, tmp_path) as database, ChatServer(
        db_path=database, bcrypt_rounds=4
    ) as server:
        alice = call(server.url + "/auth/reg", {"email": "alice@example.com", "username": "alice",
                                                "password": "correct horse"})
        call(server.url + "/chats/create", {"name": "general"}, alice["token"])
        block = readme_block("API tokens for scripts and bots", "sh")
        assert block.count("localhost:8080") >= 5
        done = subprocess.run(
            ["bash", "-ec", block.replace("localhost:8080", server.url.split("//", 1)[1])],
            cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
        )
        assert done.returncode == 0, done.stderr
        lines = done.stdout.strip().splitlines()
        assert "'text': 'deploy finished'" in lines[0] and "'username': 'alice'" in lines[0]
        listed = json.loads(lines[1])
        assert [(t["id"], t["name"]) for t in listed] == [(1, "deploy bot")]
        assert "token" not in listed[0] and listed[0]["last_used_at"] is not None
        assert call(server.url + "/auth/tokens", token=alice["token"]) == []
        assert TOKEN.search(done.stdout) is None  # the token itself was never printed
