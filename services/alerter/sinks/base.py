"""What every sink shares: the delivery item, the error a sink raises, the interface."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from daemoneye import formats

from ..model import json_load


class Delivery:
    """One alert on its way to one sink: its store key, its JSON line and, read from
    that line only when a sink asks (stdout, syslog), its fields. Thousands can wait in
    a sink's queue, so an item holds the bytes, not the parsed dict as well."""

    __slots__ = ("_record", "alert_id", "attempts", "data", "key")

    def __init__(
        self,
        key: int,
        data: bytes,
        record: dict[str, Any] | None = None,
        attempts: int = 0,
        alert_id: str | None = None,
    ) -> None:
        self.key = key
        self.data = data  # the alert record as one JSON object (no newline)
        self.attempts = attempts
        self._record = record
        self.alert_id = alert_id if alert_id is not None else (record or {}).get("alertId")

    @property
    def record(self) -> dict[str, Any]:
        if self._record is None:
            self._record = json_load(self.data)
        return self._record


class SinkError(Exception):
    """A failed send. `done` items at the front of the batch did go out; `retryable`
    says whether trying again later can help (a 400 from a webhook cannot)."""

    def __init__(self, message: str, retryable: bool = True, done: int = 0) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.done = done


class Sink:
    """Sends batches of deliveries somewhere. Runs on its own worker thread."""

    kind = ""

    def __init__(self, config: Any, stop: threading.Event, data_dir: Path, hostname: str) -> None:
        self.config = config
        self.data_dir = data_dir
        self.hostname = hostname
        self.name: str = config.name
        self.stop = stop  # set on shutdown: waits inside a send end early
        # Set by the worker: a sink that learns its endpoint is back (a NATS reconnect)
        # calls it, so what waits goes now rather than at the next backoff.
        self.on_link_up: Callable[[], None] | None = None

    def body(self, item: Delivery) -> bytes:
        """The alert as this sink's `format` has it: our JSON (as stored) or the
        document of a schema (ocsf, ecs)."""
        fmt = getattr(self.config, "format", "json")
        return formats.encode_alert(fmt, item.record) if fmt in formats.SCHEMAS else item.data

    def send(self, batch: list[Delivery]) -> None:
        """Deliver every item in order or raise SinkError saying how many went out."""
        raise NotImplementedError

    def flush(self) -> None:
        """Called when the worker is idle (e.g. a pending fsync)."""

    def flush_in_s(self) -> float | None:
        """Seconds until `flush` has work (None: it has none): how long an idle worker
        may sleep before calling it again."""
        return None

    def already_sent(self, batch: list[Delivery]) -> set[int]:
        """Keys of `batch` this sink can tell it already holds: sent by an earlier run
        that died before it recorded the confirmation. None by default (a remote sink
        cannot be asked); a local file can."""
        return set()

    def close(self) -> None:
        """Release files and sockets; the worker calls it once on the way out."""

    def metrics(self) -> dict[str, float]:
        return {}
