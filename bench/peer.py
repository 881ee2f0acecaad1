"""The peer: the websocket broadcast a Python developer would write with FastAPI.

    python -m bench.peer --host 127.0.0.1 --port 0

FastAPI's documented pattern ("WebSockets", "Handling disconnections and multiple
clients"): a ConnectionManager with a list of accepted sockets, and an endpoint that
awaits `receive_text()` and broadcasts with `await connection.send_text(...)` to every
socket in turn. The frame is broadcast unchanged (the docs prefix it with the
client's number; the generator needs the same frame from every server). Served by
uvicorn with its default settings except the two the bench sets for every server:
no access log, and the event loop of the run (`bench.launch`: asyncio, or uvloop
with `--loop uvloop`; uvicorn's own default, "auto", would pick uvloop whenever it
is installed). Like the other servers, the first line on stdout is the bound URL.
"""

from __future__ import annotations

import argparse
import socket

import uvicorn
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from .launch import install_loop


class ConnectionManager:
    def __init__(self) -> None:
        self.active_connections: list[WebSocket] = []

    async def connect(self, websocket: WebSocket) -> None:
        await websocket.accept()
        self.active_connections.append(websocket)

    def disconnect(self, websocket: WebSocket) -> None:
        self.active_connections.remove(websocket)

    async def broadcast(self, message: str) -> None:
        for connection in self.active_connections:
            await connection.send_text(message)


app = FastAPI()
manager = ConnectionManager()


@app.websocket("/{path:path}")
async def websocket_endpoint(websocket: WebSocket, path: str) -> None:
    await manager.connect(websocket)
    try:
        while True:
            data = await websocket.receive_text()
            await manager.broadcast(data)
    except WebSocketDisconnect:
        manager.disconnect(websocket)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.peer")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args()
    loop = install_loop()
    # Bound here, so that port 0 works and the URL is known before uvicorn starts.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    host, port = sock.getsockname()[:2]
    print(f"http://{host}:{port}", flush=True)
    config = uvicorn.Config(app, loop=loop, access_log=False)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
