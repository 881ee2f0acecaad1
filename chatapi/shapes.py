"""Request and response shapes, each declared once: the checks and the OpenAPI schemas
both come from the declaration.

    NEW_MEMBER = Shape("NewMember", {
        "user_id": Int(1, MAX_ID, reason="must be a user id (a positive integer)"),
        "role": Choice(ROLES, default="member"),
    })

    values = NEW_MEMBER.read(body)     # {"user_id": 5, "role": "member"}, or FieldError
    NEW_MEMBER.schema()                # its OpenAPI 3.0 schema object
    MEMBER.dump(row)                   # a response body: the declared fields of a row
    HISTORY.read_query(request.query)  # query or path parameters, from their text
    HISTORY.parameters("query")        # their OpenAPI parameter objects

Field kinds: `Text` (length, stripping, U+0000, control characters), `Word` (a token
without white space), `Email`, `Int`
(bounds), `Ids` (a list of ids), `Choice`, `Bool`, `Timestamp`, `Nested` (a shape in a
shape) and `Json` (any value, checked elsewhere or not at all). Every field takes
`default` (used when the field is absent; a field without one is required),
`description`, `null=True` (a JSON null reads as absent) and, to word a refusal,
`reason=` (every refusal but "is required") or `reasons={key: text}` (`Text`'s keys:
required, type, empty, short, long, unicode, nul, control; `Word` adds word).

Fields are checked in declaration order and the first refusal is a FieldError: HTTP
answers it 400 `{"error": "field: reason", "details": {field: reason}}`, a websocket error
frame words it "field reason" (`frame_text`). Request shapes ignore fields they do not
declare; response shapes (`closed=True`) say `additionalProperties: false`.
`Either` picks one of several shapes by the value of one field (an `anyOf`).
"""

from __future__ import annotations

import functools
import re
import sys
import unicodedata
from collections.abc import Mapping
from typing import Any

from .validation import ApiError

MAX_ID = 2**63 - 1
Schema = dict[str, Any]
MISSING: Any = type("Missing", (), {"__repr__": lambda self: "MISSING"})()


class FieldError(ApiError):
    """A refused field: 400 {"error": "field: reason", "details": {field: reason}}."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(400, f"{field}: {reason}", {field: reason})
        self.field = field
        self.reason = reason

    def frame_text(self) -> str:
        """The refusal as a websocket error frame words it."""
        return f"{self.field} {self.reason}"


class Refused(Exception):
    """Raised by a field's check with the reason; the shape adds the field's name."""


# Character classes for patterns, spelled out rather than written `\s`: JSON Schema
# patterns are ECMA-262, whose `\s` is not Python's (U+001C..U+001F and U+0085 are
# white space only to Python).


def char_class(codes: list[int]) -> str:
    """A regex character class body naming exactly `codes` (sorted), as ranges."""
    ranges: list[list[int]] = []
    for code in codes:
        if ranges and ranges[-1][1] == code - 1:
            ranges[-1][1] = code
        else:
            ranges.append([code, code])

    def char(code: int) -> str:
        return f"\\u{code:04x}" if code <= 0xFFFF else chr(code)

    return "".join(char(a) if a == b else f"{char(a)}-{char(b)}" for a, b in ranges)


@functools.cache
def character_classes() -> tuple[str, str]:
    """(white space as str.strip() sees it, control characters (Cc and Cf))."""
    characters = [chr(code) for code in range(sys.maxunicode + 1)]
    white = [ord(ch) for ch in characters if ch.isspace()]
    control = [ord(ch) for ch in characters if unicodedata.category(ch) in ("Cc", "Cf")]
    return char_class(white), char_class(control)


def is_utf8(text: str) -> bool:
    """False for strings JSON can carry but UTF-8 cannot (lone surrogates like \\ud800)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def has_control_characters(text: str) -> bool:
    return any(unicodedata.category(ch) in ("Cc", "Cf") for ch in text)


def is_int(value: Any) -> bool:
    """A JSON integer (true and false are not numbers here)."""
    return isinstance(value, int) and not isinstance(value, bool)


