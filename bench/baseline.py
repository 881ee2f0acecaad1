"""The bare baselines: minimal aiohttp websocket servers, no auth, no database.

    python -m bench.baseline --mode broadcast   # every text frame goes to every socket
                                                # connected to the same path (its "chat")
    python -m bench.baseline --mode echo        # every text frame goes back to its sender

Like `python -m chatapi --port 0`, the first line on stdout is the bound URL. Any path
upgrades; the fan-out connects every socket to one path (one chat), the ingest
scenario each chat's sockets to a path of their own (`/ws/3`). Query strings are
ignored. Started through `bench.launch`, so it runs on the bench's event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from aiohttp import WSMsgType, web

ROOMS = web.AppKey("rooms", dict)


async def broadcast(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    rooms: dict[str, set[web.WebSocketResponse]] = request.app[ROOMS]
    sockets = rooms.setdefault(request.path, set())
    sockets.add(ws)
    try:
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                for peer in list(sockets):
                    try:
                        await peer.send_str(msg.data)
                    except (ConnectionError, RuntimeError):
                        pass
    finally:
        sockets.discard(ws)
    return ws


async def echo(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == WSMsgType.TEXT:
            await ws.send_str(msg.data)
    return ws


async def serve(mode: str, host: str, port: int) -> None:
    app = web.Application()
    app[ROOMS] = {}
    app.router.add_get("/{tail:.*}", broadcast if mode == "broadcast" else echo)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)  # the listen queue ChatAPI uses
    await site.start()
    bound_host, bound_port = runner.addresses[0][:2]
    print(f"http://{bound_host}:{bound_port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.baseline")
    p.add_argument("--mode", choices=("broadcast", "echo"), required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args()
    asyncio.run(serve(args.mode, args.host, args.port))


if __name__ == "__main__":
    main()
