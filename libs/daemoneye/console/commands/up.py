"""`daemoneye up`: run every service locally, supervised."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from daemoneye import logs
from daemoneye.services import available
from daemoneye.supervisor import Supervisor

from ..common import UsageError, add_command, settings_from


def add_parser(sub: Any, parent: argparse.ArgumentParser) -> None:
    p = add_command(
        sub,
        parent,
        "up",
        "Run every service as a supervised child process until Ctrl-C or SIGTERM.",
        "  daemoneye up\n  daemoneye up --run-dir /tmp/de --data-dir /tmp/de-data\n"
        "  daemoneye up --only collector detector --rules-dir deploy/rules\n",
    )
    p.add_argument(
        "--only", nargs="+", metavar="SERVICE", help="run only these services (the broker always)"
    )
    p.add_argument("--rules-dir", type=Path, help="detector: rule files (env DAEMONEYE_RULES_DIR)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    names = available()
    if args.only:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            raise UsageError(
                f"unknown service(s) {', '.join(unknown)} (available: {', '.join(names)})"
            )
        names = [n for n in names if n == "broker" or n in args.only]
    logs.configure("supervisor", f"supervisor@{settings.hostname}", settings.log_level)
    # plain print, not Rich: every service is forked from this process (daemoneye.zygote),
    # and Rich's modules would be memory that none of them uses
    print(
        f"DaemonEye up: {', '.join(names)}  run dir {settings.run_dir}  "
        f"data dir {settings.data_dir}  (Ctrl-C stops)",
        flush=True,
    )
    extra: list[str] = ["--run-dir", str(settings.run_dir), "--data-dir", str(settings.data_dir)]
    if settings.config:
        extra += ["--config", str(settings.config)]
    if args.debug:
        extra.append("--debug")
    if args.rules_dir:
        extra += ["--rules-dir", str(args.rules_dir.resolve())]
    return Supervisor(settings, names, extra).run()
