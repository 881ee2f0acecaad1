"""Connection exhaustion: a server process with a lowered descriptor limit, flooded with
idle and half-sent connections as a hostile client did, keeps serving its users, refuses
the excess cheaply with one log line, and serves new clients once the idle ones time out."""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource

import aiohttp
from conftest import chatapi_process, next_frame

DESCRIPTOR_LIMIT = 512
FLOOD = 800  # more connections than the server has descriptors
IDLE_TIMEOUT = 4


def lower_descriptor_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (DESCRIPTOR_LIMIT, DESCRIPTOR_LIMIT))


async def idle_connection(host: str, port: int, half_request: bool) -> bytes:
    """Connect and send nothing (or headers that never end); what the server says before
    it ends the connection."""
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError as exc:
        return f"connect failed: {exc}".encode()
    try:
        if half_request:
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        return await asyncio.wait_for(reader.read(), IDLE_TIMEOUT * 10)
    except TimeoutError:
        return b"timeout half=%d" % half_request
    except ConnectionError:
        return b"reset"
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_a_connection_flood_near_the_descriptor_limit_does_not_take_the_server_down(
    tmp_path, database
):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    try:
        server = chatapi_process(
            tmp_path, preexec_fn=lower_descriptor_limit, database=database,
            CHATAPI_IDLE_TIMEOUT=str(IDLE_TIMEOUT),
        )
        async with server as (url, stderr_path), aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=30)
        ) as http:
            host, port = url.removeprefix("http://").split(":")
            body = {"email": "u@example.com", "username": "steady", "password": "password1"}
            async with http.post(url + "/auth/reg", json=body) as resp:
                token = (await resp.json())["token"]
            async with http.post(
                url + "/chats/create", json={"name": "c"}, headers={"Authorization": f"Bearer {token}"}
            ) as resp:
                chat = (await resp.json())["id"]
            ws = await http.ws_connect(url.replace("http", "ws") + "/chats/ws", params={"token": token})

            flood = [
                asyncio.create_task(idle_connection(host, int(port), half_request=n % 2 == 1))
                for n in range(FLOOD)
            ]
            # The refused ones are answered at once; wait until some are.
            while sum(task.done() for task in flood) < FLOOD - DESCRIPTOR_LIMIT:
                await asyncio.sleep(0.05)
            # A user already connected is still served while the flood holds its connections.
            await ws.send_json({"chat_id": chat, "text": "still here", "nonce": "n"})
            assert (await next_frame(ws, "message", timeout=10))["text"] == "still here"
            # A new client meanwhile is refused at once, with the contract's error shape.
            async with aiohttp.ClientSession() as fresh, fresh.get(url + "/health") as resp:
                assert resp.status in (200, 503)
                if resp.status == 503:
                    assert "error" in await resp.json()
                    assert resp.headers["Retry-After"] == "1"

            answers = await asyncio.gather(*flood)
            refused = [a for a in answers if a.startswith(b"HTTP/1.1 503")]
            timed_out = [a for a in answers if a == b""]
            assert refused, "no connection was refused"
            assert timed_out, "no idle connection was held and then timed out"
            others = [a for a in answers if a not in timed_out and a not in refused]
            assert all(a == b"reset" for a in others), others[:3]
            assert json.loads(refused[0].split(b"\r\n\r\n", 1)[1])["error"]

            # Once the idle connections are gone, a new client is served again.
            async with aiohttp.ClientSession() as fresh, fresh.get(url + "/health") as resp:
                assert resp.status == 200
                assert await resp.json() == {"status": "ok"}
            await ws.close()

        log = stderr_path.read_text()
        assert len(log) < 64 * 1024, f"{len(log)} bytes of stderr"
        assert "Too many open files" not in log and "Traceback" not in log, log[-6000:]
        assert log.count("refusing new ones") == 1, log[-2000:]  # one line per burst
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