class Field:
    """One field: how it is read and how it is described."""

    def __init__(
        self,
        *,
        default: Any = MISSING,
        description: str | None = None,
        null: bool = False,
        reason: str | None = None,
        reasons: Mapping[str, str] | None = None,
    ) -> None:
        self.default = default
        self.description = description
        self.null = null
        self.reasons = {"required": "is required", **self.default_reasons()}
        if reason is not None:
            self.reasons.update((key, reason) for key in self.reasons if key != "required")
        self.reasons.update(reasons or {})

    @property
    def required(self) -> bool:
        return self.default is MISSING

    def default_reasons(self) -> dict[str, str]:
        return {"type": "is invalid"}

    def check(self, value: Any) -> Any:
        """The value as read, or Refused(reason)."""
        return value

    def parse(self, text: str) -> Any:
        """A query or path parameter's text, read."""
        return self.check(text)

    def type_schema(self) -> Schema:
        return {}

    def schema(self) -> Schema:
        schema = self.type_schema()
        if self.description:
            schema["description"] = self.description
        if self.default is not MISSING and self.default is not None:
            default = self.default
            schema["default"] = list(default) if isinstance(default, tuple) else default
        if self.null and not self.required:
            schema["nullable"] = True
        return schema


class Json(Field):
    """Any JSON value, taken as it is; `schema` describes what is meant."""

    def __init__(self, schema: Schema | None = None, **options: Any) -> None:
        super().__init__(**options)
        self._schema = schema or {}

    def type_schema(self) -> Schema:
        return dict(self._schema)


class Bool(Field):
    def default_reasons(self) -> dict[str, str]:
        return {"type": "must be true or false"}

    def check(self, value: Any) -> Any:
        if not isinstance(value, bool):
            raise Refused(self.reasons["type"])
        return value

    def type_schema(self) -> Schema:
        return {"type": "boolean"}


class Text(Field):
    """A string of min_len..max_len characters (after stripping white space, if `strip`);
    `blank=False`: not only white space; `nul=False`: no U+0000; `control=False`: no
    control characters; `lower`: read lower-cased. Lone surrogates are always refused."""

    def __init__(
        self,
        min_len: int = 0,
        max_len: int | None = None,
        *,
        strip: bool = False,
        blank: bool = True,
        nul: bool = True,
        control: bool = True,
        lower: bool = False,
        **options: Any,
    ) -> None:
        self.min_len, self.max_len = min_len, max_len
        self.strip, self.blank, self.nul, self.control, self.lower = strip, blank, nul, control, lower
        super().__init__(**options)

    def default_reasons(self) -> dict[str, str]:
        return {
            "type": "must be a string",
            "empty": "must not be empty",
            "short": f"must be at least {self.min_len} characters",
            "long": f"must be at most {self.max_len} characters",
            "unicode": "must be valid Unicode text (no lone surrogates)",
            "nul": "must not contain the character U+0000",
            "control": "must not contain control characters",
        }

    def check(self, value: Any) -> Any:
        reasons = self.reasons
        if not isinstance(value, str):
            raise Refused(reasons["type"])
        if self.strip:
            value = value.strip()
        if len(value) < self.min_len or (not self.blank and not value.strip()):
            raise Refused(reasons["empty" if self.min_len <= 1 else "short"])
        if self.max_len is not None and len(value) > self.max_len:
            raise Refused(reasons["long"])
        if not is_utf8(value):
            raise Refused(reasons["unicode"])
        if not self.nul and "\x00" in value:
            raise Refused(reasons["nul"])
        if not self.control and has_control_characters(value):
            raise Refused(reasons["control"])
        return value.lower() if self.lower else value

    def type_schema(self) -> Schema:
        schema: Schema = {"type": "string"}
        white, control = character_classes()
        refused = control if not self.control else ("" if self.nul else r"\x00")
        if self.strip:
            schema["pattern"] = stripped_pattern(self.min_len, self.max_len or 10**9, refused)
            return schema
        if self.min_len:
            schema["minLength"] = self.min_len
        if self.max_len is not None:
            schema["maxLength"] = self.max_len
        any_char = f"[^{refused}]" if refused else r"[\s\S]"
        if not self.blank:
            schema["pattern"] = rf"^{any_char}*[^{white}{refused}]{any_char}*$"
        elif refused:
            schema["pattern"] = rf"^{any_char}*$"
        return schema



class Word(Text):
    """A string of min_len..max_len characters without white space, Cc control characters
    (all below U+0100; Cf ones, such as a zero width joiner, are taken) or any of the characters `refused`
    (reason key "word")."""

    def __init__(self, min_len: int = 1, max_len: int | None = None, *, refused: str = "",
                 **options: Any) -> None:
        self.refused = refused
        super().__init__(min_len, max_len, **options)

    def default_reasons(self) -> dict[str, str]:
        listed = "".join(f", '{ch}'" for ch in self.refused)
        return {**super().default_reasons(),
                "word": f"must not contain white space{listed} or control characters"}

    def check(self, value: Any) -> Any:
        value = super().check(value)
        if any(ch.isspace() or ch in self.refused or unicodedata.category(ch) == "Cc"
               for ch in value):
            raise Refused(self.reasons["word"])
        return value

    def type_schema(self) -> Schema:
        white, _ = character_classes()
        cc = char_class([code for code in range(0x100) if unicodedata.category(chr(code)) == "Cc"])
        refused = "".join(re.escape(ch) for ch in self.refused)
        most = "" if self.max_len is None else self.max_len
        return {"type": "string", "minLength": self.min_len,
                **({} if self.max_len is None else {"maxLength": self.max_len}),
                "pattern": rf"^[^{white}{cc}{refused}]{{{self.min_len},{most}}}$"}

