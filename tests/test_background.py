"""Background loops (the writer, the bus, presence, revocations) outlive their faults.

A loop that raised used to end silently: the server kept answering HTTP while no
message reached a socket again. Now the failure is logged and the loop starts again.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging

import asyncpg
import pytest
from conftest import connect, create_chat, next_frame

from chatapi import create_app, db, realtime
from chatapi.app import supervised
from chatapi.hub import Hub
from chatapi.keys import BUS, DB
from chatapi.postgres import _guarded


async def test_a_failing_loop_is_logged_and_started_again_until_it_returns(caplog):
    runs = []

    async def flaky() -> None:
        runs.append(len(runs))
        if len(runs) < 3:
            raise RuntimeError(f"fault {len(runs)}")

    await supervised("flaky", flaky)
    assert runs == [0, 1, 2]
    failures = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in failures] == [
        "background task flaky failed; starting it again in 0.1s",
        "background task flaky failed; starting it again in 0.2s",
    ]
    assert [str(r.exc_info[1]) for r in failures] == ["fault 1", "fault 2"]


async def frame_with_nonce(ws, nonce: str) -> dict:
    """The next frame carrying `nonce`, skipping the others."""
    frame = await next_frame(ws, timeout=10)
    while frame.get("nonce") != nonce:
        frame = await next_frame(ws, timeout=10)
    return frame


async def test_after_a_fault_while_publishing_messages_keep_reaching_every_socket(
    client, register, monkeypatch, caplog
):
    # The fault hits where a committed message goes out to sockets: inside the
    # writer on SQLite, inside the bus's reader on PostgreSQL.
    alice, bob = await register(client), await register(client)
    chat = await create_chat(client, alice)
    sockets = [await connect(client, user) for user in (alice, bob)]
    for ws in sockets:
        await ws.send_json({"type": "join", "chat_id": chat})
        assert (await next_frame(ws))["type"] == "joined"
    publish = Hub.publish
    faults = []

    def publish_failing_once(self: Hub, *args, **kwargs) -> None:
        if not faults:
            faults.append(args)
            raise RuntimeError("a fault nobody foresaw")
        publish(self, *args, **kwargs)

    monkeypatch.setattr(Hub, "publish", publish_failing_once)
    await sockets[0].send_json({"chat_id": chat, "text": "lost live", "nonce": "n1"})
    for attempt in range(50):  # the loop restarts within a second
        nonce = f"after-{attempt}"
        await sockets[0].send_json({"chat_id": chat, "text": "after the fault", "nonce": nonce})
        frame = await next_frame(sockets[0], timeout=10)
        if frame.get("nonce") == nonce:
            break
    assert faults and frame["type"] == "message" and frame["text"] == "after the fault"
    assert (await frame_with_nonce(sockets[1], frame["nonce"]))["id"] == frame["id"]
    failures = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any(m.startswith("background task ") and "starting it again" in m for m in failures)
    # The client that got no acknowledgement for the faulty moment's message resends it
    # with its nonce and gets the stored message back.
    await sockets[0].send_json({"chat_id": chat, "text": "lost live", "nonce": "n1"})
    again = await frame_with_nonce(sockets[0], "n1")
    assert again["type"] == "message" and again["text"] == "lost live"
    # Nothing was lost: the message of the faulty moment is stored, once.
    resp = await client.get("/chats/messages", params={"id": chat}, headers=alice.headers)
    nonces = [m["nonce"] for m in await resp.json()]
    assert nonces.count("n1") == 1 and frame["nonce"] in nonces
    for ws in sockets:
        await ws.close()


async def test_a_driver_that_lost_track_of_a_connection_counts_as_postgresql_away():
    # What asyncpg raised from a pool connection while PostgreSQL restarted; as an
    # unforeseen error it ended the bus's reader, and no message reached a socket again.
    @_guarded
    async def query() -> None:
        raise asyncpg.exceptions.InternalClientError(
            "cannot switch to state 15; another operation (2) is in progress"
        )

    with pytest.raises(db.Unavailable, match="PostgreSQL is unavailable"):
        await query()


async def test_a_presence_write_failing_after_its_socket_is_gone_is_reported_once(
    monkeypatch, caplog
):
    # The write outlives the socket's handler on purpose (a cancelled write would leave
    # the user online); its failure must still be read and reported, not left to
    # asyncio's "Task exception was never retrieved".
    async def away(database, user_id: int, online: bool) -> None:
        await asyncio.sleep(0.05)
        raise db.Unavailable("PostgreSQL is unavailable (test)")

    monkeypatch.setattr(db, "set_online", away)
    handler = asyncio.create_task(realtime.record_presence({DB: None}, 7, False))
    await asyncio.sleep(0.01)
    handler.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await handler
    await realtime.presence_written()
    gc.collect()
    await asyncio.sleep(0)
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count("could not record user 7 as offline") == 1
    assert not [m for m in messages if "never retrieved" in m]


@pytest.mark.postgres_only
async def test_bus_work_in_flight_ends_before_the_database_closes(aiohttp_client, config):
    # A notification still pending at shutdown was destroyed with the event loop, and
    # its connection to PostgreSQL was left open (a ResourceWarning in a later test).
    app = create_app(config)
    client = await aiohttp_client(app)
    started = asyncio.Event()

    async def slow() -> None:
        started.set()
        await asyncio.sleep(60)

    app[BUS]._spawn(slow())
    await started.wait()
    (task,) = app[BUS]._tasks
    await client.close()  # the application's cleanup
    assert task.done()
