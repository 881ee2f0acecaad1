"""The `chatapi` command: serve the API, or run an admin command on its database."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import os
import signal
import sqlite3
import sys
from collections.abc import Callable, Sequence
from contextlib import closing
from typing import Any, TypeVar
from urllib.parse import quote

from . import __version__, db, security, users
from .config import Config, ConfigError, from_env, shown_db
from .redaction import redact_logs
from .runner import CappedSite, make_runner
from .validation import ApiError
from .workers import WorkerError, run_workers

T = TypeVar("T")

log = logging.getLogger(__name__)


def port_number(text: str) -> int:
    """--port's value, refused in plain words when it is not a port."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a whole number from 0 to 65535, got {text!r}"
        ) from None


def parser() -> argparse.ArgumentParser:
    """The command line: global settings, then an optional admin command."""
    p = argparse.ArgumentParser(
        prog="chatapi",
        description="Serve the ChatAPI chat server (no command), or run an admin command on "
        "its database. Settings also come from CHATAPI_* environment variables; flags win.",
    )
    p.add_argument("--host", help="address to listen on (CHATAPI_HOST, default 127.0.0.1)")
    p.add_argument(
        "--port", type=port_number,
        help="port to listen on, 0 for any free one (CHATAPI_PORT, default 8080)",
    )
    db_help = (
        "SQLite database file, or a postgresql://user:password@host:port/dbname URL "
        "(CHATAPI_DB, default ./chatapi.db; ':memory:' for none)"
    )
    p.add_argument("--db", dest="db_path", help=db_help)
    p.add_argument(
        "--workers", type=int, default=1,
        help="serve one port from this many processes (PostgreSQL only; default 1)",
    )
    p.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--version", action="version", version=f"chatapi {__version__}")
    commands = p.add_subparsers(dest="command", metavar="COMMAND")

    create = commands.add_parser(
        "create-user", help="create an account (password from a prompt or stdin)"
    )
    create.add_argument("--email", required=True)
    create.add_argument("--username", required=True)
    create.add_argument("--admin", action="store_true", help="make the account an admin")
    reset = commands.add_parser(
        "reset-password",
        help="set a new password (from a prompt or stdin) and revoke the user's tokens",
    )
    reset.add_argument("--email", required=True)
    export = commands.add_parser("export", help="print a chat's messages as JSON lines")
    export.add_argument("--chat", type=int, required=True, help="chat id")
    grant = commands.add_parser("grant-admin", help="make a user an admin")
    grant.add_argument("--email", required=True)
    revoke = commands.add_parser("revoke-admin", help="take the admin role from a user")
    revoke.add_argument("--email", required=True)
    list_users = commands.add_parser("list-users", help="print every user as JSON lines")
    list_chats = commands.add_parser("list-chats", help="print every chat as JSON lines")
    for command in (create, reset, export, grant, revoke, list_users, list_chats):
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


def checked_database(path: str, must_exist: bool) -> str:
    """The database path to open (absolute), after checking that it can be opened.

    Serving creates a missing file; admin commands refuse one, so that a command run
    from the wrong directory does not quietly work on a new, empty database.
    Raises CommandError naming the path. A PostgreSQL URL is returned as it is.
    """
    if db.is_postgres(path):
        return path  # checked by Config; reached (or not) when opened
    if path == ":memory:":
        if must_exist:
            raise CommandError("admin commands need the server's database file, not ':memory:'")
        return path
    shown = os.path.abspath(path)
    if os.path.isdir(shown):
        raise CommandError(f"cannot use database {shown}: it is a directory")
    if not os.path.exists(shown):
        if must_exist:
            raise CommandError(
                f"no database at {shown} (give the server's database with --db or CHATAPI_DB)"
            )
        parent = os.path.dirname(shown)
        if not os.path.isdir(parent):
            raise CommandError(f"cannot create database {shown}: no directory {parent}")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise CommandError(f"cannot create database {shown}: {parent} is not writable")
        return shown
    try:
        # Read-only, so that the check itself can change nothing; reading the
        # schema version reads the file's header.
        with closing(sqlite3.connect(f"file:{quote(shown)}?mode=ro", uri=True)) as conn:
            conn.execute("PRAGMA schema_version").fetchone()
    except sqlite3.Error as exc:
        raise CommandError(f"cannot open database {shown}: {exc}") from None
    return shown


async def create_user(
    config: Config, email: str, username: str, password: str, admin: bool = False
) -> None:
    """Create an account and print it as JSON."""
    body = {"email": email, "username": username, "password": password}
    email, username, password = checked(users.registration_fields, body)
    password_hash = security.hash_password(password, config.bcrypt_rounds)
    database = await db.open_database(config.db_path)
    try:
        user = await db.create_user(database, email, username, password_hash)
        if admin:
            user = await db.set_admin(database, email, True)
    except db.Conflict as exc:
        raise CommandError(f"{exc.field} already taken") from None
    finally:
        await database.close()
    print(json.dumps(_user_line(user)))