def stripped_pattern(min_len: int, max_len: int, refused: str = "") -> str:
    """A pattern for a string of min_len..max_len characters once white space is
    stripped, none of them in the character class `refused`."""
    w, _ = character_classes()
    end = f"[^{w}{refused}]"
    middle = f"[^{refused}]" if refused else r"[\s\S]"
    if min_len <= 1:
        body = rf"{end}(?:{middle}{{0,{max_len - 2}}}{end})?"
    else:
        body = rf"{end}{middle}{{{min_len - 2},{max_len - 2}}}{end}"
    return rf"^[{w}]*{body}[{w}]*$"


# Deliberately loose: one @, something on both sides, a dot in the domain, no spaces.
EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


class Email(Text):
    """An email address of at most 254 characters once stripped, read lower-cased."""

    def __init__(self, **options: Any) -> None:
        super().__init__(1, 254, strip=True, lower=True, **options)

    def default_reasons(self) -> dict[str, str]:
        return {**super().default_reasons(), "email": "must be a valid email address"}

    def check(self, value: Any) -> Any:
        value = super().check(value)
        if not EMAIL.fullmatch(value) or "\x00" in value:
            raise Refused(self.reasons["email"])
        return value

    def type_schema(self) -> Schema:
        w, _ = character_classes()
        not_email = rf"@{w}\x00"
        return {
            "type": "string",
            "pattern": rf"^[{w}]*(?=[^{w}]{{1,254}}[{w}]*$)[^{not_email}]+@[^{not_email}]+"
            rf"\.[^{not_email}]+[{w}]*$",
        }


INTEGER_TEXT = re.compile(r"-?[0-9]{1,100}")  # int() would also take " 5", "5_0", "٥"


class Int(Field):
    """A JSON integer (not true or false) within [minimum, maximum] where given."""

    def __init__(self, minimum: int | None = None, maximum: int | None = None, **options: Any) -> None:
        self.minimum, self.maximum = minimum, maximum
        super().__init__(**options)

    def default_reasons(self) -> dict[str, str]:
        return {
            "type": "must be an integer",
            "range": f"must be between {self.minimum} and {self.maximum}",
        }

    def check(self, value: Any) -> Any:
        if not isinstance(value, int) or isinstance(value, bool):
            raise Refused(self.reasons["type"])
        if (self.minimum is not None and value < self.minimum) or (
            self.maximum is not None and value > self.maximum
        ):
            raise Refused(self.reasons["range"])
        return value

    def parse(self, text: str) -> Any:
        if not INTEGER_TEXT.fullmatch(text):
            raise Refused(self.reasons["type"])
        return self.check(int(text))

    def type_schema(self) -> Schema:
        schema: Schema = {"type": "integer"}
        if self.maximum is None or self.maximum > 2**31 - 1:
            schema["format"] = "int64"
        if self.minimum is not None:
            schema["minimum"] = self.minimum
        if self.maximum is not None:
            schema["maximum"] = self.maximum
        return schema


def Id(minimum: int = 1, **options: Any) -> Int:
    """A database id: minimum..2**63-1."""
    return Int(minimum, MAX_ID, **options)


class Ids(Field):
    """A list of at most `max_items` ids."""

    def __init__(self, max_items: int, **options: Any) -> None:
        self.max_items = max_items
        super().__init__(**options)

    def default_reasons(self) -> dict[str, str]:
        return {"type": f"must be a list of at most {self.max_items} ids"}

    def check(self, value: Any) -> Any:
        if not isinstance(value, list) or len(value) > self.max_items or not all(
            is_int(item) and 1 <= item <= MAX_ID for item in value
        ):
            raise Refused(self.reasons["type"])
        return value

    def type_schema(self) -> Schema:
        return {"type": "array", "items": Id().schema(), "maxItems": self.max_items}


