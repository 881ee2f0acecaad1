"""Shapes: what reading a request body costs, and how many lines declare it, four ways.

`python -m bench.shapes [--quick]`. For four representative shapes (registration, login,
a new private chat, a posted message frame), from the raw bytes of a valid body to the
checked values:

- hand: json.loads and the hand-written checks of chatapi/validation.py as they were
  before the shapes (commit 75c6c63), copied below; their OpenAPI schemas were written
  again by hand in chatapi/openapi.py.
- own: json.loads and the project's own declarations (chatapi/shapes.py), as the
  server uses them; the OpenAPI schemas come from the same declarations.
- msgspec: msgspec.json.decode into Structs, with __post_init__ for what msgspec
  cannot say (stripping, blank text, U+0000, control characters, the email pattern).
- pydantic: model_validate_json in strict mode, with StringConstraints and
  AfterValidators for the same.

Each option accepts the same bodies; only the cost of valid bodies is timed (best of 5
repeats). Lines: the lines of each option's declarations of the four shapes (for hand,
the checks only). Not counted for msgspec and pydantic: mapping their error messages to
the project's field errors, and making their JSON Schema output OpenAPI 3.0 and exact.
"""

# No `from __future__ import annotations`: msgspec and pydantic read the annotations of
# classes defined inside functions, which need the names of the function.
import argparse
import ast
import inspect
import json
import re
import sys
import timeit
import unicodedata
from collections.abc import Callable
from typing import Annotated, Any, Literal

from chatapi import realtime, teams, users

MAX_ID = 2**63 - 1
MAX_TEXT = 5000
BODIES = {
    "register": {"email": " Alice@Example.com", "username": "alice", "password": "password-alice"},
    "login": {"email": "alice@example.com", "password": "password-alice"},
    "create chat": {"name": "general", "kind": "private", "members": [2, 3, 4]},
    "message frame": {"type": "message", "chat_id": 12, "text": "hello, a short chat message",
                      "nonce": "n-1"},
}
RAW = {name: json.dumps(body).encode() for name, body in BODIES.items()}


# hand: the checks as written before the shapes (chatapi/validation.py, users.py,
# teams.py, realtime.py at 75c6c63), errors reduced to one exception.

class Invalid(Exception):
    pass


def hand_string(body: dict, field: str, *, min_len: int = 1, max_len: int, strip: bool = False) -> str:
    if field not in body:
        raise Invalid(field, "is required")
    value = body[field]
    if not isinstance(value, str):
        raise Invalid(field, "must be a string")
    if strip:
        value = value.strip()
    if len(value) < min_len:
        raise Invalid(field, "too short")
    if len(value) > max_len:
        raise Invalid(field, "too long")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise Invalid(field, "lone surrogate") from None
    return value


EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


def hand_register(body: dict) -> tuple:
    email = hand_string(body, "email", max_len=254, strip=True)
    if not EMAIL.fullmatch(email) or "\x00" in email:
        raise Invalid("email", "must be a valid email address")
    username = hand_string(body, "username", min_len=3, max_len=50, strip=True)
    if any(unicodedata.category(ch) in ("Cc", "Cf") for ch in username):
        raise Invalid("username", "must not contain control characters")
    return email.lower(), username, hand_string(body, "password", min_len=8, max_len=128)


def hand_login(body: dict) -> tuple:
    email = hand_string(body, "email", max_len=254, strip=True).lower()
    return email, hand_string(body, "password", max_len=128)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def hand_new_chat(body: dict) -> tuple:
    kind = body.get("kind", "public")
    if kind not in teams.KINDS:
        raise Invalid("kind", "must be 'public', 'private' or 'direct'")
    name = hand_string(body, "name", max_len=255, strip=True)
    if "\x00" in name:
        raise Invalid("name", "must not contain the character U+0000")
    members = body.get("members", [])
    if not isinstance(members, list) or len(members) > 100 or not all(
        is_int(m) and 1 <= m <= MAX_ID for m in members
    ):
        raise Invalid("members", "must be a list of at most 100 user ids")
    return kind, name, members


def hand_post_frame(frame: dict) -> tuple:
    chat_id = frame.get("chat_id")
    if chat_id is None or not is_int(chat_id) or not 1 <= chat_id <= MAX_ID:
        raise Invalid("chat_id must be a positive integer")
    text = frame.get("text")
    if not isinstance(text, str) or not text.strip() or len(text) > MAX_TEXT or "\x00" in text:
        raise Invalid("text")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise Invalid("text must be valid Unicode (no lone surrogates)") from None
    nonce = frame.get("nonce")
    if nonce is not None and not (
        isinstance(nonce, str) and 1 <= len(nonce) <= 64 and "\x00" not in nonce
    ):
        raise Invalid("nonce")
    return chat_id, text, nonce


