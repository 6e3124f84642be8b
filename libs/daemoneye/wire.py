"""The only code that touches Cap'n Proto bytes.

Services build and read messages through this module: `encode_envelope` turns a
header and a body dict into bytes, `decode_envelope` turns untrusted bytes into a
reader or raises `DecodeError`. Readers returned by `decode_envelope` keep their
bytes alive, so they are safe to hold after the call.
"""

from __future__ import annotations

import json
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import capnp

from daemoneye.wirecheck import StructureError, check_message

SCHEMA_FILE = "daemoneye.capnp"
TRAVERSAL_LIMIT_WORDS = 1 << 26  # what pycapnp may read in total, summed over every pass
CHECK_LIMIT_WORDS = TRAVERSAL_LIMIT_WORDS // 16  # what one message may hold: room for 16 passes
NESTING_LIMIT = 16  # our deepest message nests 4 levels
MAX_SEGMENTS = 64
SEVERITIES = ("info", "low", "medium", "high", "critical")

capnp.remove_import_hook()


def schema_dir() -> Path:
    """Where the .capnp files are: inside an installed wheel, or the repo's schemas/."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "schemas", here.parents[1] / "schemas"):
        if (candidate / SCHEMA_FILE).is_file():
            return candidate
    raise FileNotFoundError(f"{SCHEMA_FILE} not found beside {here}")


_schema = capnp.load(str(schema_dir() / SCHEMA_FILE))
Envelope = _schema.Envelope
ProcessRecord = _schema.ProcessRecord
ProcessEvent = _schema.ProcessEvent
SCHEMA_VERSION: int = _schema.schemaVersion
BODY_KINDS: tuple[str, ...] = tuple(Envelope.new_message().body.schema.union_fields)


class DecodeError(ValueError):
    """Untrusted bytes that are not a valid envelope: why, and how many bytes."""

    def __init__(self, reason: str, size: int) -> None:
        super().__init__(f"{reason} ({size} bytes)")
        self.reason = reason
        self.size = size


@dataclass(frozen=True, slots=True)
class Header:
    source_id: str
    boot_id: str
    seq: int
    sent_ns: int


def encode_envelope(header: Header, body_kind: str, body: dict[str, Any] | None = None) -> bytes:
    """Build one Envelope. `body` is a dict of the body's fields (None for `empty`)."""
    if body_kind not in BODY_KINDS:
        raise ValueError(f"unknown envelope body {body_kind!r}")
    msg = Envelope.new_message()
    msg.schemaVersion = SCHEMA_VERSION
    msg.sourceId = header.source_id
    msg.bootId = header.boot_id
    msg.seq = header.seq
    msg.sentNs = header.sent_ns
    if body_kind == "empty":
        msg.body.empty = None
    elif body is None:
        raise ValueError(f"envelope body {body_kind!r} needs a value")
    else:
        _fill(msg.body.init(body_kind), body)
    return msg.to_bytes()


def _fill(builder: Any, values: dict[str, Any]) -> None:
    """Set fields one by one: several times faster in pycapnp than its dict conversion."""
    for key, value in values.items():
        if isinstance(value, dict):
            _fill(builder.init(key), value)
        elif isinstance(value, list | tuple):
            items = builder.init(key, len(value))
            if value and isinstance(value[0], dict):
                for i, item in enumerate(value):
                    _fill(items[i], item)
            else:
                for i, item in enumerate(value):
                    items[i] = item
        else:
            setattr(builder, key, value)


def split_segments(data: bytes | memoryview) -> list[memoryview]:
    """Check the segment table of an unpacked message and return its segments.

    Cheap enough for the broker to run on every frame: it reads only the header.
    """
    view = memoryview(data)
    size = len(view)
    if size < 8 or size % 8:
        raise DecodeError("not a Cap'n Proto message: length is not a positive multiple of 8", size)
    (count_minus_one,) = struct.unpack_from("<I", view, 0)
    count = count_minus_one + 1
    if count > MAX_SEGMENTS:
        raise DecodeError(f"too many segments ({count} > {MAX_SEGMENTS})", size)
    header_words = (count + 2) // 2  # 4-byte count + 4 bytes per size, padded to 8
    if size < header_words * 8:
        raise DecodeError("truncated segment table", size)
    sizes = struct.unpack_from(f"<{count}I", view, 4)
    if header_words * 8 + sum(sizes) * 8 != size:
        raise DecodeError("segment table does not match the message length", size)
    segments = []
    offset = header_words * 8
    for words in sizes:
        segments.append(view[offset : offset + words * 8])
        offset += words * 8
    return segments


