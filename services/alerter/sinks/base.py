"""What every sink shares: the delivery item, the error a sink raises, the interface."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(slots=True)
class Delivery:
    """One alert on its way to one sink: its store key, its JSON line and its fields."""

    key: int
    data: bytes  # the alert record as one JSON object (no newline)
    record: dict[str, Any]
    attempts: int = 0


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

    def send(self, batch: list[Delivery]) -> None:
        """Deliver every item in order or raise SinkError saying how many went out."""
        raise NotImplementedError

    def flush(self) -> None:
        """Called when the worker is idle (e.g. a pending fsync)."""

    def already_sent(self, batch: list[Delivery]) -> set[int]:
        """Keys of `batch` this sink can tell it already holds: sent by an earlier run
        that died before it recorded the confirmation. None by default (a remote sink
        cannot be asked); a local file can."""
        return set()

    def close(self) -> None:
        """Release files and sockets; the worker calls it once on the way out."""

    def metrics(self) -> dict[str, float]:
        return {}
