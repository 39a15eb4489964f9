"""The agent protocol of docs/agent-protocol.md: length-prefixed msgpack frames and the schema of every message."""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgpack

from crypto import wgkeys

VERSION = 1
MAX_FRAME = 262144
MAX_LIST_ITEMS = 4096
HEADER = struct.Struct(">I")
PSK_LEN = 32

# ProtocolError codes; an `error` message carries the same code.
CODE_FRAME = "frame"  # length header out of range, or a message too large to send
CODE_DECODE = "decode"  # the frame body is not one msgpack value
CODE_VERSION = "version"
CODE_TYPE = "type"
CODE_SCHEMA = "schema"

# Decoder limits: nothing in a frame may claim more than the frame could hold.
UNPACK_OPTIONS: dict[str, Any] = {
    "raw": False,
    "strict_map_key": True,
    "use_list": True,
    "max_str_len": MAX_FRAME,
    "max_bin_len": MAX_FRAME,
    "max_array_len": MAX_FRAME,
    "max_map_len": MAX_FRAME // 2,
    "max_ext_len": MAX_FRAME,
}

_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1  # what msgpack can carry
_SHOWABLE_TYPE = re.compile(r"^[a-z_]{1,32}$")


class ProtocolError(Exception):
    """A frame or message that breaks the protocol. `code` goes into the `error` reply; the message
    names the field at fault and never holds a value from the frame."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"ProtocolError({self.code!r}, {self.message!r})"


def _schema_error(path: str, problem: str) -> ProtocolError:
    return ProtocolError(CODE_SCHEMA, f"{path}: {problem}")


# --- field types -------------------------------------------------------------------------------
# Each type checks a value at a path and returns it normalised (floats as float, tuples as lists,
# maps reduced to their known fields).


@dataclass(frozen=True)
class Str:
    def check(self, value: Any, path: str) -> str:
        if not isinstance(value, str):
            raise _schema_error(path, "expected str")
        return value


@dataclass(frozen=True)
class WgKey:
    """A str holding the base64 form of a 32-byte WireGuard public key."""

    def check(self, value: Any, path: str) -> str:
        if not isinstance(value, str):
            raise _schema_error(path, "expected str")
        try:
            wgkeys.decode(value)
        except wgkeys.KeyFormatError:
            raise _schema_error(path, "expected a base64 WireGuard key of 32 bytes") from None
        return value


@dataclass(frozen=True)
class Bytes:
    length: int | None = None

    def check(self, value: Any, path: str) -> bytes:
        if not isinstance(value, bytes):
            raise _schema_error(path, "expected bytes")
        if self.length is not None and len(value) != self.length:
            raise _schema_error(path, f"expected exactly {self.length} bytes")
        return value


@dataclass(frozen=True)
class Int:
    minimum: int = _INT_MIN

    def check(self, value: Any, path: str) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise _schema_error(path, "expected int")
        if not self.minimum <= value <= _INT_MAX:
            raise _schema_error(path, f"expected int from {self.minimum} to {_INT_MAX}")
        return value


@dataclass(frozen=True)
class Float:
    def check(self, value: Any, path: str) -> float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise _schema_error(path, "expected float")
        if isinstance(value, int) and not _INT_MIN <= value <= _INT_MAX:
            raise _schema_error(path, "expected float")
        if not math.isfinite(value):
            raise _schema_error(path, "expected a finite float")
        return float(value)


@dataclass(frozen=True)
class Bool:
    def check(self, value: Any, path: str) -> bool:
        if not isinstance(value, bool):
            raise _schema_error(path, "expected bool")
        return value


@dataclass(frozen=True)
class StrMap:
    """A map of str to str (free-form keys, such as OVS external_ids)."""

    def check(self, value: Any, path: str) -> dict[str, str]:
        if not isinstance(value, Mapping):
            raise _schema_error(path, "expected map")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise _schema_error(path, "expected a map of str to str")
        return dict(value)


@dataclass(frozen=True)
class ListOf:
    item: FieldType
    max_items: int = MAX_LIST_ITEMS

    def check(self, value: Any, path: str) -> list:
        if not isinstance(value, list | tuple):
            raise _schema_error(path, "expected list")
        if len(value) > self.max_items:
            raise _schema_error(path, f"expected at most {self.max_items} items")
        return [self.item.check(item, f"{path}[{i}]") for i, item in enumerate(value)]


@dataclass(frozen=True)
class Record:
    """A map of named fields. Keys not listed are dropped (a newer peer may add some)."""

    fields: tuple[tuple[str, FieldType], ...]
    optional: frozenset[str] = frozenset()

    def check(self, value: Any, path: str) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise _schema_error(path, "expected map")
        result: dict[str, Any] = {}
        for name, field_type in self.fields:
            if name not in value:
                if name in self.optional:
                    continue
                raise _schema_error(f"{path}.{name}", "missing")
            result[name] = field_type.check(value[name], f"{path}.{name}")
        return result


FieldType = Str | WgKey | Bytes | Int | Float | Bool | StrMap | ListOf | Record


def record(*fields: tuple[str, FieldType], optional: frozenset[str] = frozenset()) -> Record:
    return Record(tuple(fields), optional)


# --- the schema ---------------------------------------------------------------------------------

STR, WG_KEY, INT, FLOAT, BOOL = Str(), WgKey(), Int(), Float(), Bool()

AGENT_MESSAGES: dict[str, Record] = {
    "enroll": record(("token", STR), ("hypervisor", STR), ("csr", STR)),
    "hello": record(
        ("hypervisor", STR),
        ("software", STR),
        ("wg_public_key", WG_KEY),
        ("listen_port", INT),
        ("bridge", STR),
        ("underlay", record(("ip", STR), ("mac", STR), ("port", STR))),
    ),
    "report": record(
        ("interfaces", ListOf(record(("name", STR), ("external_ids", StrMap())))),
        (
            "tunnels",
            ListOf(
                record(
                    ("peer", STR),
                    ("port", STR),
                    ("configured", BOOL),
                    ("latest_handshake", FLOAT),
                    ("rx_bytes", INT),
                    ("tx_bytes", INT),
                    ("drops", INT),
                )
            ),
        ),
        ("wg_running", BOOL),
    ),
    "applied": record(("seq", INT), ("ok", BOOL), ("error", STR), optional=frozenset({"error"})),
    "identity": record(("rotation", STR), ("public_key", WG_KEY)),
    "identity_switched": record(("rotation", STR)),
}

CONTROLLER_MESSAGES: dict[str, Record] = {
    "enrolled": record(("certificate", STR), ("ca", STR)),
    "welcome": record(("index", Int(minimum=1)), ("address", STR), ("report_interval", FLOAT)),
    "config": record(
        ("seq", INT),
        (
            "peers",
            ListOf(
                record(
                    ("peer", STR),
                    ("public_key", WG_KEY),
                    ("psk", Bytes(PSK_LEN)),
                    ("endpoint", STR),
                    ("tunnel_ip", STR),
                    ("vni", INT),
                    ("port", STR),
                )
            ),
        ),
    ),
    "rotate_identity": record(("rotation", STR)),
    "switch_identity": record(("rotation", STR)),
    "error": record(("code", STR), ("message", STR)),
}

SCHEMA: dict[str, Record] = {**AGENT_MESSAGES, **CONTROLLER_MESSAGES}


def validate(message: Any, accept: frozenset[str] | None = None) -> dict[str, Any]:
    """The message checked against the schema and normalised (known fields only, floats as float).

    `accept` limits the types allowed (say, to those an agent may send); others are code "type".
    """
    if not isinstance(message, Mapping):
        raise ProtocolError(CODE_SCHEMA, "message: expected map")
    if "v" not in message:
        raise ProtocolError(CODE_SCHEMA, "message.v: missing")
    version = message["v"]
    if not isinstance(version, int) or isinstance(version, bool):
        raise ProtocolError(CODE_SCHEMA, "message.v: expected int")
    if version != VERSION:
        shown = version if abs(version) < 2**31 else "?"
        raise ProtocolError(CODE_VERSION, f"protocol version {shown} is not supported (this side speaks {VERSION})")
    if "type" not in message:
        raise ProtocolError(CODE_SCHEMA, "message.type: missing")
    message_type = message["type"]
    if not isinstance(message_type, str):
        raise ProtocolError(CODE_SCHEMA, "message.type: expected str")
    schema = SCHEMA.get(message_type)
    if schema is None or (accept is not None and message_type not in accept):
        # The type names itself only when it looks like one: a value from the frame is never echoed.
        shown = repr(message_type) if _SHOWABLE_TYPE.fullmatch(message_type) else "(unprintable)"
        raise ProtocolError(CODE_TYPE, f"message type {shown} is unknown or not accepted here")
    body = schema.check(message, message_type)
    return {"v": VERSION, "type": message_type, **body}


def encode(message: Mapping[str, Any]) -> bytes:
    """One frame holding `message` (with "v" added if missing), after checking it against the schema."""
    if not isinstance(message, Mapping):
        raise ProtocolError(CODE_SCHEMA, "message: expected map")
    checked = validate({"v": VERSION, **message})
    try:
        body = msgpack.packb(checked, use_bin_type=True)
    except (ValueError, TypeError, OverflowError):
        raise ProtocolError(CODE_SCHEMA, f"{checked['type']}: cannot be encoded as msgpack") from None
    if len(body) > MAX_FRAME:
        raise ProtocolError(CODE_FRAME, f"{checked['type']}: encodes to {len(body)} bytes, over the {MAX_FRAME}-byte limit")
    return HEADER.pack(len(body)) + body


def decode_body(body: bytes) -> Any:
    """The one msgpack value in a frame body, decoded with the limits above."""
    try:
        return msgpack.unpackb(body, **UNPACK_OPTIONS)
    except (ValueError, msgpack.UnpackException):  # ExtraData, FormatError, StackError, bad UTF-8, bad map keys
        raise ProtocolError(CODE_DECODE, "frame is not one msgpack value within the decoder limits") from None


class FrameReader:
    """Splits a byte stream into validated messages.

    After the first bad frame the reader is finished: every later feed raises the same error,
    since the connection is to be closed. Messages earlier in the failing feed are dropped.
    """

    def __init__(self, accept: frozenset[str] | None = None) -> None:
        self._buffer = bytearray()
        self._accept = accept
        self._failure: ProtocolError | None = None

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        if self._failure is not None:
            raise self._failure
        self._buffer += data
        try:
            return self._drain()
        except ProtocolError as exc:
            self._failure = exc
            self._buffer.clear()
            raise

    def _drain(self) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = []
        offset = 0
        buffer = self._buffer
        while len(buffer) - offset >= HEADER.size:
            (length,) = HEADER.unpack_from(buffer, offset)
            # Refused from the header alone: the body of an oversize frame is never waited for.
            if not 1 <= length <= MAX_FRAME:
                raise ProtocolError(CODE_FRAME, f"frame length {length} is outside 1..{MAX_FRAME}")
            end = offset + HEADER.size + length
            if len(buffer) < end:
                break
            body = bytes(buffer[offset + HEADER.size : end])
            offset = end
            messages.append(validate(decode_body(body), self._accept))
        del buffer[:offset]
        return messages

    @property
    def pending(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return len(self._buffer)