class Choice(Field):
    """One of a few strings."""

    def __init__(self, values: tuple[str, ...] | list[str], **options: Any) -> None:
        self.values = tuple(values)
        super().__init__(**options)

    def default_reasons(self) -> dict[str, str]:
        words = [repr(value) for value in self.values]
        listed = ", ".join(words[:-1]) + " or " + words[-1] if len(words) > 1 else words[0]
        return {"type": f"must be {listed}"}

    def check(self, value: Any) -> Any:
        if not isinstance(value, str) or value not in self.values:
            raise Refused(self.reasons["type"])
        return value

    def type_schema(self) -> Schema:
        return {"type": "string", "enum": list(self.values)}


class Timestamp(Field):
    """A stored moment: RFC 3339, UTC, millisecond precision (a response field)."""

    def type_schema(self) -> Schema:
        return {"$ref": "#/components/schemas/Timestamp"}


class Nested(Field):
    """A shape inside a shape."""

    def __init__(self, shape: Shape, **options: Any) -> None:
        self.shape = shape
        super().__init__(**options)

    def check(self, value: Any) -> Any:
        if not isinstance(value, dict):
            raise Refused(self.reasons["type"])
        return self.shape.read(value)

    def type_schema(self) -> Schema:
        return self.shape.schema()


class Shape:
    """A named object of fields, in the order they are checked."""

    def __init__(
        self,
        name: str,
        fields: dict[str, Field],
        *,
        closed: bool = False,
        description: str | None = None,
    ) -> None:
        self.name = name
        self.fields = fields
        self.closed = closed
        self.description = description
        # What read() needs of each field, looked up once (it runs for every request).
        self._plan = [
            (name, field.check, field.default, field.null, field.reasons["required"])
            for name, field in fields.items()
        ]

    def read(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """The declared fields of a JSON object, checked; FieldError at the first refusal."""
        values = {}
        for name, check, default, null, required in self._plan:
            value = body.get(name, MISSING)
            if value is MISSING or (value is None and null):
                if default is MISSING:
                    raise FieldError(name, required)
                values[name] = default
                continue
            try:
                values[name] = check(value)
            except Refused as exc:
                raise FieldError(name, str(exc)) from None
        return values

    def read_query(self, params: Mapping[str, str]) -> dict[str, Any]:
        """The declared parameters from their text (a query string or a path's match)."""
        values = {}
        for name, field in self.fields.items():
            text = params.get(name)
            if text is None:
                if field.default is MISSING:
                    raise FieldError(name, "query parameter is required")
                values[name] = field.default
                continue
            try:
                values[name] = field.parse(text)
            except Refused as exc:
                raise FieldError(name, str(exc)) from None
        return values

    def dump(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """A response body: the required fields of `row` and the optional ones it has."""
        return {
            name: row[name] for name, field in self.fields.items() if field.required or name in row
        }

    def schema(self) -> Schema:
        """The OpenAPI 3.0 schema object of the shape."""
        schema: Schema = {
            "type": "object",
            "properties": {name: field.schema() for name, field in self.fields.items()},
        }
        required = [name for name, field in self.fields.items() if field.required]
        if required:
            schema["required"] = required
        if self.closed:
            schema["additionalProperties"] = False
        if self.description:
            schema["description"] = self.description
        return schema

    def parameters(self, where: str) -> list[Schema]:
        """The fields as OpenAPI parameter objects `in` "query" or "path"."""
        parameters = []
        for name, field in self.fields.items():
            schema = field.schema()
            parameter: Schema = {"name": name, "in": where}
            if field.required:
                parameter["required"] = True
            if "description" in schema:
                parameter["description"] = schema.pop("description")
            parameters.append({**parameter, "schema": schema})
        return parameters


class Either:
    """One of several shapes, picked by the value of the Choice field `key`."""

    def __init__(self, name: str, key: str, choice: Choice, shapes: dict[str, Shape]) -> None:
        self.name = name
        self.key = key
        self.choice = choice
        self.shapes = shapes
        self._key = Shape(name, {key: choice})

    def read(self, body: Mapping[str, Any]) -> dict[str, Any]:
        kind = self._key.read(body)[self.key]
        return {**self.shapes[kind].read(body), self.key: kind}

    def schema(self) -> Schema:
        branches = []
        for shape in dict.fromkeys(self.shapes.values()):
            values = [value for value, other in self.shapes.items() if other is shape]
            branch = shape.schema()
            key: Schema = {"type": "string", "enum": values}
            if self.choice.default in values:
                key["default"] = self.choice.default
            else:
                branch["required"] = [self.key, *branch.get("required", [])]
            branch["properties"] = {self.key: key, **branch["properties"]}
            branches.append(branch)
        return {"type": "object", "anyOf": branches}
