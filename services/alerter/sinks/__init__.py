"""One module per sink kind; `build_sink` picks the class from the config's `kind`."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from .base import Delivery, Sink, SinkError
from .file import FileSink
from .nats import NatsSink
from .stdout import StdoutSink
from .syslog import SyslogSink
from .webhook import WebhookSink

KINDS: dict[str, type[Sink]] = {
    "stdout": StdoutSink,
    "file": FileSink,
    "syslog": SyslogSink,
    "webhook": WebhookSink,
    "nats": NatsSink,
}

__all__ = ["KINDS", "Delivery", "Sink", "SinkError", "build_sink"]


def build_sink(config: Any, stop: threading.Event, data_dir: Path, hostname: str) -> Sink:
    cls = KINDS[config.kind]
    return cls(config, stop, data_dir, hostname)
