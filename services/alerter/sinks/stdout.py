"""Stdout sink: JSON lines, one human line per alert (Rich), or CSV."""

from __future__ import annotations

import csv
import io
import sys
import time
from typing import Any

from .base import Delivery, Sink, SinkError

CSV_COLUMNS = (
    "time",
    "severity",
    "rule_id",
    "title",
    "count",
    "pid",
    "name",
    "exe",
    "cmdline",
    "user",
    "host",
    "key",
)
SEVERITY_STYLE = {
    "critical": "bold white on red",
    "high": "bold red",
    "medium": "yellow",
    "low": "cyan",
    "info": "dim",
}


def csv_row(record: dict[str, Any]) -> list[str]:
    proc = record.get("process") or {}
    return [
        iso_time(record.get("timeNs", 0)),
        record.get("severity", ""),
        record.get("ruleId", ""),
        record.get("title", ""),
        str(record.get("count", 1)),
        str(proc.get("pid", "")),
        proc.get("name", ""),
        proc.get("exePath", ""),
        " ".join(proc.get("cmdline") or []),
        proc.get("username", ""),
        record.get("hostname", ""),
        str(record.get("key", "")),
    ]


def iso_time(time_ns: int) -> str:
    seconds, ns = divmod(int(time_ns), 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{ns // 1000:06d}Z"


def human_line(record: dict[str, Any]) -> str:
    from rich.markup import escape  # here: Rich only in an alerter with a human stdout sink

    proc = record.get("process") or {}
    severity = record.get("severity", "info")
    count = record.get("count", 1)
    repeats = f" [dim](x{count})[/dim]" if count and count > 1 else ""
    return (
        f"[dim]{iso_time(record.get('timeNs', 0))}[/dim] "
        f"[{SEVERITY_STYLE.get(severity, '')}]{severity.upper():8}[/] "
        f"[bold]{escape(record.get('title') or record.get('ruleName', ''))}[/bold]{repeats} "
        f"rule={escape(record.get('ruleId', ''))} pid={proc.get('pid', '')} "
        f"exe={escape(proc.get('exePath', ''))} host={escape(record.get('hostname', ''))}"
    )


class StdoutSink(Sink):
    """Rich is imported only for the human format: every alerter has this module, and
    most never print a human line (the default sink is the file)."""

    kind = "stdout"

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.out = sys.stdout
        self._console: Any = None  # Rich's, made on the first human line
        self._csv_header_written = False

    @property
    def console(self) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(file=self.out, highlight=False, soft_wrap=True)
        return self._console

    def send(self, batch: list[Delivery]) -> None:
        fmt = self.config.format
        try:
            if fmt in ("json", "ocsf", "ecs"):
                self.out.write("".join(self.body(d).decode() + "\n" for d in batch))
            elif fmt == "csv":
                buf = io.StringIO()
                writer = csv.writer(buf, lineterminator="\n")
                if not self._csv_header_written:
                    writer.writerow(CSV_COLUMNS)
                    self._csv_header_written = True
                writer.writerows(csv_row(d.record) for d in batch)
                self.out.write(buf.getvalue())
            else:
                for d in batch:
                    self.console.print(human_line(d.record))
            self.out.flush()
        except (OSError, ValueError) as exc:  # closed or broken stdout
            raise SinkError(f"cannot write stdout: {exc}") from None
