"""A lean start of the collector: `python -m daemoneye.services.collector`.

`daemoneye run collector` goes through the console, which imports every verb on the
way (Rich, the rules engine with sqlglot, the ledger, cryptography): ~17 MB of
resident memory the collector never uses, against a 60 MB budget. So when the
collector finds those loaded at start, it executes itself again through this module
(same pid, same privileges), handing over the settings already built over an
inherited pipe: nothing is parsed twice, and no setting lands in the environment.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

# Loaded by the console, never by the collector: any of them means a heavy start.
HEAVY = ("rich", "sqlglot", "daemoneye.rules", "daemoneye.ledger", "cryptography")
LEAN_ENV = "DAEMONEYE_COLLECTOR_LEAN"  # set by the re-exec: never a second one


def heavy_start() -> bool:
    return os.environ.get(LEAN_ENV) != "1" and any(m in sys.modules for m in HEAVY)


def reexec(settings: Any, service_id: str) -> None:
    """Replace this process with a lean collector; returns only if exec fails."""
    rfd, wfd = os.pipe()
    data = settings.model_dump_json().encode()
    if len(data) > 60_000:  # more than a pipe holds without a reader: keep the heavy start
        os.close(rfd)
        os.close(wfd)
        return
    os.write(wfd, data)
    os.close(wfd)
    os.set_inheritable(rfd, True)
    env = dict(os.environ, **{LEAN_ENV: "1"})
    argv = [sys.executable, "-m", "daemoneye.services.collector", "--settings-fd", str(rfd)]
    argv += ["--id", service_id]
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, argv, env)
    except OSError:
        os.close(rfd)


def _read_all(fd: int) -> bytes:
    parts = []
    while chunk := os.read(fd, 65536):
        parts.append(chunk)
    os.close(fd)
    return b"".join(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m daemoneye.services.collector")
    ap.add_argument("--id", dest="service_id", help="service id (default: collector@<host>)")
    ap.add_argument("--settings-fd", type=int, help="read the settings as JSON from this fd")
    args = ap.parse_args(argv)
    from daemoneye.config import ConfigError, Settings, load_settings

    try:
        if args.settings_fd is not None:
            settings = Settings(**json.loads(_read_all(args.settings_fd)))
        else:
            settings = load_settings()
    except (ConfigError, ValueError, OSError) as exc:
        print(f"collector: bad settings: {exc}", file=sys.stderr)
        return 2
    from .service import Collector

    return Collector(settings, args.service_id).run()
