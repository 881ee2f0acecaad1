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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import in_thread, run_sql
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
def servers(database) -> Iterator[Servers]:
    servers = Servers(database)
    yield servers
    servers.current.stop()


def new_page(browser, width: int = 1100, height: int = 700, touch: bool = False):
    # UTC, like the seeded timestamps: the day separators fall where the test expects them.
    # `touch`: a phone's touch screen (no hover; taps).
    context = browser.new_context(
        viewport={"width": width, "height": height}, timezone_id="UTC",
        has_touch=touch, is_mobile=touch,
    )
    context.set_default_timeout(TIMEOUT)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.js_errors = errors  # checked by the tests: the page's script never throws
    page.touch = touch
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
    post_over_websocket(servers.current.ws_url, bob["token"], chat_id, ["see you at 9"])
    expect(message_text(alice, "see you at 9")).to_have_count(1)
    first, typo = (m["id"] for m in api(servers.url, "GET", f"/chats/messages?id={chat_id}", token=bob["token"]))

    held_back = True
    port = servers.stop()
    expect(alice.locator("#connection")).to_have_text("reconnecting…")
    servers.start(port)
    post_over_websocket(servers.current.ws_url, bob["token"], chat_id, ["sent meanwhile"])
    # Changed while the page is away: it learns each change when it catches up (by seq).
    one = f"/chats/{chat_id}/messages/{typo}"
    api(servers.url, "PATCH", one, {"text": "see you at 10"}, token=bob["token"])
    api(servers.url, "PATCH", one, {"text": "see you at 10:30"}, token=bob["token"])
    api(servers.url, "PUT", f"/chats/{chat_id}/messages/{first}/reactions/%F0%9F%91%8D", token=bob["token"])
    expect(alice.locator("#connection")).to_have_text("reconnecting…")
    expect(message_text(alice, "sent meanwhile")).to_have_count(0)
    # Written while offline: shown as waiting, with a note that goes once it is delivered.
    alice.get_by_label("Message").fill("typed while offline")
    alice.get_by_label("Message").press("Enter")
    waiting = alice.locator("#pending li.pending")
    expect(waiting).to_have_count(1)
    expect(waiting.locator(".text")).to_have_text("typed while offline")
    expect(waiting.locator(".state")).to_have_text("waiting for the connection…")
    expect(alice.locator("#chat-error")).to_have_text(re.compile("^Not connected: your message will be sent"))
    expect(alice.get_by_label("Message")).to_have_value("")

    held_back = False
    expect(alice.locator("#connection")).to_have_text("connected")
    expect(message_text(alice, "sent meanwhile")).to_have_count(1)
    expect(message_text(alice, "typed while offline")).to_have_count(1)
    expect(message_text(alice, "see you at 10:30")).to_have_count(1)
    expect(message_text(alice, "see you at 9")).to_have_count(0)
    expect(alice.locator(f'#messages li[data-id="{typo}"] .edited')).to_have_text("(edited)")
    expect(alice.locator(f'#messages li[data-id="{first}"] .reaction')).to_contain_text("👍 1")
    expect(alice.locator(f'#messages li[data-id="{first}"] .reaction')).to_have_attribute("title", "bob")
    expect(alice.locator("#pending li")).to_have_count(0)
    expect(alice.locator("#chat-error")).to_be_empty()
    expect(alice.locator("#chat-error")).to_be_hidden()
    say(alice, "after the restart")
    post_over_websocket(servers.current.ws_url, bob["token"], chat_id, ["live again"])
    expect(message_text(alice, "live again")).to_have_count(1)
    expect(messages(alice)).to_have_count(6)
    texts = ("before the restart", "see you at 10:30", "sent meanwhile", "typed while offline",
             "after the restart", "live again")
    for text in texts:
        expect(message_text(alice, text)).to_have_count(1)
    assert alice.js_errors == []


