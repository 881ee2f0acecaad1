"""Registration, login, tokens and the user routes."""

from __future__ import annotations

import sqlite3

import jwt
import pytest
from conftest import assert_error, run_sql

from chatapi import Config, create_app


async def test_register_answers_201_with_token_username_id(client):
    body = {"email": "Alice@Example.com", "username": "  alice ", "password": "password1"}
    resp = await client.post("/auth/reg", json=body)
    assert resp.status == 201
    data = await resp.json()
    assert set(data) == {"token", "username", "id"}
    assert data["username"] == "alice"
    assert isinstance(data["id"], int) and data["id"] > 0
    me = await client.get("/users/me", headers={"Authorization": f"Bearer {data['token']}"})
    assert (await me.json())["email"] == "alice@example.com"


@pytest.mark.parametrize(
    "body, field",
    [
        ({"username": "alice", "password": "password1"}, "email"),
        ({"email": "not-an-email", "username": "alice", "password": "password1"}, "email"),
        ({"email": 5, "username": "alice", "password": "password1"}, "email"),
        ({"email": "a" * 250 + "@b.co", "username": "alice", "password": "password1"}, "email"),
        ({"email": "a@b.co", "password": "password1"}, "username"),
        ({"email": "a@b.co", "username": "al", "password": "password1"}, "username"),
        ({"email": "a@b.co", "username": "  al  ", "password": "password1"}, "username"),
        ({"email": "a@b.co", "username": "x" * 51, "password": "password1"}, "username"),
        ({"email": "a@b.co", "username": "ali\x00ce", "password": "password1"}, "username"),
        ({"email": "a@b.co", "username": ["alice"], "password": "password1"}, "username"),
        ({"email": "a@b.co", "username": "alice"}, "password"),
        ({"email": "a@b.co", "username": "alice", "password": "short"}, "password"),
        ({"email": "a@b.co", "username": "alice", "password": "p" * 129}, "password"),
        ({"email": "a@b.co", "username": "alice", "password": 12345678}, "password"),
    ],
)
async def test_register_rejects_invalid_fields(client, config, body, field):
    resp = await client.post("/auth/reg", json=body)
    error = await assert_error(resp, 400)
    assert field in error["details"]
    assert await run_sql(config.db_path, "SELECT count(*) FROM users") == [(0,)]


@pytest.mark.parametrize(
    "raw, content_type",
    [(b"not json", "application/json"), (b"[1, 2]", "application/json"), (b"", "text/plain"),
     (b"\xff\xfe", "application/json"), (b'"a string"', "application/json")],
)
async def test_register_rejects_bodies_that_are_not_json_objects(client, raw, content_type):
    resp = await client.post("/auth/reg", data=raw, headers={"Content-Type": content_type})
    await assert_error(resp, 400)


async def test_duplicate_email_is_409_case_insensitively(client, register):
    await register(client, "alice")
    body = {"email": "ALICE@example.com", "username": "other", "password": "password1"}
    resp = await client.post("/auth/reg", json=body)
    error = await assert_error(resp, 409)
    assert error["details"] == {"email": "already taken"}


async def test_duplicate_username_is_409_case_insensitively(client, register):
    await register(client, "alice")
    body = {"email": "new@example.com", "username": "ALICE", "password": "password1"}
    resp = await client.post("/auth/reg", json=body)
    error = await assert_error(resp, 409)
    assert error["details"] == {"username": "already taken"}


async def test_login_returns_a_working_token(client, register):
    user = await register(client, "alice")
    resp = await client.post(
        "/auth/login", json={"email": "ALICE@example.com", "password": user["password"]}
    )
    assert resp.status == 200
    data = await resp.json()
    assert data["username"] == "alice" and data["id"] == user["id"]
    me = await client.get("/users/me", headers={"Authorization": f"Bearer {data['token']}"})
    assert me.status == 200


async def test_unknown_email_and_wrong_password_look_the_same(client, register):
    user = await register(client, "alice")
    wrong = await client.post("/auth/login", json={"email": user["email"], "password": "nope-nope"})
    unknown = await client.post(
        "/auth/login", json={"email": "bob@example.com", "password": "nope-nope"}
    )
    assert await assert_error(wrong, 401) == await assert_error(unknown, 401)


