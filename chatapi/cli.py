"""The `chatapi` command: serve the API, or run an admin command on its database."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import signal
import sqlite3
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from . import __version__, db, security, users
from .config import Config, ConfigError, from_env
from .redaction import redact_logs
from .runner import CappedSite, make_runner
from .validation import ApiError

T = TypeVar("T")

log = logging.getLogger(__name__)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="chatapi",
        description="Serve the ChatAPI chat server (no command), or run an admin command on "
        "its database. Settings also come from CHATAPI_* environment variables; flags win.",
    )
    p.add_argument("--host", help="address to listen on (CHATAPI_HOST, default 127.0.0.1)")
    p.add_argument(
        "--port", type=int, help="port to listen on, 0 for any free one (CHATAPI_PORT, default 8080)"
    )
    db_help = "SQLite database file (CHATAPI_DB, default ./chatapi.db; ':memory:' for none)"
    p.add_argument("--db", dest="db_path", help=db_help)
    p.add_argument("--version", action="version", version=f"chatapi {__version__}")
    commands = p.add_subparsers(dest="command", metavar="COMMAND")

    create = commands.add_parser(
        "create-user", help="create an account (password from a prompt or stdin)"
    )
    create.add_argument("--email", required=True)
    create.add_argument("--username", required=True)
    reset = commands.add_parser(
        "reset-password",
        help="set a new password (from a prompt or stdin) and revoke the user's tokens",
    )
    reset.add_argument("--email", required=True)
    export = commands.add_parser("export", help="print a chat's messages as JSON lines")
    export.add_argument("--chat", type=int, required=True, help="chat id")
    for command in (create, reset, export):
        command.add_argument("--db", dest="db_path", default=argparse.SUPPRESS, help=db_help)
    return p


def read_password() -> str:
    """A new password: asked twice on a terminal, else the first line of stdin (never argv)."""
    if sys.stdin.isatty():
        password = getpass.getpass("New password: ")
        if getpass.getpass("Repeat it: ") != password:
            raise CommandError("the passwords differ")
        return password
    return sys.stdin.readline().rstrip("\r\n")


class CommandError(Exception):
    """An admin command failed for a reason the operator can fix."""


async def create_user(config: Config, email: str, username: str) -> None:
    body = {"email": email, "username": username, "password": read_password()}
    email, username, password = checked(users.registration_fields, body)
    password_hash = security.hash_password(password, config.bcrypt_rounds)
    database = await db.open_database(config.db_path)
    try:
        user = await db.create_user(database, email, username, password_hash)
    except db.Conflict as exc:
        raise CommandError(f"{exc.field} already taken") from None
    finally:
        await database.close()
    print(json.dumps({"id": user["id"], "email": user["email"], "username": user["username"]}))


async def reset_password(config: Config, email: str) -> None:
    password = checked(users.password_field, {"password": read_password()})
    password_hash = security.hash_password(password, config.bcrypt_rounds)
    database = await db.open_database(config.db_path)
    try:
        user = await db.set_password(database, email.strip().lower(), password_hash)
    except db.NotFound as exc:
        raise CommandError(str(exc)) from None
    finally:
        await database.close()
    print(f"password of {user['username']} (id {user['id']}) reset; their tokens are revoked")


async def export_chat(config: Config, chat_id: int) -> None:
    database = await db.open_database(config.db_path)
    try:
        if not await db.chat_exists(database, chat_id):
            raise CommandError(f"chat {chat_id} does not exist")
        async for message in db.chat_messages_json(database, chat_id):
            sys.stdout.write(message + "\n")
    finally:
        await database.close()


def checked(validate: Callable[[dict[str, Any]], T], body: dict[str, Any]) -> T:
    try:
        return validate(body)
    except ApiError as exc:
        raise CommandError(exc.message) from None


async def serve(config: Config) -> None:
    """Serve until SIGINT or SIGTERM, then shut down gracefully."""
    runner = make_runner(config)
    await runner.setup()
    try:
        await CappedSite(runner, config).start()
        host, port = runner.addresses[0][:2]
        # The first line on stdout is the bound URL (useful with --port 0).
        print(f"http://{host if ':' not in host else f'[{host}]'}:{port}", flush=True)
        log.info("serving on %s:%d, database %s", host, port, config.db_path)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        log.info("shutting down")
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    redact_logs(*logging.getLogger().handlers)
    try:
        config = from_env(host=args.host, port=args.port, db_path=args.db_path)
        if args.command == "create-user":
            asyncio.run(create_user(config, args.email, args.username))
        elif args.command == "reset-password":
            asyncio.run(reset_password(config, args.email))
        elif args.command == "export":
            asyncio.run(export_chat(config, args.chat))
        else:
            asyncio.run(serve(config))
    except ConfigError as exc:
        sys.exit(f"chatapi: bad setting: {exc}")
    except CommandError as exc:
        sys.exit(f"chatapi: {exc}")
    except (OSError, sqlite3.Error) as exc:
        sys.exit(f"chatapi: cannot start: {exc}")


if __name__ == "__main__":
    main()
