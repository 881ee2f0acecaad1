"""GET /openapi.json: a valid OpenAPI document, true to the router and to real answers."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import connect, create_chat, next_frame
from openapi_schema_validator import OAS30Validator, oas30_format_checker
from openapi_spec_validator import validate

from chatapi import create_app

Document = dict[str, Any]
METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


async def fetch_document(client) -> Document:
    resp = await client.get("/openapi.json")
    assert resp.status == 200
    assert resp.content_type == "application/json"
    return await resp.json()


def operations(document: Document) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in METHODS
    }


def routes(app) -> set[tuple[str, str]]:
    # aiohttp adds a HEAD route for every GET by itself; the web page (/ and its
    # /static/ files) is not part of the API the document describes.
    return {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD"
        and route.resource.canonical != "/"
        and not route.resource.canonical.startswith("/static/")
    }


def follow(document: Document, ref: str) -> dict[str, Any]:
    node: Any = document
    for part in ref.removeprefix("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def documented_response(document: Document, method: str, path: str, status: int) -> dict:
    responses = document["paths"][path][method.lower()]["responses"]
    assert str(status) in responses, f"{method} {path} answered {status}, not documented"
    answer = responses[str(status)]
    return follow(document, answer["$ref"]) if "$ref" in answer else answer


def schema_validator(document: Document, schema: dict[str, Any]) -> OAS30Validator:
    # The components ride along so that "#/components/..." references resolve.
    return OAS30Validator(
        {**schema, "components": document["components"]}, format_checker=oas30_format_checker
    )


async def check(document: Document, resp, path: str) -> None:
    """The response is documented for its operation, with the documented body."""
    method = resp.method
    answer = documented_response(document, method, path, resp.status)
    for name, header in answer.get("headers", {}).items():
        assert not header.get("required") or name in resp.headers, f"{name} missing"
    content = answer.get("content")
    if content is None:
        assert await resp.read() == b"", f"{method} {path} {resp.status} has no body documented"
        return
    assert resp.content_type in content, f"{method} {path}: {resp.content_type} not documented"
    schema = content[resp.content_type]["schema"]
    body = await resp.json() if resp.content_type == "application/json" else await resp.text()
    schema_validator(document, schema).validate(body)


@pytest.fixture
async def document(client) -> Document:
    return await fetch_document(client)


async def test_the_document_is_valid_openapi(document):
    validate(document)
    assert document["openapi"].startswith("3.")


async def test_the_document_needs_no_token(client):
    resp = await client.get("/openapi.json")
    assert resp.status == 200


@pytest.mark.parametrize("metrics", [True, False])
async def test_the_document_lists_exactly_the_routes_of_the_app(
    aiohttp_client, config, metrics
):
    app = create_app(config.replace(metrics=metrics))
    document = await fetch_document(await aiohttp_client(app))
    validate(document)
    assert operations(document) == routes(app)
    assert (("GET", "/metrics") in operations(document)) is metrics


async def test_private_routes_require_the_bearer_token_and_public_ones_do_not(document):
    public = {
        ("POST", "/auth/reg"),
        ("POST", "/auth/login"),
        ("GET", "/health"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
    }
    for method, path in operations(document):
        operation = document["paths"][path][method.lower()]
        security = operation.get("security", document["security"])
        if (method, path) in public:
            assert security == [], (method, path)
        else:
            assert {"bearerAuth": []} in security, (method, path)
            assert "401" in operation["responses"], (method, path)


async def test_real_answers_match_the_documented_schemas(client, register, document):
    alice, bob = await register(client, "alice"), await register(client, "bob")
    chat = await create_chat(client, alice)
    ws = await connect(client, alice)
    await ws.send_json({"text": "plain", "chat_id": chat})
    await ws.send_json({"text": "with nonce", "chat_id": chat, "nonce": "n-1"})
    for _ in range(2):
        await next_frame(ws, "message")

    body = {"email": "carol@example.com", "username": "carol", "password": "password-carol"}
    await check(document, await client.post("/auth/reg", json=body), "/auth/reg")
    login = {"email": alice["email"], "password": alice["password"]}
    await check(document, await client.post("/auth/login", json=login), "/auth/login")
    auth = alice.headers
    await check(document, await client.get("/users/me", headers=auth), "/users/me")
    for path in ("/users/", "/users", "/chats/", "/chats"):
        await check(document, await client.get(path, headers=auth), path)
    resp = await client.post("/chats/create", json={"name": " second "}, headers=auth)
    await check(document, resp, "/chats/create")
    for params in ({"id": chat}, {"id": chat, "limit": 1}, {"id": chat, "after": 0}):
        resp = await client.get("/chats/messages", params=params, headers=auth)
        assert resp.status == 200
        await check(document, resp, "/chats/messages")
    await check(document, await client.get("/health"), "/health")
    await check(document, await client.get("/metrics"), "/metrics")
    await check(document, await client.get("/openapi.json"), "/openapi.json")
    await check(document, await client.post("/auth/logout", headers=bob.headers), "/auth/logout")


async def test_real_errors_match_the_documented_schemas(client, register, config, document):
    alice = await register(client, "alice")
    auth = alice.headers
    taken = {"email": alice["email"], "username": "other", "password": "password-x"}
    await check(document, await client.post("/auth/reg", json=taken), "/auth/reg")  # 409
    await check(document, await client.post("/auth/reg", data=b"[1]"), "/auth/reg")  # 400
    too_big = b"{" + b" " * config.max_body + b"}"
    await check(document, await client.post("/auth/reg", data=too_big), "/auth/reg")  # 413
    wrong = {"email": alice["email"], "password": "wrong password"}
    await check(document, await client.post("/auth/login", json=wrong), "/auth/login")  # 401
    await check(document, await client.get("/users/me"), "/users/me")  # 401
    await check(document, await client.post("/auth/logout"), "/auth/logout")  # 401
    resp = await client.post("/chats/create", json={}, headers=auth)
    await check(document, resp, "/chats/create")  # 400
    for params in ({}, {"id": "x"}, {"id": 1, "limit": 0}, {"id": 999}):
        resp = await client.get("/chats/messages", params=params, headers=auth)
        assert resp.status in (400, 404)
        await check(document, resp, "/chats/messages")
    await check(document, await client.get("/chats/ws", headers=auth), "/chats/ws")  # 400
    await check(document, await client.get("/chats/ws"), "/chats/ws")  # 401
    cross_site = {"Origin": "https://evil.example"}
    await check(document, await client.get("/chats/ws", headers=cross_site), "/chats/ws")  # 403


async def test_limits_answer_as_documented(aiohttp_client, config, register):
    limited = config.replace(login_failures_per_account=1, max_sockets_per_user=1)
    client = await aiohttp_client(create_app(limited))
    alice = await register(client, "alice")
    document = await fetch_document(client)
    wrong = {"email": alice["email"], "password": "wrong password"}
    await check(document, await client.post("/auth/login", json=wrong), "/auth/login")  # 401
    throttled = await client.post("/auth/login", json=wrong)
    assert throttled.status == 429
    await check(document, throttled, "/auth/login")
    assert int(throttled.headers["Retry-After"]) >= 1

    ws = await connect(client, alice)
    await ws.send_json({"type": "join", "chat_id": await create_chat(client, alice)})
    await next_frame(ws, "joined")
    one_too_many = await client.get("/chats/ws", params={"token": alice["token"]})
    assert one_too_many.status == 429
    await check(document, one_too_many, "/chats/ws")


async def test_the_password_hash_is_documented_only_when_exposed(aiohttp_client, config, register):
    client = await aiohttp_client(create_app(config.replace(expose_password_hash=True)))
    alice = await register(client, "alice")
    document = await fetch_document(client)
    assert "password" in document["components"]["schemas"]["User"]["required"]
    await check(document, await client.get("/users/me", headers=alice.headers), "/users/me")


# The request schemas accept exactly what the server accepts: a generated
# request that fits the schema must not get a 400, one that does not must.
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("email", "a@b.co"),
        ("email", "  A@B.Co\n"),
        ("email", "a@b"),
        ("email", "a b@c.de"),
        ("email", "a@@b.co"),
        ("email", "x" * 240 + "@example.com"),
        ("email", "x" * 250 + "@example.com"),
        ("email", ""),
        ("username", "bob"),
        ("username", "  bob  "),
        ("username", "b o"),
        ("username", " bo "),
        ("username", "bo\tb"),
        ("username", "bo\u200bb"),
        ("username", "\u00e9\u00e9\u00e9"),
        ("username", "b" * 50),
        ("username", "b" * 51),
        ("username", "\n" + "b" * 50 + "\t"),
        ("password", "1234567"),
        ("password", "12345678"),
        ("password", "p" * 128),
        ("password", "p" * 129),
    ],
)
async def test_registration_schema_is_what_the_server_accepts(client, document, field, value):
    body = {"email": "someone@example.com", "username": "someone", "password": "password-1"}
    body[field] = value
    schema = document["components"]["schemas"]["Registration"]
    fits = schema_validator(document, schema).is_valid(body)
    resp = await client.post("/auth/reg", json=body)
    assert resp.status == (201 if fits else 400), await resp.text()


@pytest.mark.parametrize(
    "name",
    ["general", "  general  ", "", "   ", "a", "\tx\n", "n" * 255, " " + "n" * 255, "n" * 256],
)
async def test_new_chat_schema_is_what_the_server_accepts(client, register, document, name):
    alice = await register(client, "alice")
    schema = document["components"]["schemas"]["NewChat"]
    fits = schema_validator(document, schema).is_valid({"name": name})
    resp = await client.post("/chats/create", json={"name": name}, headers=alice.headers)
    assert resp.status == (201 if fits else 400), await resp.text()


@pytest.mark.parametrize(
    ("email", "password"),
    [
        (" nobody@example.com ", "x"),
        ("nobody", "x"),
        ("", "x"),
        ("  ", "x"),
        ("nobody@example.com", ""),
        ("nobody@example.com", "p" * 129),
        ("n" * 254, "x"),
        ("n" * 255, "x"),
    ],
)
async def test_login_schema_is_what_the_server_accepts(client, document, email, password):
    schema = document["components"]["schemas"]["Credentials"]
    fits = schema_validator(document, schema).is_valid({"email": email, "password": password})
    resp = await client.post("/auth/login", json={"email": email, "password": password})
    # Unknown account: a request that fits is refused as wrong credentials, not as invalid.
    assert resp.status == (401 if fits else 400), await resp.text()


async def test_teams_answers_match_the_documented_schemas(client, register, document):
    from chatapi import db
    from chatapi.keys import DB

    alice, bob, eve = [await register(client, name) for name in ("alice", "bob", "eve")]
    await db.set_admin(client.app[DB], alice["email"], True)
    auth = alice.headers
    resp = await client.post("/chats/create", json={"name": "team", "kind": "private"}, headers=auth)
    await check(document, resp, "/chats/create")
    chat = (await resp.json())["id"]
    direct = {"kind": "direct", "user_id": bob["id"]}
    for _ in range(2):  # 201, then 200
        await check(document, await client.post("/chats/create", json=direct, headers=auth), "/chats/create")
    await check(document, await client.post(  # 404
        "/chats/create", json={"kind": "direct", "user_id": 10**6}, headers=auth), "/chats/create")
    await check(document, await client.get("/users/me", headers=auth), "/users/me")
    members = f"/chats/{chat}/members"
    template = "/chats/{chat_id}/members"
    for body in ({"user_id": bob["id"]}, {"user_id": bob["id"]}, {"user_id": "x"}):  # 201, 409, 400
        await check(document, await client.post(members, json=body, headers=auth), template)
    await check(document, await client.post(members, json={"user_id": eve["id"]}, headers=bob.headers),
                template)  # 403
    await check(document, await client.get(members, headers=auth), template)
    await check(document, await client.get(members, headers=eve.headers), template)  # 404
    one = "/chats/{chat_id}/members/{user_id}"
    await check(document, await client.patch(f"{members}/{bob['id']}", json={"role": "owner"},
                                              headers=auth), one)
    await check(document, await client.patch(f"{members}/{bob['id']}", json={"role": "x"},
                                              headers=auth), one)  # 400
    await check(document, await client.delete(f"{members}/{bob['id']}", headers=bob.headers), one)
    await check(document, await client.delete(f"{members}/{alice['id']}", headers=auth), one)  # 409
    await check(document, await client.post(f"/chats/{chat}/read", json={"message_id": 0},
                                            headers=auth), "/chats/{chat_id}/read")
    lobby = await create_chat(client, bob, "lobby")
    await check(document, await client.post(f"/chats/{lobby}/read", json={"message_id": 0},
                                            headers=eve.headers), "/chats/{chat_id}/read")  # 409
    await check(document, await client.post(f"/chats/{lobby}/join", headers=eve.headers),
                "/chats/{chat_id}/join")
    await check(document, await client.get("/chats/", headers=auth), "/chats/")
    await check(document, await client.post("/invites", json={"uses": 3}, headers=auth), "/invites")
    await check(document, await client.post("/invites", json={}, headers=eve.headers), "/invites")
    await check(document, await client.post("/invites", json={"uses": 0}, headers=auth), "/invites")


async def test_hidden_emails_and_refused_registrations_are_documented(aiohttp_client, config, register):
    client = await aiohttp_client(create_app(config.replace(show_emails=False, registration="closed")))
    document = await fetch_document(client)
    body = {"email": "eve@example.com", "username": "eve", "password": "password-eve"}
    await check(document, await client.post("/auth/reg", json=body), "/auth/reg")  # 403
    from chatapi import db
    from chatapi.keys import DB

    for name in ("alice", "bob"):
        await db.create_user(client.app[DB], f"{name}@example.com", name, "x")
    open_client = await aiohttp_client(create_app(config.replace(show_emails=False)))
    carol = await register(open_client, "carol")
    await check(document, await open_client.get("/users/", headers=carol.headers), "/users/")


async def test_api_token_answers_match_the_documented_schemas(client, register, document):
    alice = await register(client, "alice")
    resp = await client.post("/auth/tokens", json={"name": " bot "}, headers=alice.headers)
    await check(document, resp, "/auth/tokens")
    created = await resp.json()
    bot = {"Authorization": f"Bearer {created['token']}"}
    await check(document, await client.get("/users/me", headers=bot), "/users/me")
    for headers in (alice.headers, bot):  # 200, 403
        await check(document, await client.get("/auth/tokens", headers=headers), "/auth/tokens")
    for body in ({"name": ""}, {"name": "x"}):  # 400, 403
        resp = await client.post("/auth/tokens", json=body, headers=alice.headers if body["name"] == "" else bot)
        await check(document, resp, "/auth/tokens")
    one = "/auth/tokens/{token_id}"
    for path, headers in ((f"/auth/tokens/{created['id']}", bot),  # 403
                          (f"/auth/tokens/{created['id']}", alice.headers),  # 204
                          (f"/auth/tokens/{created['id']}", alice.headers)):  # 404
        await check(document, await client.delete(path, headers=headers), one)
    await check(document, await client.get("/users/me", headers=bot), "/users/me")  # 401
