"""docs/API.md, the contract for client authors, stays true to the server."""

from __future__ import annotations

import re
from pathlib import Path

from chatapi import Config, create_app

ROOT = Path(__file__).resolve().parent.parent
CONTRACT = (ROOT / "docs" / "API.md").read_text()
METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
# A JSON object literal with a "type" member, as the server writes its frames.
FRAME_TYPE = re.compile(r'\{"type": "([a-z_]+)"')


def documented(method: str, path: str) -> bool:
    """Whether the contract names `METHOD /path` in code (a query string may follow)."""
    return re.search(rf"`{method} {re.escape(path)}[`?]", CONTRACT) is not None


def test_every_route_of_the_router_is_documented():
    app = create_app(Config(metrics=True))
    routes = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD"  # aiohttp adds one for every GET
    }
    assert ("GET", "/chats/ws") in routes and ("GET", "/static/{name}") in routes
    missing = sorted(route for route in routes if not documented(*route))
    assert not missing, f"routes missing from docs/API.md: {missing}"


async def test_every_operation_of_the_served_openapi_document_is_documented(client):
    resp = await client.get("/openapi.json")
    assert resp.status == 200
    document = await resp.json()
    operations = {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in METHODS
    }
    assert len(operations) > 10
    missing = sorted(op for op in operations if not documented(*op))
    assert not missing, f"operations missing from docs/API.md: {missing}"


def test_every_documented_route_exists():
    app = create_app(Config(metrics=True))
    routes = {(route.method, route.resource.canonical) for route in app.router.routes()}
    named = set(re.findall(r"`(GET|POST|PUT|DELETE|PATCH) (/[^`?\s]*)", CONTRACT))
    assert len(named) > 10
    assert not named - routes, f"docs/API.md names routes the server lacks: {named - routes}"


def frame_types_in_code() -> set[str]:
    """Every frame type written as a {"type": ...} literal in the package (not the schema)."""
    found: set[str] = set()
    for module in (ROOT / "chatapi").glob("*.py"):
        # JSON Schema's "type": "object" (openapi*.py, shapes.py) is no frame.
        if not module.name.startswith("openapi") and module.name != "shapes.py":
            found |= set(FRAME_TYPE.findall(module.read_text()))
    # Nor is a schema written beside a shape's field (Json({"type": "string", ...})).
    return found - {"string", "integer", "number", "boolean", "object", "array"}


def test_every_frame_type_in_the_code_is_documented():
    types = frame_types_in_code()
    # The frames the server is known to send, so that the search cannot quietly find nothing.
    assert {"message", "joined", "left", "presence", "error"} <= types
    missing = sorted(t for t in types if f'{{"type": "{t}"' not in CONTRACT)
    assert not missing, f"frame types missing from docs/API.md: {missing}"


def test_base_sections_are_still_marked():
    for heading in (
        "### `POST /auth/reg` (base)",
        "### `POST /auth/login` (base)",
        "### `GET /users/me` (base)",
        "### `GET /users/` (base)",
        "### `POST /chats/create` (base)",
        "### `GET /chats/messages?id=N` (base)",
        "## WebSocket `GET /chats/ws?token=...` (base)",
    ):
        assert heading in CONTRACT


def test_readme_links_the_contract_in_the_repository():
    readme = (ROOT / "README.md").read_text()
    assert "](docs/API.md)" in readme
    assert "../shared" not in readme
    assert (ROOT / "docs" / "API.md").is_file()


def test_the_license_is_the_one_setup_cfg_declares():
    assert "license = MIT" in (ROOT / "setup.cfg").read_text()
    license_text = (ROOT / "LICENSE").read_text()
    assert license_text.startswith("MIT License\n")
    assert "ChatAPI contributors" in license_text
    assert 'THE SOFTWARE IS PROVIDED "AS IS"' in license_text


# `tests/file.py::name`, or `::name` for another test of the file named last.
TEST_REFERENCE = re.compile(r"`(tests/[\w/]+\.py)?(?:::(\w+))?`")


def named_tests(text: str) -> list[tuple[str, str | None]]:
    """(file, test name or None) of every test reference in `text`, in order."""
    named, current = [], None
    for match in TEST_REFERENCE.finditer(text):
        path, name = match.groups()
        current = path or current
        if current is not None and (path or name):
            named.append((current, name))
    return named


def test_every_test_the_documents_name_exists():
    """SECURITY.md maps promises to tests, README and BENCHMARKS.md cite tests: a renamed or
    removed test must not leave a promise pointing at nothing."""
    missing = []
    for document in ("SECURITY.md", "README.md", "BENCHMARKS.md", "docs/API.md"):
        references = named_tests((ROOT / document).read_text())
        assert references or document != "SECURITY.md"
        for path, name in references:
            source = ROOT / path
            if not source.is_file():
                missing.append(f"{document}: {path}")
            elif name and not re.search(
                rf"^(async )?def {name}\(", source.read_text(), re.MULTILINE
            ):
                missing.append(f"{document}: {path}::{name}")
    assert not missing, missing
