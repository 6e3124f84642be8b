"""`daemoneye alerts` at 80 columns: one line per alert, nothing past the edge."""

from __future__ import annotations

import time

import pytest
from rich.console import Console

from daemoneye.console.commands import alerts as alerts_cmd


def alert(i: int) -> dict:
    return {
        "key": i,
        "timeNs": time.time_ns(),
        "severity": "critical" if i % 2 else "medium",
        "ruleId": "proc.reverse_shell_from_web_server_process",
        "title": f"Reverse shell spawned by a web server process number {i} on this host",
        "count": 12345,
        "process": {"pid": 4_194_303, "exePath": "/usr/lib/very/long/path/to/bin/busybox-sh"},
        "deliveries": {"file": "delivered", "soc-webhook": "pending", "syslog": "failed"},
    }


@pytest.mark.parametrize("width", [80, 100, 200])
def test_alerts_table_keeps_one_line_per_alert(monkeypatch, width):
    console = Console(width=width, record=True, force_terminal=False, color_system=None)
    monkeypatch.setattr(alerts_cmd, "console", console)
    rows = [alert(i) for i in range(5)]
    alerts_cmd.print_alerts(rows, as_json=False, table=True)
    lines = console.export_text().splitlines()
    assert max(len(line) for line in lines) <= width, "\n".join(lines)
    titled = [line for line in lines if "Reverse shell" in line]
    assert len(titled) == len(rows), "\n".join(lines)  # each title on one line, not wrapped
    # the title column is not squeezed to nothing: a readable start of every title shows
    assert all("Reverse shell sp" in line for line in titled), "\n".join(lines)
    # the whole table is its title, a header and one line per alert
    assert len([line for line in lines if line.strip()]) == len(rows) + 2, "\n".join(lines)
    assert "4194303" in lines[-1] and "critical" in "".join(lines)
