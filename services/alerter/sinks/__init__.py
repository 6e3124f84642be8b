"""One module per sink kind; `build_sink` picks the class from the config's `kind`.

The `nats` sink is imported only when one is configured: nats-py costs ~14 MB of
memory and a second of start-up that an alerter without it should not pay."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from .base import Delivery, Sink, SinkError
from .file import FileSink
from .stdout import StdoutSink
from .syslog import SyslogSink
from .webhook import WebhookSink

KINDS: dict[str, type[Sink]] = {
    "stdout": StdoutSink,
    "file": FileSink,
    "syslog": SyslogSink,
    "webhook": WebhookSink,
}

__all__ = ["KINDS", "Delivery", "Sink", "SinkError", "build_sink", "sink_class"]


def sink_class(kind: str) -> type[Sink]:
    if kind == "nats":
        from .nats import NatsSink

        return NatsSink
    return KINDS[kind]


def build_sink(config: Any, stop: threading.Event, data_dir: Path, hostname: str) -> Sink:
    return sink_class(config.kind)(config, stop, data_dir, hostname)