async def test_login_validates_its_body(client):
    await assert_error(await client.post("/auth/login", json={"email": "a@b.co"}), 400)
    await assert_error(await client.post("/auth/login", data=b"{"), 400)


async def test_long_passwords_are_fully_significant(client):
    # Same first 72 bytes, different tails: bcrypt alone would accept both.
    password = "x" * 72 + "tail-one"
    body = {"email": "long@example.com", "username": "longpw", "password": password}
    assert (await client.post("/auth/reg", json=body)).status == 201
    ok = await client.post("/auth/login", json={"email": body["email"], "password": password})
    assert ok.status == 200
    other = "x" * 72 + "tail-two"
    bad = await client.post("/auth/login", json={"email": body["email"], "password": other})
    await assert_error(bad, 401)


async def test_multibyte_password_over_72_bytes_works(client):
    password = "пароль" * 20  # 120 characters, 240 bytes
    body = {"email": "ru@example.com", "username": "ru-user", "password": password}
    assert (await client.post("/auth/reg", json=body)).status == 201
    resp = await client.post("/auth/login", json={"email": body["email"], "password": password})
    assert resp.status == 200


async def test_default_bcrypt_cost_is_12(aiohttp_client, tmp_path):
    config = Config(db_path=str(tmp_path / "cost.db"))
    assert config.bcrypt_rounds == 12
    client = await aiohttp_client(create_app(config))
    body = {"email": "c@example.com", "username": "cost", "password": "password1"}
    assert (await client.post("/auth/reg", json=body)).status == 201
    with sqlite3.connect(config.db_path) as conn:
        (stored,) = conn.execute("SELECT password_hash FROM users").fetchone()
    assert stored.startswith("$2b$12$")
    assert "password1" not in stored


async def test_users_me(client, register):
    user = await register(client, "alice")
    resp = await client.get("/users/me", headers=user.headers)
    assert resp.status == 200
    assert await resp.json() == {
        "id": user["id"],
        "email": "alice@example.com",
        "username": "alice",
        "is_online": False,
        "is_admin": False,
    }


@pytest.mark.parametrize("path", ["/users/", "/users"])
async def test_users_lists_everybody_by_id_without_hashes(client, register, path):
    alice = await register(client, "alice")
    bob = await register(client, "bob")
    resp = await client.get(path, headers=bob.headers)
    assert resp.status == 200
    users = await resp.json()
    assert [u["id"] for u in users] == [alice["id"], bob["id"]]
    assert all(set(u) == {"id", "email", "username", "is_online"} for u in users)


async def test_password_hash_is_sent_only_when_configured(aiohttp_client, config, register):
    client = await aiohttp_client(create_app(config.replace(expose_password_hash=True)))
    user = await register(client, "alice")
    me = await (await client.get("/users/me", headers=user.headers)).json()
    assert me["password"].startswith("$2b$")
    listed = await (await client.get("/users/", headers=user.headers)).json()
    assert listed[0]["password"] == me["password"]


async def test_token_of_a_deleted_user_is_401(client, config, register):
    user = await register(client, "alice")
    await run_sql(config.db_path, "DELETE FROM users WHERE id = ?", user["id"])
    await assert_error(await client.get("/users/me", headers=user.headers), 401)


async def test_tokens_survive_a_restart_with_the_generated_secret(aiohttp_client, config, register):
    first = await aiohttp_client(create_app(config))
    user = await register(first, "alice")
    await first.close()
    second = await aiohttp_client(create_app(config))
    assert (await second.get("/users/me", headers=user.headers)).status == 200


async def test_configured_secret_is_used(aiohttp_client, config, register):
    secret = "s" * 40
    client = await aiohttp_client(create_app(config.replace(secret=secret)))
    user = await register(client, "alice")
    assert jwt.decode(user["token"], secret, algorithms=["HS256"])["sub"] == str(user["id"])