async def reset_password(config: Config, email: str, password: str) -> None:
    """Set a user's password and revoke their tokens."""
    password = checked(users.password_field, {"password": password})
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
    """Write a chat's messages to stdout as JSON lines, oldest first."""
    database = await db.open_database(config.db_path)
    try:
        if not await db.chat_exists(database, chat_id):
            raise CommandError(f"chat {chat_id} does not exist")
        async for message in db.chat_messages_json(database, chat_id):
            sys.stdout.write(message + "\n")
    finally:
        await database.close()


def _user_line(user: dict[str, Any]) -> dict[str, Any]:
    fields = ("id", "email", "username")
    return {**{field: user[field] for field in fields}, "is_admin": bool(user["is_admin"])}


async def set_admin(config: Config, email: str, admin: bool) -> None:
    database = await db.open_database(config.db_path)
    try:
        user = await db.set_admin(database, email.strip().lower(), admin)
    except db.NotFound as exc:
        raise CommandError(str(exc)) from None
    finally:
        await database.close()
    print(json.dumps(_user_line(user)))


async def list_users(config: Config) -> None:
    database = await db.open_database(config.db_path)
    try:
        for user in await db.list_users(database):
            print(json.dumps(_user_line(user), ensure_ascii=False))
    finally:
        await database.close()


async def list_chats(config: Config) -> None:
    database = await db.open_database(config.db_path)
    try:
        for chat in await db.list_chats(database):
            print(json.dumps(chat, ensure_ascii=False))
    finally:
        await database.close()


def checked(validate: Callable[[dict[str, Any]], T], body: dict[str, Any]) -> T:
    try:
        return validate(body)
    except ApiError as exc:
        raise CommandError(exc.message) from None


def openable_url(host: str, port: int) -> str:
    """A URL for the bound address that a browser on this machine can open.

    A wildcard address (0.0.0.0, ::) is where the server listens, not an address to
    connect to: the loopback address of the same family stands in for it.
    """
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


async def serve(config: Config, reuse_port: bool = False) -> None:
    """Serve until SIGINT or SIGTERM, then shut down gracefully."""
    runner = make_runner(config)
    await runner.setup()
    try:
        try:
            await CappedSite(runner, config, reuse_port=reuse_port).start()
        except OSError as exc:
            raise CommandError(
                f"cannot listen on {config.host} port {config.port}: {exc.strerror or exc}"
            ) from None
        host, port = runner.addresses[0][:2]
        # The first line on stdout is the bound URL (useful with --port 0).
        print(openable_url(host, port), flush=True)
        log.info("listening on %s port %d, database %s", host, port, shown_db(config.db_path))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        log.info("shutting down")
    finally:
        await runner.cleanup()


def run(args: argparse.Namespace) -> None:
    """Run the command `args` names (serve when none)."""
    config = from_env(host=args.host, port=args.port, db_path=args.db_path)
    admin = args.command is not None
    config = config.replace(db_path=checked_database(config.db_path, must_exist=admin))
    if admin:
        # stderr, so that export's stdout stays pure JSON lines.
        print(f"chatapi: using database {shown_db(config.db_path)}", file=sys.stderr, flush=True)
    try:
        if args.command == "create-user":
            password = read_password()
            asyncio.run(create_user(config, args.email, args.username, password, args.admin))
        elif args.command in ("grant-admin", "revoke-admin"):
            asyncio.run(set_admin(config, args.email, args.command == "grant-admin"))
        elif args.command == "list-users":
            asyncio.run(list_users(config))
        elif args.command == "list-chats":
            asyncio.run(list_chats(config))
        elif args.command == "reset-password":
            password = read_password()
            asyncio.run(reset_password(config, args.email, password))
        elif args.command == "export":
            asyncio.run(export_chat(config, args.chat))
        elif args.workers != 1:
            if args.workers < 1 or not db.is_postgres(config.db_path):
                raise ConfigError(
                    "--workers above 1 needs a postgresql:// database (CHATAPI_DB/--db); "
                    "SQLite serves from one process"
                    if args.workers > 1 else "--workers must be at least 1"
                )
            asyncio.run(run_workers(args.workers, config.host, config.port, config.db_path))
        else:
            asyncio.run(serve(config, reuse_port=args.reuse_port))
    except sqlite3.Error as exc:
        raise CommandError(f"database {config.db_path}: {exc}") from None


def main(argv: Sequence[str] | None = None) -> None:
    """The `chatapi` command: every failure is one line on stderr and a non-zero exit."""
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    redact_logs(*logging.getLogger().handlers)
    try:
        run(args)
    except ConfigError as exc:
        sys.exit(f"chatapi: bad setting: {exc}")
    except CommandError as exc:
        sys.exit(f"chatapi: {exc}")
    except db.Unavailable as exc:
        sys.exit(f"chatapi: cannot start: CHATAPI_DB/--db: {exc}")
    except (OSError, WorkerError) as exc:
        sys.exit(f"chatapi: cannot start: {exc}")
    except EOFError:
        leave_prompt("no password given", 1)
    except KeyboardInterrupt:
        # Ctrl-C at a prompt, or before serving began.
        leave_prompt("interrupted", 130)


def leave_prompt(message: str, code: int) -> None:
    """Exit with one line; on a terminal, below the prompt the line was left on."""
    print(f"{chr(10) if sys.stderr.isatty() else ''}chatapi: {message}", file=sys.stderr)
    sys.exit(code)


if __name__ == "__main__":
    main()
