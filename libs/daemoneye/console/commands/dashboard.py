"""`daemoneye dashboard`: a live terminal view of services, rates, alerts and processes."""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import sys
import termios
import time
import tty
from collections.abc import Iterator
from typing import Any

from rich.live import Live

from ..common import add_command, console, settings_from
from ..dashboard.model import DashboardModel
from ..dashboard.view import render

QUIT_KEYS = {"q", "Q"}


def add_parser(sub: Any, parent: argparse.ArgumentParser) -> None:
    p = add_command(
        sub,
        parent,
        "dashboard",
        "A live view: services and health, event rates, latest alerts, top processes, "
        "bus counters. q or Ctrl-C quits.",
        "  daemoneye dashboard\n  daemoneye dashboard --refresh 4\n",
    )
    p.add_argument("--refresh", type=float, default=2.0, help="redraws per second (default 2)")
    p.set_defaults(handler=run)


@contextlib.contextmanager
def keys() -> Iterator[bool]:
    """Single keypresses without echo while the dashboard runs; restored on exit."""
    if not sys.stdin.isatty():
        yield False
        return
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def quit_pressed(interactive: bool, timeout_s: float) -> bool:
    """Wait up to timeout_s for a key; True when it is a quit key."""
    if not interactive:
        time.sleep(timeout_s)  # no keyboard: the redraw period is the only thing to wait on
        return False
    ready, _, _ = select.select([sys.stdin], [], [], timeout_s)
    return bool(ready) and os.read(sys.stdin.fileno(), 1).decode(errors="ignore") in QUIT_KEYS


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    period = 1.0 / max(0.5, min(args.refresh, 10.0))
    model = DashboardModel(settings)
    try:
        with (
            keys() as interactive,
            Live(
                render(model.poll(), console.size.height),
                console=console,
                screen=True,
                auto_refresh=False,
                transient=True,
            ) as live,
        ):
            while True:
                started = time.monotonic()
                live.update(render(model.poll(), console.size.height), refresh=True)
                if quit_pressed(interactive, max(0.0, period - (time.monotonic() - started))):
                    break
    finally:  # the Live screen is restored on the way out; Ctrl-C then exits 130
        model.close()
    return 0