# msgspec


def without_lone_surrogates(text: str) -> str:
    text.encode("utf-8")  # UnicodeEncodeError is a ValueError: msgspec reports it
    return text


def optional_libraries() -> dict[str, dict[str, Callable[[bytes], Any]]]:
    """The msgspec and pydantic readers, for those installed (pip install '.[bench]')."""
    readers = {}
    try:
        readers["msgspec"] = msgspec_readers()
    except ImportError:
        pass
    try:
        readers["pydantic"] = pydantic_readers()
    except ImportError:
        pass
    return readers


def msgspec_readers() -> dict[str, Callable[[bytes], Any]]:
    import msgspec
    from msgspec import Meta, Struct

    Id = Annotated[int, Meta(ge=1, le=MAX_ID)]

    class MsRegistration(Struct):
        email: str
        username: str
        password: Annotated[str, Meta(min_length=8, max_length=128)]
        invite: Any = None

        def __post_init__(self) -> None:
            email = without_lone_surrogates(self.email.strip())
            if len(email) > 254 or not EMAIL.fullmatch(email) or "\x00" in email:
                raise ValueError("email: must be a valid email address")
            self.email = email.lower()
            username = without_lone_surrogates(self.username.strip())
            if not 3 <= len(username) <= 50 or any(
                unicodedata.category(ch) in ("Cc", "Cf") for ch in username
            ):
                raise ValueError("username: 3 to 50 characters, no control characters")
            self.username = username

    class MsCredentials(Struct):
        email: str
        password: Annotated[str, Meta(min_length=1, max_length=128)]

        def __post_init__(self) -> None:
            email = without_lone_surrogates(self.email.strip())
            if not 1 <= len(email) <= 254:
                raise ValueError("email: 1 to 254 characters")
            self.email = email.lower()

    class MsNewChat(Struct):
        name: str
        kind: Literal["public", "private"] = "public"
        members: Annotated[list[Id], Meta(max_length=100)] = []

        def __post_init__(self) -> None:
            name = without_lone_surrogates(self.name.strip())
            if not 1 <= len(name) <= 255 or "\x00" in name:
                raise ValueError("name: 1 to 255 characters, not U+0000")
            self.name = name

    class MsPostFrame(Struct):
        chat_id: Id
        text: Annotated[str, Meta(max_length=MAX_TEXT)]
        nonce: Annotated[str, Meta(min_length=1, max_length=64)] | None = None
        type: Literal["message"] = "message"

        def __post_init__(self) -> None:
            if not self.text.strip() or "\x00" in self.text:
                raise ValueError("text must not be empty or only white space")
            without_lone_surrogates(self.text)
            if self.nonce is not None and "\x00" in self.nonce:
                raise ValueError("nonce must not contain U+0000")

    decoders = {
        "register": msgspec.json.Decoder(MsRegistration),
        "login": msgspec.json.Decoder(MsCredentials),
        "create chat": msgspec.json.Decoder(MsNewChat),
        "message frame": msgspec.json.Decoder(MsPostFrame),
    }
    DECLARATIONS["msgspec"] = [
        without_lone_surrogates, MsRegistration, MsCredentials, MsNewChat, MsPostFrame
    ]
    return {name: decoder.decode for name, decoder in decoders.items()}


