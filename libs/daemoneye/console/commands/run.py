"""`daemoneye run SERVICE`: one service in the foreground (what a container or unit runs)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from daemoneye.services import available, service_class

from ..common import UsageError, add_command, settings_from


def add_parser(sub: Any, parent: argparse.ArgumentParser) -> None:
    p = add_command(
        sub,
        parent,
        "run",
        "Run one service in the foreground until SIGTERM or Ctrl-C.",
        "  daemoneye run broker\n  daemoneye run collector --id collector-2\n"
        "  daemoneye run detector --rules-dir /etc/daemoneye/rules\n",
    )
    p.add_argument("service", help=f"one of: {', '.join(available())}")
    p.add_argument("--id", dest="service_id", help="service id (default: <service>@<hostname>)")
    p.add_argument("--rules-dir", type=Path, help="detector: rule files (env DAEMONEYE_RULES_DIR)")
    # settings: given when `daemoneye up` parsed them before forking this service
    # (daemoneye.zygote), so the child does not redo (and copy the pages of) that work
    p.set_defaults(handler=run, settings=None)


def run(args: argparse.Namespace) -> int:
    settings = args.settings if args.settings is not None else settings_from(args)
    if args.rules_dir is not None:
        settings.detector.rules_dir = args.rules_dir
    try:
        cls = service_class(args.service)
    except LookupError as exc:
        raise UsageError(str(exc)) from None
    return cls(settings, args.service_id).run()