def decode_envelope(data: bytes | memoryview) -> Any:
    """Decode untrusted bytes into an Envelope reader.

    The structure of the whole message is validated (see wirecheck) and the header is
    read, so a returned reader can be copied and measured safely. A body field of the
    wrong type or with invalid UTF-8 still raises on access: readers of a body catch
    that as a malformed message (Subscriber does for the services).
    """
    segments = [bytes(s) for s in split_segments(data)]
    size = len(data)
    try:
        check_message(segments, CHECK_LIMIT_WORDS, NESTING_LIMIT)
    except StructureError as exc:
        raise DecodeError(f"malformed message: {exc}", size) from None
    try:
        reader = Envelope.from_segments(
            segments, traversal_limit_in_words=TRAVERSAL_LIMIT_WORDS, nesting_limit=NESTING_LIMIT
        )
        kind = reader.body.which()
        _ = (reader.sourceId, reader.bootId)  # header texts must be valid UTF-8
    except capnp.KjException as exc:
        raise DecodeError(f"malformed message: {_kj_reason(exc)}", size) from None
    except Exception as exc:  # pycapnp raises assorted types for hostile input
        raise DecodeError(f"malformed message: {type(exc).__name__}: {exc}", size) from None
    if reader.schemaVersion != SCHEMA_VERSION:
        raise DecodeError(
            f"schema version {reader.schemaVersion} is not the supported {SCHEMA_VERSION}", size
        )
    if kind not in BODY_KINDS:
        raise DecodeError(f"unknown body kind {kind!r}", size)
    return reader


def _kj_reason(exc: Exception) -> str:
    text = str(exc)
    return text.split("failed: ", 1)[-1].splitlines()[0][:200]


def body_kind(reader: Any) -> str:
    return str(reader.body.which())


def body_of(reader: Any) -> Any:
    return getattr(reader.body, str(reader.body.which()))


def to_dict(reader: Any) -> dict[str, Any]:
    """A JSON-ready dict of a decoded message; Data fields become hex strings.

    Raises DecodeError when a field of the (structurally valid) message is malformed.
    """
    try:
        return _jsonable(reader.to_dict())
    except Exception as exc:  # a wrong-typed pointer, a bad enum, invalid UTF-8
        raise DecodeError(f"malformed field: {type(exc).__name__}: {exc}", 0) from None


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    return value


def now_ns() -> int:
    return time.time_ns()


# --- RPC bodies -------------------------------------------------------------


def rpc_request(
    request_id: int,
    target: str,
    verb: str,
    params: dict[str, Any] | None,
    deadline_ns: int,
    payload: bytes = b"",
    payloads: list[bytes] | None = None,
) -> dict[str, Any]:
    return {
        "requestId": request_id,
        "target": target,
        "verb": verb,
        "deadlineNs": deadline_ns,
        "paramsJson": json.dumps(params or {}),
        "payload": payload,
        "payloads": payloads or [],
    }


def rpc_reply(
    request_id: int,
    *,
    result: Any = None,
    error: str = "",
    error_code: str = "",
    payloads: list[bytes] | None = None,
) -> dict[str, Any]:
    return {
        "requestId": request_id,
        "ok": not error_code,
        "errorCode": error_code,
        "error": error,
        "resultJson": json.dumps(result) if result is not None else "",
        "payloads": payloads or [],
    }


def rpc_params(request: Any) -> dict[str, Any]:
    """The params of a decoded RpcRequest; a bad JSON text raises DecodeError."""
    text = request.paramsJson
    if not text:
        return {}
    try:
        params = json.loads(text)
    except ValueError as exc:
        raise DecodeError(f"RPC params are not JSON: {exc}", len(text)) from None
    if not isinstance(params, dict):
        raise DecodeError("RPC params must be a JSON object", len(text))
    return params


def rpc_result(reply: Any) -> Any:
    text = reply.resultJson
    return json.loads(text) if text else None