def test_older_messages_load_on_scrolling_up_on_a_phone(browser, database):
    with ChatServer(
        db_path=database, bcrypt_rounds=4, frames_per_second=10_000.0, frame_burst=10_000
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


# ---- A long, real conversation at desktop and phone sizes --------------------------------

CONVERSATION = [
    ("bob", "Morning! Did everyone see the forecast for Saturday?"),
    ("dana", "Sunny until 4, then showers. We should start early."),
    ("alice", "Agreed. Meet at the station at 8:15?"),
    ("bob", "8:15 works. I'll bring the map and the first-aid kit."),
    ("dana", "I can do sandwiches for four. Any allergies?"),
    ("alice", "No nuts for Sam, otherwise anything goes."),
    ("bob", "Noted. Which trail: the ridge or the lake loop?"),
    ("dana", "Lake loop: it is shorter if the rain comes early."),
    ("alice", "Lake loop it is. I booked the 8:32 train, four seats."),
    ("bob", "Perfect, thanks Alice!"),
]
FILLER = [
    "Has anyone got a spare rain jacket?",
    "The café by the station opens at 7.",
    "I found the photos from last year's trip.",
    "Let's vote on the route tomorrow.",
    "Train tickets are cheaper before 9.",
    "Sam says he can drive us back.",
    "Don't forget sun cream, just in case.",
    "I'll check the bus times for the way back.",
]
SIZES = {"desktop": (1280, 800), "phone": (390, 844)}


def seed_conversation(database: str, chat_id: int, ids: dict[str, int], total: int) -> int:
    """Insert `total` messages straight into the database (either backend), spread over five
    days up to now.

    Ends with CONVERSATION; returns the number of distinct days (UTC, as the page shows them).
    """
    names = list(ids)
    lines = [
        (names[i % len(names)], f"{FILLER[i % len(FILLER)]} (#{i + 1})")
        for i in range(total - len(CONVERSATION))
    ] + CONVERSATION
    when = datetime.now(UTC) - timedelta(minutes=2)
    stamps = []
    for i in range(len(lines)):
        stamps.append(when)
        # A few minutes between messages; the evening before after every 60 of them (the
        # first one just above the newest few, so that "Today" starts on the first screen).
        if i % 60 == 5:
            when = (when - timedelta(days=1)).replace(hour=20, minute=40)
        else:
            when -= timedelta(minutes=3 + i % 5)
    stamps.reverse()
    rows = [
        (chat_id, ids[name], text, stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z")
        for (name, text), stamp in zip(lines, stamps, strict=True)
    ]
    in_thread(run_sql(
        database, "INSERT INTO messages (chat_id, owner_id, text, created_at) VALUES (?, ?, ?, ?)",
        many=rows,
    ))
    return len({stamp.date() for stamp in stamps})


def box_of(page, selector: str) -> dict[str, float]:
    box = page.locator(selector).bounding_box()
    assert box is not None, f"{selector} is not rendered"
    return box


def assert_in_viewport(page, selector: str) -> None:
    """The element is entirely inside the window (not below the fold, not scrolled away)."""
    box = box_of(page, selector)
    width, height = page.viewport_size["width"], page.viewport_size["height"]
    assert box["x"] >= 0 and box["x"] + box["width"] <= width + 0.5, (selector, box)
    assert box["y"] >= 0 and box["y"] + box["height"] <= height + 0.5, (selector, box)


def assert_in_history_view(page, selector: str) -> None:
    """The message is inside the visible part of the scrolling message list, and the window."""
    assert_in_viewport(page, selector)
    box, view = box_of(page, selector), box_of(page, "#history")
    assert box["y"] >= view["y"] - 0.5, (selector, box, view)
    assert box["y"] + box["height"] <= view["y"] + view["height"] + 0.5, (selector, box, view)


def newest(page) -> str:
    return "#messages li.message:last-child"


def assert_app_shell(page) -> None:
    """Only the panes scroll: the page is exactly the window, header and composer on screen."""
    assert page.evaluate("document.scrollingElement.scrollHeight") <= page.viewport_size["height"]
    assert page.evaluate("document.scrollingElement.scrollWidth") <= page.viewport_size["width"]
    assert_in_viewport(page, "header.top")
    assert_in_viewport(page, "#composer-text")
    assert_in_viewport(page, "#send")


@pytest.mark.parametrize("size", list(SIZES))
def test_a_long_chat_opens_at_the_newest_message_and_stays_usable(browser, database, size):
    width, height = SIZES[size]
    with ChatServer(db_path=database, bcrypt_rounds=4, frames_per_second=10_000.0, frame_burst=10_000) as server:
        bob, dana = register_api(server.url, "bob"), register_api(server.url, "dana")
        chat = api(server.url, "POST", "/chats/create", {"name": "Weekend trip"}, token=bob["token"])

        page = new_page(browser, width, height)
        register(page, server.url, "alice")
        alice_id = page.evaluate("fetch('/users/me', {headers: {Authorization: 'Bearer ' + "
                                 "localStorage.getItem('chatapi.token')}}).then(r => r.json())")["id"]
        total = 260
        days = seed_conversation(
            database, chat["id"], {"bob": bob["id"], "dana": dana["id"], "alice": alice_id}, total
        )
        assert days >= 4

        # Back later, with the session kept; then a chat created by someone else appears
        # without a reload (and nothing polls).
        page.reload()
        expect(page.locator("#connection")).to_have_text("connected")
        expect(page.locator("#chat-list .chat-link")).to_have_count(1)
        # The "private" choice of the new-chat form reads as one line beside its box.
        box = page.get_by_label("Private: members only").bounding_box()
        label = page.locator("label.check").bounding_box()
        assert label["height"] < 2 * box["height"] + 8, label
        assert box["x"] - label["x"] < 8, (box, label)
        api(server.url, "POST", "/chats/create", {"name": "Book club"}, token=dana["token"])
        expect(page.locator("#chat-list").get_by_role("button", name="Book club")).to_be_visible()

        # Keyboard only: the first Tab is the skip link, which leads to something on screen.
        page.keyboard.press("Tab")
        skip = page.locator("#skip")
        expect(skip).to_be_focused()
        expect(skip).to_have_text("Skip to the chat list")
        assert_in_viewport(page, skip.get_attribute("href"))
        page.keyboard.press("Enter")
        expect(page.locator("#chat-list").get_by_role("button", name="Weekend trip")).to_be_focused()
        page.keyboard.press("Enter")
        # Focus lands in the composer: typing goes straight into the message box.
        expect(page.get_by_label("Message")).to_be_focused()
        expect(page.get_by_role("heading", name="Weekend trip")).to_be_visible()
        expect(messages(page)).to_have_count(50)
        expect(message_text(page, CONVERSATION[-1][1])).to_be_visible()
        if size == "phone":
            expect(page.locator("#chat-list")).to_be_hidden()  # the conversation is its own screen
            expect(page.get_by_role("button", name="Back to the chat list")).to_be_visible()
        assert_app_shell(page)
        assert_in_history_view(page, newest(page))
        # Day separators, and full dates on the timestamps.
        expect(page.locator("#messages li.day").last).to_have_text("Today")
        assert re.search(r"\d{4}", page.locator(newest(page) + " time").get_attribute("title"))

        page.keyboard.type("See you all at 8:15 then!")
        page.keyboard.press("Enter")
        expect(message_text(page, "See you all at 8:15 then!")).to_have_count(1)
        expect(page.locator("#pending li")).to_have_count(0)
        expect(page.locator(newest(page) + " .text")).to_have_text("See you all at 8:15 then!")
        assert_app_shell(page)
        assert_in_history_view(page, newest(page))

        # A new arrival while at the bottom: the list follows it.
        post_over_websocket(server.ws_url, dana["token"], chat["id"], ["Great, I'll bring the thermos too."])
        expect(page.locator(newest(page) + " .text")).to_have_text("Great, I'll bring the thermos too.")
        assert_app_shell(page)
        assert_in_history_view(page, newest(page))
        expect(page.locator("#jump")).to_be_hidden()
        DOCS.mkdir(exist_ok=True)
        page.screenshot(path=str(DOCS / f"screenshot-{size}.png"))

        # Scrolled up to read: a new arrival does not pull the reader down, a button offers it.
        history = page.locator("#history")
        history.evaluate("box => box.scrollTop = box.scrollHeight / 2")
        reading = page.evaluate(
            """() => {
                const view = document.getElementById('history').getBoundingClientRect();
                const el = [...document.querySelectorAll('#messages li.message')]
                    .find(e => e.getBoundingClientRect().top >= view.top);
                return el.dataset.id;
            }"""
        )
        reading_top = box_of(page, f'#messages li[data-id="{reading}"]')["y"]
        post_over_websocket(server.ws_url, bob["token"], chat["id"], ["Who has the tickets?"])
        expect(message_text(page, "Who has the tickets?")).to_have_count(1)
        jump = page.get_by_role("button", name="New messages")
        expect(jump).to_be_visible()
        assert box_of(page, f'#messages li[data-id="{reading}"]')["y"] == pytest.approx(reading_top, abs=1)
        assert box_of(page, newest(page))["y"] > box_of(page, "#history")["y"] + box_of(page, "#history")["height"]
        jump.click()
        expect(jump).to_be_hidden()
        assert_in_history_view(page, newest(page))

        # Reaching the top loads the page before, and the message on screen stays put.
        loaded = 53
        while loaded < total + 3:
            top_id = page.locator("#messages li.message").first.get_attribute("data-id")
            # Measured in the same task as the scroll, before the page can react to it.
            before = history.evaluate(
                """(box, id) => {
                    box.scrollTop = 0;
                    return document.querySelector(`#messages li[data-id="${id}"]`)
                        .getBoundingClientRect().top;
                }""",
                top_id,
            )
            loaded = min(loaded + 50, total + 3)
            expect(messages(page)).to_have_count(loaded)
            after = box_of(page, f'#messages li[data-id="{top_id}"]')
            assert after["y"] == pytest.approx(before, abs=2), "the view jumped"
            assert_in_history_view(page, f'#messages li[data-id="{top_id}"]')
            assert_app_shell(page)
        expect(page.get_by_text("This is the start of the chat.")).to_be_visible()
        expect(page.get_by_role("button", name="Load older messages")).to_be_hidden()
        ids = page.locator("#messages li.message").evaluate_all("els => els.map(e => +e.dataset.id)")
        assert ids == sorted(set(ids)) and len(ids) == total + 3
        expect(page.locator("#messages li.day")).to_have_count(days)
        expect(page.locator("#messages li.day").nth(days - 2)).to_have_text("Yesterday")

        if size == "phone":
            # Back to the list, and into another chat: the composer is in view again.
            page.get_by_role("button", name="Back to the chat list").click()
            expect(page.locator("#chat-list")).to_be_visible()
            assert_in_viewport(page, '#chat-list [aria-current="true"]')
            page.locator("#chat-list").get_by_role("button", name="Book club").click()
            expect(page.get_by_label("Message")).to_be_focused()
            assert_app_shell(page)
        assert page.js_errors == []


def test_registration_shows_every_problem_at_once_in_plain_words(browser, servers):
    register_api(servers.url, "taken")
    page = new_page(browser, 390, 844)
    page.goto(servers.url + "/")
    # The first Tab is a skip link to a field on screen.
    page.keyboard.press("Tab")
    expect(page.locator("#skip")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#login-form").get_by_label("Email")).to_be_focused()

    form = page.locator("#reg-form")
    email, username, password = (form.get_by_label(name) for name in ("Email", "Username", "Password"))
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    form.get_by_role("button", name="Register").click()
    expect(page.locator("#reg-email-error")).to_have_text("Enter your email address.")
    expect(page.locator("#reg-username-error")).to_have_text("Choose a username.")
    expect(page.locator("#reg-password-error")).to_have_text("Choose a password.")
    expect(page.locator("#reg-error")).to_have_text("Please fix the 3 problems marked above.")
    expect(email).to_be_focused()
    expect(email).to_have_attribute("aria-invalid", "true")

    email.fill("not an email")
    username.fill("al")
    password.fill("short")
    form.get_by_role("button", name="Register").click()
    expect(page.locator("#reg-email-error")).to_have_text(re.compile("^This does not look like an email address"))
    expect(page.locator("#reg-username-error")).to_have_text("Use at least 3 characters for the username.")
    expect(page.locator("#reg-password-error")).to_have_text("Use at least 8 characters for the password.")
    assert not [url for url in requests if "/auth/" in url]  # nothing was sent

    # Fixing a field clears its mark; the server's refusal lands at the field it names.
    email.fill("TAKEN@example.com")
    expect(page.locator("#reg-email-error")).to_be_empty()
    username.fill("someone new")
    password.fill("a long enough password")
    form.get_by_role("button", name="Register").click()
    expect(page.locator("#reg-email-error")).to_have_text(
        "An account with this email already exists. Log in instead?"
    )
    expect(page.locator("#reg-username-error")).to_be_empty()
    expect(page.locator("#reg-password-error")).to_be_empty()
    expect(email).to_be_focused()
    assert "email:" not in page.locator("#reg-form").inner_text()

    username.fill("Taken")
    email.fill("new@example.com")
    form.get_by_role("button", name="Register").click()
    expect(page.locator("#reg-username-error")).to_have_text("This username is taken; choose another one.")
    username.fill("newcomer")
    form.get_by_role("button", name="Register").click()
    expect(page.locator("#me-name")).to_have_text("newcomer")
    assert page.js_errors == []


def test_a_refused_message_is_marked_and_can_be_edited_and_sent_again(browser, servers):
    page = new_page(browser)

    def route_socket(ws) -> None:
        # The server refuses the first message that says "refuse me" (as it would refuse
        # one over its limits): the test answers for it with the server's error frame.
        server = ws.connect_to_server()
        refused: list[str] = []

        def from_page(raw) -> None:
            frame = json.loads(raw)
            if "refuse me" in frame.get("text", "") and not refused:
                refused.append(frame["nonce"])
                ws.send(json.dumps({"type": "error", "error": "text is too long", "nonce": frame["nonce"]}))
            else:
                server.send(raw)

        ws.on_message(from_page)

    page.route_web_socket(re.compile(r"/chats/ws"), route_socket)
    register(page, servers.url, "alice")
    page.get_by_label("New chat").fill("notes")
    page.get_by_role("button", name="Create").click()
    expect(page.get_by_label("Message")).to_be_focused()
    page.keyboard.type("please refuse me")
    page.keyboard.press("Enter")
    failed = page.locator("#pending li.failed")
    expect(failed.locator(".state")).to_have_text("not sent: text is too long")
    expect(failed.locator(".text")).to_have_text("please refuse me")
    expect(messages(page)).to_have_count(0)
    failed.get_by_role("button", name="Edit and resend").click()
    expect(page.get_by_label("Message")).to_have_value("please refuse me")
    expect(page.get_by_label("Message")).to_be_focused()
    expect(page.locator("#pending li")).to_have_count(0)
    page.keyboard.press("Enter")
    expect(message_text(page, "please refuse me")).to_have_count(1)
    expect(page.locator("#chat-error")).to_be_hidden()
    assert page.js_errors == []


# Teams: private chats, direct messages, unread badges


def new_chat(page, name: str, private: bool = False) -> None:
    page.get_by_label("New chat").fill(name)
    if private:
        page.get_by_label("Private: members only").check()
    page.get_by_role("button", name="Create", exact=True).click()
    expect(page.get_by_role("heading", name=name, exact=True)).to_be_visible()


def test_a_private_chat_is_invisible_to_an_outsider(browser, servers):
    alice, bob = new_page(browser), new_page(browser)
    register(alice, servers.url, "alice")
    register(bob, servers.url, "bob")
    new_chat(alice, "secret plans", private=True)
    expect(alice.locator("#chat-list .chat-link", has_text="secret plans").locator(".tag")).to_have_text("private")
    new_chat(alice, "lobby")
    # Bob's list gains the public chat live, and never the private one, even after a reload.
    expect(bob.locator("#chat-list").get_by_role("button", name="lobby", exact=True)).to_be_visible()
    bob.reload()
    expect(bob.locator("#chat-list").get_by_role("button", name="lobby", exact=True)).to_be_visible()
    expect(bob.locator("#chat-list")).not_to_contain_text("secret plans")
    assert alice.js_errors == [] and bob.js_errors == []


def test_a_direct_message_between_two_contexts(browser, servers):
    alice, bob = new_page(browser), new_page(browser)
    register(bob, servers.url, "bob")
    register(alice, servers.url, "alice")
    alice.get_by_role("button", name="Direct chat with bob").click()
    expect(alice.get_by_role("heading", name="bob", exact=True)).to_be_visible()
    expect(alice.get_by_label("Message")).to_be_enabled()
    say(alice, "just between us")
    # Bob's "Direct messages" gain the chat, named after Alice, with one unread message.
    chat = bob.locator("#dm-list").get_by_role("button", name="alice", exact=True)
    expect(chat.locator(".badge")).to_have_text("1")
    chat.click()
    expect(message_text(bob, "just between us")).to_have_count(1)
    expect(chat.locator(".badge")).to_have_count(0)
    say(bob, "sure")
    expect(message_text(alice, "sure")).to_have_count(1)
    assert alice.js_errors == [] and bob.js_errors == []


def test_an_unread_badge_appears_and_clears_when_read(browser, servers):
    alice, bob = two_in_a_chat(browser, servers.url, "lobby")
    new_chat(bob, "elsewhere")
    say(alice, "one")
    say(alice, "two")
    lobby = bob.locator("#chat-list").get_by_role("button", name="lobby", exact=True)
    expect(lobby.locator(".badge")).to_have_text("2")
    expect(bob).to_have_title("(2) ChatAPI")
    open_chat(bob, "lobby")
    expect(message_text(bob, "two")).to_have_count(1)
    expect(lobby.locator(".badge")).to_have_count(0)
    expect(bob).to_have_title("ChatAPI")
    # Read here, read everywhere: Bob on a second device sees no badge, and a new
    # message counts there until he reads it on the first.
    second = new_page(browser)
    second.goto(servers.url + "/")
    second.locator("#login-form").get_by_label("Email").fill("bob@example.com")
    second.locator("#login-form").get_by_label("Password").fill("password-bob")
    second.locator("#login-form").get_by_role("button", name="Log in").click()
    expect(second.locator("#connection")).to_have_text("connected")
    there = second.locator("#chat-list").get_by_role("button", name="lobby", exact=True)
    expect(there).to_be_visible()
    expect(there.locator(".badge")).to_have_count(0)
    say(alice, "three")
    expect(there.locator(".badge")).to_have_text("1")
    expect(message_text(bob, "three")).to_have_count(1)  # open on the first device: read
    expect(there.locator(".badge")).to_have_count(0)
    assert alice.js_errors == [] and bob.js_errors == [] and second.js_errors == []


# Messages that change (issue 13): edit, delete, react, reply; typing; search


def message_item(page, text: str):
    """The history item of the message whose text is `text`."""
    exactly = page.locator(".text").filter(has_text=re.compile("^" + re.escape(text) + "$"))
    return page.locator("#messages li.message").filter(has=exactly)


def actions(page, text: str):
    """Open the actions of a message (its "⋯" button); the open group. On a touch screen
    the button is there without hovering, and is tapped."""
    item = message_item(page, text)
    more = item.get_by_role("button", name="Actions", exact=True)
    if page.touch:
        assert more.evaluate("b => getComputedStyle(b).opacity") == "1"
        more.tap()
    else:
        item.hover()
        more.click()
    group = item.get_by_role("group", name="Actions")
    expect(group).to_be_visible()
    return group


def assert_fits(page) -> None:
    """Nothing is wider than the window (a phone's included)."""
    assert page.evaluate("document.documentElement.scrollWidth") <= page.viewport_size["width"]


def two_in_a_chat(
    browser, url: str, chat: str, bob_size: tuple[int, int] = (1100, 700), bob_touch: bool = False
):
    """Alice and Bob, each in a page of their own, in a chat Alice created (and owns)."""
    alice, bob = new_page(browser), new_page(browser, *bob_size, touch=bob_touch)
    register(alice, url, "alice")
    register(bob, url, "bob")
    new_chat(alice, chat)
    open_chat(bob, chat)  # joining makes Bob a member
    return alice, bob


def test_edit_delete_react_and_reply_are_seen_live_by_a_second_context(browser, servers):
    # Bob is on a phone, with a touch screen: the controls work there.
    alice, bob = two_in_a_chat(browser, servers.url, "plans", SIZES["phone"], bob_touch=True)
    say(alice, "see you at 9")
    say(bob, "bring the map")
    expect(message_text(alice, "bring the map")).to_have_count(1)

    # Alice edits her message: Bob sees the new text, marked as edited, in the same place.
    group = actions(alice, "see you at 9")
    group.get_by_role("button", name="Edit").click()
    box = alice.get_by_label("Message")
    expect(box).to_have_value("see you at 9")
    expect(alice.locator("#compose-what")).to_contain_text("Editing your message")
    box.fill("see you at 10")
    box.press("Enter")
    expect(message_text(bob, "see you at 10")).to_have_count(1)
    expect(message_text(bob, "see you at 9")).to_have_count(0)
    expect(message_item(bob, "see you at 10").locator(".edited")).to_have_text("(edited)")
    expect(messages(bob).first.locator(".text")).to_have_text("see you at 10")
    expect(message_item(alice, "see you at 10").locator(".edited")).to_be_visible()
    expect(box).to_have_value("")
    expect(alice.locator("#compose-bar")).to_be_hidden()
    # Up in the empty box edits one's newest message too; Escape leaves it as it was.
    box.press("ArrowUp")
    expect(box).to_have_value("see you at 10")
    box.press("Escape")
    expect(box).to_have_value("")
    expect(alice.locator("#compose-bar")).to_be_hidden()

    # Bob reacts on his phone: the menu fits on his screen; Alice sees the count and who.
    group = actions(bob, "see you at 10")
    assert_fits(bob)
    width, height = SIZES["phone"]
    for button in group.get_by_role("button").all():
        place = button.bounding_box()
        assert place["x"] >= 0 and place["x"] + place["width"] <= width, place
        assert place["y"] >= 0 and place["y"] + place["height"] <= height, place
        assert place["height"] >= 24, place  # big enough for a finger
    group.get_by_role("button", name="React with 👍").click()
    expect(group).to_be_hidden()  # the menu closes once used
    chip = message_item(alice, "see you at 10").locator('.reaction[data-emoji="👍"]')
    expect(chip).to_contain_text("👍 1")
    expect(chip).to_have_attribute("title", "bob")
    expect(chip).to_have_attribute("aria-pressed", "false")
    # Alice adds hers with a tap on the chip: two, and both names.
    chip.click()
    expect(chip).to_contain_text("👍 2")
    expect(chip).to_have_attribute("aria-pressed", "true")
    bobs_chip = message_item(bob, "see you at 10").locator('.reaction[data-emoji="👍"]')
    expect(bobs_chip).to_contain_text("👍 2")
    expect(bobs_chip).to_have_attribute("title", "alice and you")
    # The open menu says who reacted with what, on a phone too.
    group = actions(bob, "see you at 10")
    expect(group.locator(".reacted-by")).to_have_text("👍 alice and you")
    expect(group.get_by_role("button", name="Take back your 👍")).to_have_attribute("aria-pressed", "true")
    group.get_by_role("button", name="Reply").click()
    # Bob replies: the reply quotes Alice's message for both.
    expect(bob.locator("#compose-what")).to_have_text("Replying to alice: see you at 10")
    bob.get_by_label("Message").fill("ok, 10 it is")
    bob.get_by_label("Message").press("Enter")
    expect(bob.locator("#compose-bar")).to_be_hidden()
    for page in (alice, bob):
        reply = message_item(page, "ok, 10 it is")
        expect(reply.locator(".quote")).to_have_text("↩ alice: see you at 10")
    assert_fits(bob)
    # For the README: a reply, a reaction, an edit, and the actions of a message open.
    group = actions(alice, "ok, 10 it is")
    alice.screenshot(path=str(DOCS / "screenshot-changes.png"))
    alice.keyboard.press("Escape")
    expect(group).to_be_hidden()
    group = actions(bob, "ok, 10 it is")
    bob.screenshot(path=str(DOCS / "screenshot-changes-phone.png"))
    bob.keyboard.press("Escape")
    # Bob takes his reaction back with his chip: Alice's count follows.
    bobs_chip.tap()
    expect(chip).to_contain_text("👍 1")
    expect(chip).to_have_attribute("title", "you")

    # Clicking the quote scrolls to the original and marks it (after a scroll away).
    alice.locator("#history").evaluate("box => box.scrollTop = box.scrollHeight")
    message_item(alice, "ok, 10 it is").locator(".quote").click()
    original = message_item(alice, "see you at 10")
    expect(original).to_have_class(re.compile(r"\bhighlight\b"))
    expect(original).to_be_focused()

    # Bob may not edit or delete Alice's words; Alice owns the chat, so she may delete his.
    say(alice, "who has the tickets?")
    expect(message_text(bob, "who has the tickets?")).to_have_count(1)
    group = actions(bob, "who has the tickets?")
    expect(group.get_by_role("button", name="Reply")).to_be_visible()
    expect(group.get_by_role("button", name="Edit")).to_have_count(0)
    expect(group.get_by_role("button", name="Delete")).to_have_count(0)
    bob.keyboard.press("Escape")
    expect(group).to_be_hidden()
    group = actions(alice, "bring the map")
    expect(group.get_by_role("button", name="Edit")).to_have_count(0)
    group.get_by_role("button", name="Delete").click()
    group.get_by_role("button", name="Yes, delete").click()
    expect(message_text(bob, "bring the map")).to_have_count(0)

    # Alice deletes her own message: a tombstone in its place, for both; the quote says so.
    count = messages(bob).count()
    group = actions(alice, "see you at 10")
    group.get_by_role("button", name="Delete").click()
    group.get_by_role("button", name="Yes, delete").click()
    for page in (alice, bob):
        expect(message_text(page, "see you at 10")).to_have_count(0)
        expect(page.locator("#messages li.message.deleted")).to_have_count(2)
        expect(page.locator("#messages li.message.deleted .text").first).to_have_text("This message was deleted.")
        expect(message_item(page, "ok, 10 it is").locator(".quote")).to_have_text("↩ alice: a deleted message")
    expect(messages(bob)).to_have_count(count)
    expect(bob.locator("#messages li.message.deleted .reaction")).to_have_count(0)

    # A reload shows the same: edits, tombstones and replies are stored.
    bob.reload()
    expect(bob.locator("#connection")).to_have_text("connected")
    expect(messages(bob)).to_have_count(count)
    expect(bob.locator("#messages li.message.deleted")).to_have_count(2)
    expect(message_item(bob, "ok, 10 it is").locator(".quote")).to_have_text("↩ alice: a deleted message")
    assert_fits(bob)
    assert alice.js_errors == [] and bob.js_errors == []


def test_typing_is_shown_and_cleared(browser, servers):
    alice, bob = two_in_a_chat(browser, servers.url, "desk")
    typing = alice.locator("#typing")
    expect(typing).to_be_empty()

    # Shown while Bob types; cleared at once by his message.
    bob.get_by_label("Message").press_sequentially("on my w")
    expect(typing).to_have_text("bob is typing…")
    expect(bob.locator("#typing")).to_be_empty()  # not to himself
    bob.get_by_label("Message").press_sequentially("ay")
    bob.get_by_label("Message").press("Enter")
    expect(message_text(alice, "on my way")).to_have_count(1)
    expect(typing).to_be_empty()

    # Typing again, then stopping without sending: it clears by itself (expires_in).
    bob.wait_for_timeout(3600)  # the server lets one indication a user through every 3 s
    bob.get_by_label("Message").press_sequentially("hmm")
    expect(typing).to_have_text("bob is typing…")
    expect(typing).to_be_empty(timeout=8000)
    # Alice's other chat does not show it; back in the chat where Bob types, it is there.
    new_chat(alice, "elsewhere")
    bob.wait_for_timeout(3600)
    bob.get_by_label("Message").press_sequentially(" then")
    alice.wait_for_timeout(500)
    expect(typing).to_be_empty()
    open_chat(alice, "desk")
    expect(typing).to_have_text("bob is typing…")
    assert alice.js_errors == [] and bob.js_errors == []


@pytest.mark.parametrize("size", list(SIZES))
def test_a_search_result_opens_the_message_in_its_chat(browser, database, size):
    with ChatServer(
        db_path=database, bcrypt_rounds=4, frames_per_second=10_000.0, frame_burst=10_000
    ) as server:
        bob = register_api(server.url, "bob")
        haystack = api(server.url, "POST", "/chats/create", {"name": "haystack"}, token=bob["token"])
        api(server.url, "POST", "/chats/create", {"name": "lobby"}, token=bob["token"])
        texts = [f"straw number {i}" for i in range(300)]
        texts[20] = "the Needle is in here"
        post_over_websocket(server.ws_url, bob["token"], haystack["id"], texts)

        page = new_page(browser, *SIZES[size])
        register(page, server.url, "alice")
        open_chat(page, "lobby")
        if size == "phone":
            page.get_by_role("button", name="Back to the chat list").click()
        search = page.get_by_label("Search", exact=True)
        # Query syntax is only text: nothing breaks, nothing is found.
        search.fill('needle" AND (*')
        search.press("Enter")
        expect(page.locator("#search-none")).to_be_visible()
        expect(page.locator("#search-error")).to_be_empty()
        # An empty search is refused in place.
        search.fill("  ")
        page.get_by_role("button", name="Find").click()
        expect(page.locator("#search-error")).to_have_text("Type a word to find first.")

        search.fill("need")  # a prefix, another case
        search.press("Enter")
        results = page.locator("#search-results .result")
        expect(results).to_have_count(1)
        expect(results.first.locator(".result-text")).to_have_text("the Needle is in here")
        expect(results.first.locator(".result-text mark")).to_have_text("Need")  # the word found
        expect(results.first.locator(".result-where")).to_contain_text("haystack · bob")
        assert_fits(page)
        results.first.click()

        # The chat opens at the message: the history around it loaded (far beyond the
        # first page), the message in view and marked.
        expect(page.get_by_role("heading", name="haystack", exact=True)).to_be_visible()
        found = message_item(page, "the Needle is in here")
        expect(found).to_have_class(re.compile(r"\bhighlight\b"))
        expect(found).to_be_focused()
        assert_in_history_view(page, "#messages li.message.highlight")
        assert_app_shell(page)
        ids = page.locator("#messages li.message").evaluate_all("els => els.map(e => +e.dataset.id)")
        assert ids == sorted(set(ids)) and len(ids) >= 280
        assert ids[-1] == max(ids) and message_text(page, "straw number 299").count() == 1
        # The newest messages still arrive live below.
        post_over_websocket(server.ws_url, bob["token"], haystack["id"], ["one more straw"])
        expect(message_text(page, "one more straw")).to_have_count(1)
        if size == "desktop":
            # Results stay listed; an open chat is not reloaded to show another one.
            expect(results).to_have_count(1)
            results.first.click()
            expect(found).to_be_focused()
            # Many results come a page at a time, newest first.
            search.fill("straw")
            search.press("Enter")
            expect(results).to_have_count(20)
            expect(results.first.locator(".result-text")).to_have_text("one more straw")
            page.get_by_role("button", name="Older results").click()
            expect(results).to_have_count(40)
            expect(results.nth(39).locator(".result-text")).to_have_text("straw number 261")
            page.get_by_role("button", name="Close").click()
            expect(results).to_have_count(0)
        assert page.js_errors == []
