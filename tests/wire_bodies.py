"""Process event bodies from the schema, for the tests of the compiled wire code:
well-formed ones, and ones with hostile values (test_wirepack_native, test_wireread)."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from daemoneye import wire, wirepack


class Text(str):
    """A str subclass with its own encode(): the Python writer writes what that gives,
    so the compiled one, which reads a str's own UTF-8, must refuse it."""

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return b"<" + super().encode(encoding, errors) + b">"


_RANGES = {
    "int8": 8, "int16": 16, "int32": 32, "int64": 64,
    "uint8": -8, "uint16": -16, "uint32": -32, "uint64": -64,
}  # fmt: skip
HOSTILE = st.one_of(
    st.none(),
    st.integers(-(1 << 70), 1 << 70),
    st.sampled_from([-1, 0, 1 << 64, -(1 << 63) - 1, 255, 256, 65536]),
    st.booleans(),
    st.floats(),
    st.text(max_size=4),
    st.sampled_from(["\udcff", "a\ud800", "\x00", "é" * 9]),
    st.builds(Text, st.text(max_size=3)),
    st.lists(st.text(max_size=3), max_size=2),
    st.tuples(st.text(max_size=2)),
    st.lists(st.dictionaries(st.sampled_from(["name", "value", "x"]), st.text(max_size=2))),
    st.dictionaries(st.sampled_from(["pid", "name", "x"]), st.integers(0, 9), max_size=2),
    st.just(b"bytes"),
)


def _good(slot_type: Any, schema: Any, depth: int) -> st.SearchStrategy[Any]:
    kind = slot_type.which()
    if kind in _RANGES:
        bits = _RANGES[kind]
        if bits > 0:
            return st.integers(-(1 << (bits - 1)), (1 << (bits - 1)) - 1)
        return st.integers(0, (1 << -bits) - 1)
    if kind == "bool":
        return st.booleans()
    if kind == "float32":
        return st.floats(width=32, allow_nan=False)
    if kind == "float64":
        return st.floats(allow_nan=False) | st.integers(-(1 << 53), 1 << 53)
    if kind == "text":
        return st.text(max_size=12) | st.sampled_from(["", "x" * 7, "y" * 8, "ä€😀"])
    if kind == "enum":
        return st.sampled_from(sorted(schema.enumerants))
    if kind == "struct":
        return struct_bodies(schema, depth + 1, hostile=False) if depth < 3 else st.just({})
    if kind == "list":
        element = slot_type.list.elementType.which()
        if element == "text":
            items = st.lists(st.text(max_size=6), max_size=5)
            return items | items.map(tuple)
        if element == "struct" and depth < 3:
            return st.lists(struct_bodies(schema.elementType, depth + 1, hostile=False), max_size=3)
        return st.just([])
    return st.just(None)


def struct_bodies(schema: Any, depth: int = 0, hostile: bool = True) -> st.SearchStrategy[dict]:
    fields = schema.fields
    names = sorted(fields) + (["nosuch"] if hostile else [])

    def value(name: str) -> st.SearchStrategy[Any]:
        if name not in fields:
            return HOSTILE
        field = fields[name]
        slot_type = field.proto.slot.type
        kind = slot_type.which()
        sub = field.schema if kind in ("struct", "enum", "list") else None
        good = _good(slot_type, sub, depth) if kind != "struct" or depth < 3 else st.just({})
        if kind == "struct" and depth < 3:
            good = struct_bodies(field.schema, depth + 1, hostile)
        return st.one_of(good, good, good, HOSTILE) if hostile else good

    keys = st.lists(st.sampled_from(names), unique=True, max_size=len(names))
    return keys.flatmap(lambda ks: st.fixed_dictionaries({k: value(k) for k in ks}))


EVENT = wire.ProcessEvent.schema
WELL_FORMED = struct_bodies(EVENT, hostile=False)
HOSTILE_EVENTS = struct_bodies(EVENT, hostile=True)
FULL_EVENT = {
    "kind": "start",
    "source": "netlink",
    "timeNs": 1_700_000_000_123_456_789,
    "record": {
        "pid": 4242, "ppid": 1, "startTicks": 123456, "startTime": 1.7e9, "name": "true",
        "exePath": "/var/lib/x/true", "cmdline": ["true", "-x", "ü"], "cwd": "/", "root": "/",
        "uid": 0, "gid": 0, "euid": 0, "egid": 0, "suid": 0, "sgid": 0, "loginUid": 4294967295,
        "username": "root", "state": "R", "threads": 1, "nice": -10, "pgroup": 4242,
        "sessionId": 4242, "userTimeMs": 0, "systemTimeMs": 0, "residentBytes": 1 << 20,
        "virtualBytes": 1 << 30, "diskReadBytes": 0, "diskWriteBytes": 0, "sha256": "ab" * 32,
        "exeDeleted": False, "onDisk": 1, "exeDevice": 2049, "exeInode": 77, "exeSize": 39256,
        "exeMtimeNs": -1, "exeChangedAfterExec": False, "cgroupPath": "/user.slice",
        "containerId": "", "pidNamespace": 4026531836, "accessible": True, "tty": "pts/0",
        "env": [{"name": "LD_PRELOAD", "value": "/tmp/x.so"}],
    },
    "changedFields": [],
    "reason": "",
    "severity": "info",
    "runtimeNs": 0,
    "exitCode": 0,
    "hostname": "host",
}  # fmt: skip


def forget_key_orders() -> None:
    """Room for an example's key orders: wirepack keeps MAX_KEY_ORDERS per struct."""
    for packer in wirepack._structs.values():
        packer.forget_orders()


ALERT = wire.Alert.schema
WELL_FORMED_ALERTS = struct_bodies(ALERT, hostile=False)
HOSTILE_ALERTS = struct_bodies(ALERT, hostile=True)
FULL_ALERT = {
    "alertId": "ab" * 16,
    "ruleId": "de-test",
    "ruleName": "a test rule",
    "severity": "high",
    "title": "a test rule: /var/lib/x/true (pid 4242)",
    "description": "fires in tests",
    "rowJson": '{"pid": 4242}',
    "dedupKey": "de-test|4242",
    "firstSeenNs": 1_700_000_000_123_456_789,
    "lastSeenNs": 1_700_000_000_123_456_789,
    "count": 1,
    "tags": ["attack.execution", "ü"],
    "timeNs": 1_700_000_000_123_456_789,
    "hostname": "host",
    "process": FULL_EVENT["record"],
    "ancestry": [
        {
            "pid": 4241 - n, "ppid": 4240 - n, "startTicks": 100 + n, "startTime": 1.7e9,
            "name": "sh", "exePath": "/bin/sh", "cmdline": ["sh", "-c", "x" * n],
            "uid": 0, "username": "root", "sessionId": 7, "exited": n % 2 == 1,
            "source": ("live", "exited", "history")[n % 3],
        }
        for n in range(8)
    ]
    + [{"pid": 1, "name": "", "exited": True, "source": "unknown"}],
}  # fmt: skip
