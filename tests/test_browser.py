"""The web client at `/`, driven in Debian's Chromium by Playwright (sync API).

Skipped, with the reason, when Playwright or /usr/bin/chromium is missing
(`pip install playwright` and `apt-get install chromium`; never `playwright install`).
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import connect as ws_connect

from chatapi.testing import ChatServer

CHROMIUM = "/usr/bin/chromium"
DOCS = Path(__file__).resolve().parent.parent / "docs"
TIMEOUT = 20_000  # ms: generous, for slow machines

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
if not Path(CHROMIUM).exists():
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)", allow_module_level=True)

expect = sync_api.expect
expect.set_options(timeout=TIMEOUT)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield browser
        browser.close()


class Servers:
    """The server of a test; restart() replaces it by a new one on the same port and file."""

    def __init__(self, db_path: str, **settings: Any) -> None:
        self.db_path = db_path
        self.settings = settings
        self.current = ChatServer(db_path=db_path, bcrypt_rounds=4, **settings).start()

    @property
    def url(self) -> str:
        return self.current.url

    def stop(self) -> int:
        port = self.current.port
        assert port is not None
        self.current.stop()
        return port

    def start(self, port: int) -> None:
        self.current = ChatServer(
            db_path=self.db_path, bcrypt_rounds=4, port=port, **self.settings
        ).start()


@pytest.fixture
def servers(tmp_path) -> Iterator[Servers]:
    servers = Servers(str(tmp_path / "web.db"))
    yield servers
    servers.current.stop()


def new_page(browser, width: int = 1100, height: int = 700):
    context = browser.new_context(viewport={"width": width, "height": height})
    context.set_default_timeout(TIMEOUT)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.js_errors = errors  # checked by the tests: the page's script never throws
    return page


def register(page, url: str, name: str) -> None:
    page.goto(url + "/")
    form = page.locator("#reg-form")
    form.get_by_label("Email").fill(f"{name}@example.com")
    form.get_by_label("Username").fill(name)
    form.get_by_label("Password").fill("password-" + name)
    form.get_by_role("button", name="Register").click()
    expect(page.locator("#me-name")).to_have_text(name)
    expect(page.locator("#connection")).to_have_text("connected")


def messages(page):
    return page.locator("#messages li.message")


def message_text(page, text: str):
    return page.locator("#messages li.message .text").filter(has_text=re.compile("^" + re.escape(text) + "$"))


def say(page, text: str) -> None:
    box = page.get_by_label("Message")
    box.fill(text)
    box.press("Enter")
    expect(message_text(page, text)).to_have_count(1)


def open_chat(page, name: str) -> None:
    """Open a chat from the list (on a phone, going back to the list first if needed)."""
    back = page.get_by_role("button", name="Back to the chat list")
    if back.is_visible():
        back.click()
    page.locator("#chat-list").get_by_role("button", name=name, exact=True).click()
    expect(page.get_by_role("heading", name=name, exact=True)).to_be_visible()
    expect(page.get_by_label("Message")).to_be_enabled()


def api(url: str, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, headers=headers, method=method)
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.loads(resp.read() or b"null")


def register_api(url: str, name: str) -> dict[str, Any]:
    body = {"email": f"{name}@example.com", "username": name, "password": "password-" + name}
    return api(url, "POST", "/auth/reg", body)


def post_over_websocket(ws_url: str, token: str, chat_id: int, texts: list[str]) -> None:
    """Send messages as a non-browser client and wait until each is stored (echoed)."""
    with ws_connect(f"{ws_url}?token={token}", open_timeout=10) as ws:
        for i, text in enumerate(texts):
            ws.send(json.dumps({"text": text, "chat_id": chat_id, "nonce": f"n{i}-{text[:20]}"}))
            while True:
                frame = json.loads(ws.recv(timeout=10))
                if frame["type"] == "error":
                    raise AssertionError(frame)
                if frame["type"] == "message" and frame["text"] == text:
                    break


def test_the_page_and_its_assets_are_served_without_a_token(servers):
    with urllib.request.urlopen(servers.url + "/", timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("text/html")
        assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
        page = resp.read().decode()
    for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', page):
        with urllib.request.urlopen(servers.url + asset, timeout=10) as resp:
            assert resp.status == 200
    for missing in ("/static/nope.js", "/static/.hidden", "/static/..%2Fapp.py"):
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(servers.url + missing, timeout=10)
        caught.value.close()
        assert caught.value.code == 404


def test_two_people_chat_live_and_a_reload_keeps_session_and_history(browser, servers):
    alice, bob = new_page(browser), new_page(browser)
    register(alice, servers.url, "alice")
    register(bob, servers.url, "bob")

    # Alice creates a chat; Bob finds it in the list; both open it.
    alice.get_by_label("New chat").fill("general")
    alice.get_by_role("button", name="Create").click()
    expect(alice.get_by_role("heading", name="general", exact=True)).to_be_visible()
    expect(alice.get_by_label("Message")).to_be_enabled()
    open_chat(bob, "general")

    # Typed in one page, shown in the other (and once in each).
    say(alice, "hello bob")
    expect(message_text(bob, "hello bob")).to_have_count(1)
    say(bob, "hi alice, good to see you")
    expect(message_text(alice, "hi alice, good to see you")).to_have_count(1)
    expect(messages(alice)).to_have_count(2)
    expect(messages(bob)).to_have_count(2)

    # Who is online: each sees the other (presence frames or the user list).
    expect(alice.locator("#user-list li.online", has_text="bob")).to_have_count(1)
    expect(bob.locator("#user-list li.online", has_text="alice")).to_have_count(1)

    # A chat without a name is refused in place, in plain words.
    alice.get_by_label("New chat").fill("   ")
    alice.get_by_role("button", name="Create").click()
    expect(alice.locator("#new-chat-error")).to_have_text("Type a name for the new chat first.")

    # A reload keeps the session, the open chat and its history (each message once).
    bob.reload()
    expect(bob.locator("#me-name")).to_have_text("bob")
    expect(bob.get_by_role("heading", name="general", exact=True)).to_be_visible()
    expect(messages(bob)).to_have_count(2)
    expect(message_text(bob, "hello bob")).to_have_count(1)
    expect(bob.locator("#connection")).to_have_text("connected")
    say(alice, "after your reload")
    expect(message_text(bob, "after your reload")).to_have_count(1)

    # Logging out revokes the token: a reload shows the forms again.
    bob.get_by_role("button", name="Log out").click()
    expect(bob.locator("#login-form")).to_be_visible()
    bob.reload()
    expect(bob.locator("#login-form")).to_be_visible()
    assert bob.evaluate("localStorage.getItem('chatapi.token')") is None
    # Wrong password: the server's answer, in place.
    bob.locator("#login-form").get_by_label("Email").fill("bob@example.com")
    bob.locator("#login-form").get_by_label("Password").fill("not-the-password")
    bob.locator("#login-form").get_by_role("button", name="Log in").click()
    expect(bob.locator("#login-error")).not_to_be_empty()
    bob.locator("#login-form").get_by_label("Password").fill("password-bob")
    bob.locator("#login-form").get_by_role("button", name="Log in").click()
    expect(bob.locator("#me-name")).to_have_text("bob")

    assert alice.js_errors == [] and bob.js_errors == []


def test_after_a_server_restart_the_page_catches_up_exactly_once(browser, servers):
    bob = register_api(servers.url, "bob")
    alice = new_page(browser)
    # The test holds the page's reconnection back while Bob posts, so that the message can
    # only arrive through the catch-up (`join` with `since`), never live.
    held_back = False

    def route_socket(ws) -> None:
        if held_back:
            ws.close(code=4000, reason="held back by the test")
        else:
            ws.connect_to_server()

    alice.route_web_socket(re.compile(r"/chats/ws"), route_socket)
    register(alice, servers.url, "alice")
    alice.get_by_label("New chat").fill("ops")
    alice.get_by_role("button", name="Create").click()
    expect(alice.get_by_label("Message")).to_be_enabled()
    say(alice, "before the restart")
    chat_id = api(servers.url, "GET", "/chats/", token=bob["token"])[0]["id"]

    held_back = True
    port = servers.stop()
    expect(alice.locator("#connection")).to_have_text("reconnecting…")
    servers.start(port)
    post_over_websocket(servers.current.ws_url, bob["token"], chat_id, ["sent meanwhile"])
    expect(alice.locator("#connection")).to_have_text("reconnecting…")
    expect(message_text(alice, "sent meanwhile")).to_have_count(0)

    held_back = False
    expect(alice.locator("#connection")).to_have_text("connected")
    expect(message_text(alice, "sent meanwhile")).to_have_count(1)
    say(alice, "after the restart")
    post_over_websocket(servers.current.ws_url, bob["token"], chat_id, ["live again"])
    expect(message_text(alice, "live again")).to_have_count(1)
    expect(messages(alice)).to_have_count(4)
    for text in ("before the restart", "sent meanwhile", "after the restart", "live again"):
        expect(message_text(alice, text)).to_have_count(1)
    assert alice.js_errors == []


def test_older_messages_load_on_scrolling_up_on_a_phone(browser, tmp_path):
    with ChatServer(
        db_path=str(tmp_path / "web.db"), bcrypt_rounds=4, frames_per_second=10_000.0, frame_burst=10_000
    ) as server:
        bob = register_api(server.url, "bob")
        chat = api(server.url, "POST", "/chats/create", {"name": "busy"}, token=bob["token"])
        post_over_websocket(server.ws_url, bob["token"], chat["id"], [f"message {i}" for i in range(120)])

        phone = new_page(browser, width=375, height=740)
        register(phone, server.url, "carol")
        open_chat(phone, "busy")
        expect(messages(phone)).to_have_count(50)
        expect(message_text(phone, "message 119")).to_be_visible()
        # Nothing wider than the phone's screen.
        assert phone.evaluate("document.documentElement.scrollWidth") <= 375
        phone.locator("#history").evaluate("box => box.scrollTop = 0")
        expect(messages(phone)).to_have_count(100)
        # Keyboard users have the button.
        phone.get_by_role("button", name="Load older messages").focus()
        phone.keyboard.press("Enter")
        expect(messages(phone)).to_have_count(120)
        expect(phone.get_by_role("button", name="Load older messages")).to_be_hidden()
        ids = phone.locator("#messages li.message").evaluate_all("els => els.map(e => +e.dataset.id)")
        assert ids == sorted(set(ids)) and len(ids) == 120
        assert phone.js_errors == []