def pydantic_readers() -> dict[str, Callable[[bytes], Any]]:
    from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

    def an_email(value: str) -> str:
        if not EMAIL.fullmatch(value) or "\x00" in value:
            raise ValueError("must be a valid email address")
        return value.lower()

    def no_control(value: str) -> str:
        if any(unicodedata.category(ch) in ("Cc", "Cf") for ch in value):
            raise ValueError("must not contain control characters")
        return value

    def no_nul(value: str) -> str:
        if "\x00" in value:
            raise ValueError("must not contain the character U+0000")
        return value

    def not_blank(value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty or only white space")
        return value

    def string(*checks: Callable[[str], str], **constraints: Any) -> Any:
        return Annotated[str, StringConstraints(**constraints), *map(AfterValidator, checks)]

    Id = Annotated[int, Field(ge=1, le=MAX_ID)]
    strict = ConfigDict(strict=True)

    class PdRegistration(BaseModel):
        model_config = strict
        email: string(an_email, strip_whitespace=True, min_length=1, max_length=254)
        username: string(no_control, strip_whitespace=True, min_length=3, max_length=50)
        password: string(min_length=8, max_length=128)
        invite: Any = None

    class PdCredentials(BaseModel):
        model_config = strict
        email: string(str.lower, strip_whitespace=True, min_length=1, max_length=254)
        password: string(min_length=1, max_length=128)

    class PdNewChat(BaseModel):
        model_config = strict
        name: string(no_nul, strip_whitespace=True, min_length=1, max_length=255)
        kind: Literal["public", "private"] = "public"
        members: Annotated[list[Id], Field(max_length=100)] = []

    class PdPostFrame(BaseModel):
        model_config = strict
        chat_id: Id
        text: string(not_blank, no_nul, max_length=MAX_TEXT)
        nonce: string(no_nul, min_length=1, max_length=64) | None = None
        type: Literal["message"] = "message"

    DECLARATIONS["pydantic"] = [
        an_email, no_control, no_nul, not_blank, string,
        PdRegistration, PdCredentials, PdNewChat, PdPostFrame,
    ]
    return {
        "register": PdRegistration.model_validate_json,
        "login": PdCredentials.model_validate_json,
        "create chat": PdNewChat.model_validate_json,
        "message frame": PdPostFrame.model_validate_json,
    }


def loads_then(read: Callable[[dict], Any]) -> Callable[[bytes], Any]:
    def reader(raw: bytes) -> Any:
        body = json.loads(raw.decode("utf-8"))
        if not isinstance(body, dict):
            raise Invalid("request body must be a JSON object")
        return read(body)

    return reader


def readers() -> dict[str, dict[str, Callable[[bytes], Any]]]:
    post = realtime.post_frame(MAX_TEXT)
    return {
        "hand": {
            "register": loads_then(hand_register),
            "login": loads_then(hand_login),
            "create chat": loads_then(hand_new_chat),
            "message frame": loads_then(hand_post_frame),
        },
        "own": {
            "register": loads_then(users.REGISTRATION.read),
            "login": loads_then(users.CREDENTIALS.read),
            "create chat": loads_then(teams.NEW_CHAT.read),
            "message frame": loads_then(post.read),
        },
        **optional_libraries(),
    }


DECLARATIONS: dict[str, list[Any]] = {
    "hand": [hand_string, hand_register, hand_login, hand_new_chat, hand_post_frame],
}


def assignment_lines(module: Any, names: set[str]) -> int:
    """Lines of the module-level statements that assign (or define) `names`."""
    tree = ast.parse(inspect.getsource(module))
    lines = 0
    for node in tree.body:
        targets = [t.id for t in getattr(node, "targets", []) if isinstance(t, ast.Name)]
        if set(targets) & names or getattr(node, "name", None) in names:
            lines += node.end_lineno - node.lineno + 1
    return lines


def declaration_lines(option: str) -> int:
    if option == "own":
        return (
            assignment_lines(users, {"REGISTRATION", "CREDENTIALS"})
            + assignment_lines(teams, {"CHAT_NAME", "TEAM_CHAT", "NEW_CHAT"})
            + assignment_lines(realtime, {"CHAT_ID", "post_frame"})
        )
    return sum(len(inspect.getsourcelines(item)[0]) for item in DECLARATIONS[option])


def measure(number: int, repeat: int = 200) -> dict[str, dict[str, float]]:
    """Microseconds per body read, by option and shape: the best of `repeat` rounds, the
    options taking turns in each round, so that load from elsewhere meets them alike."""
    parse_only = loads_then(lambda body: body)
    options = {"json.loads alone": {shape: parse_only for shape in BODIES}, **readers()}
    for by_shape in options.values():
        for shape, read in by_shape.items():
            read(RAW[shape])  # each option accepts each body
    best: dict[str, dict[str, float]] = {option: {} for option in options}
    for _ in range(repeat):
        for option, by_shape in options.items():
            for shape, read in by_shape.items():
                took = timeit.timeit(lambda r=read, b=RAW[shape]: r(b), number=number)
                best[option][shape] = min(best[option].get(shape, took), took)
    return {
        option: {shape: took / number * 1e6 for shape, took in by_shape.items()}
        for option, by_shape in best.items()
    }


def table(results: dict[str, dict[str, float]]) -> str:
    shapes = list(BODIES)
    rows = [
        "| option | " + " | ".join(f"{s} (µs)" for s in shapes) + " | mean (µs) | lines |",
        "|---" * (len(shapes) + 3) + "|",
    ]
    for option, by_shape in results.items():
        mean = sum(by_shape.values()) / len(by_shape)
        cells = " | ".join(f"{by_shape[s]:.2f}" for s in shapes)
        lines = declaration_lines(option) if option in DECLARATIONS or option == "own" else ""
        rows.append(f"| {option} | {cells} | {mean:.2f} | {lines} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.shapes", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a few hundred reads (a smoke test)")
    args = p.parse_args(argv)
    print(f"Python {sys.version.split()[0]}")
    print(table(measure(number=100, repeat=2) if args.quick else measure(number=200, repeat=200)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
