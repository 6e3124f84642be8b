"""Syslog sink: RFC 5424 messages over a unix socket, UDP, or TCP with octet-counted
framing (RFC 6587 section 3.4.1)."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from typing import Any

from daemoneye import formats
from daemoneye.settings.alerter import facility_code

from .base import Delivery, Sink, SinkError
from .stdout import iso_time

# RFC 5424 severities: our critical is "critical" (2), high "error" (3), ...
SYSLOG_SEVERITY = {"critical": 2, "high": 3, "medium": 4, "low": 5, "info": 6}
SD_ID = "daemoneye@32473"  # 32473: the example enterprise number of RFC 5612
BOM = b"\xef\xbb\xbf"


def _header_field(value: str, limit: int) -> str:
    """A header field: printable US-ASCII without spaces, '-' when empty (NILVALUE)."""
    clean = "".join(c for c in value if "!" <= c <= "~")[:limit]
    return clean or "-"


def _sd_value(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def format_rfc5424(
    record: dict[str, Any],
    facility: int,
    app_name: str,
    hostname: str,
    procid: int,
    document: bytes | None = None,
) -> bytes:
    """One RFC 5424 message; its MSG is `title: description`, or `document` (an OCSF or
    ECS JSON document) when given."""
    severity = SYSLOG_SEVERITY.get(record.get("severity", "info"), 6)
    proc = record.get("process") or {}
    params = {
        "key": record.get("key", ""),
        "alertId": record.get("alertId", ""),
        "ruleId": record.get("ruleId", ""),
        "severity": record.get("severity", ""),
        "count": record.get("count", 1),
        "pid": proc.get("pid", ""),
        "exe": proc.get("exePath", ""),
        "user": proc.get("username", ""),
    }
    sd = "[" + SD_ID + "".join(f' {k}="{_sd_value(v)}"' for k, v in params.items()) + "]"
    header = " ".join(
        (
            f"<{facility * 8 + severity}>1",
            iso_time(record.get("timeNs") or record.get("receivedNs", 0)),
            _header_field(hostname, 255),
            _header_field(app_name, 48),
            _header_field(str(procid), 128),
            _header_field(record.get("type", "alert"), 32),
            sd,
        )
    )
    if document is not None:
        return header.encode() + b" " + BOM + document
    text = record.get("title") or record.get("ruleName") or "alert"
    if record.get("description"):
        text = f"{text}: {record['description']}"
    text = text.replace("\n", " ")
    return header.encode() + b" " + BOM + text.encode("utf-8", "replace")


class SyslogSink(Sink):
    kind = "syslog"

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.facility = facility_code(self.config.facility)
        self.host = self.config.hostname or self.hostname
        self._sock: socket.socket | None = None
        self._framed = False  # stream sockets need octet counting
        self.sent = 0

    def _connect(self) -> socket.socket:
        if self._sock is not None:
            return self._sock
        cfg = self.config
        try:
            if cfg.transport == "unix":
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                try:
                    sock.connect(cfg.address)
                    self._framed = False
                except OSError as exc:
                    sock.close()
                    if exc.errno != errno.EPROTOTYPE:
                        raise
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    sock.settimeout(cfg.timeout_s)
                    sock.connect(cfg.address)
                    self._framed = True
            else:
                host, _, port = cfg.address.rpartition(":")
                host = host.strip("[]")
                kind = socket.SOCK_DGRAM if cfg.transport == "udp" else socket.SOCK_STREAM
                family, _, _, _, addr = socket.getaddrinfo(host, int(port), type=kind)[0]
                sock = socket.socket(family, kind)
                sock.settimeout(cfg.timeout_s)
                sock.connect(addr)
                self._framed = cfg.transport == "tcp"
        except OSError as exc:
            raise SinkError(
                f"cannot reach syslog {cfg.transport}:{cfg.address}: {exc.strerror or exc}"
            ) from None
        self._sock = sock
        return sock

    def frame(self, record: dict[str, Any]) -> bytes:
        fmt = self.config.format
        msg = format_rfc5424(
            record, self.facility, self.config.app_name, self.host, os.getpid(),
            formats.encode_alert(fmt, record) if fmt in formats.SCHEMAS else None,
        )  # fmt: skip
        if not self._framed:
            return msg[: self.config.max_message_bytes]  # a datagram is one message
        return str(len(msg)).encode() + b" " + msg

    def _peer_closed(self) -> bool:
        """A syslog server never writes to us: a readable stream socket means it hung up.
        Sending into a half-closed connection "succeeds" and the message is lost, so
        check before each batch (covers servers that restarted or timed us out)."""
        if self._sock is None or not self._framed:
            return False
        try:
            return self._sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    def send(self, batch: list[Delivery]) -> None:
        if self._peer_closed():
            self.close()
        for done, item in enumerate(batch):
            try:
                sock = self._connect()
                sock.sendall(self.frame(item.record))
            except SinkError as exc:
                exc.done = done
                raise
            except OSError as exc:
                self.close()  # a broken stream reconnects on the next try
                raise SinkError(
                    f"syslog {self.config.transport}:{self.config.address}: {exc.strerror or exc}",
                    done=done,
                ) from None
            self.sent += 1

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    def metrics(self) -> dict[str, float]:
        return {"sent": self.sent}
