"""DaemonEye services: one package per service, each run by `daemoneye run <name>`.

A service package has a `service` module whose `SERVICE` is its Service class.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

# Start order for `daemoneye up`: the broker first, producers last.
START_ORDER = ("broker", "ledger", "alerter", "detector", "collector")


def available() -> list[str]:
    """Service names that exist in this installation, in start order."""
    here = [m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if m.ispkg]
    known = [name for name in START_ORDER if name in here]
    return known + sorted(set(here) - set(known))


def service_class(name: str) -> type:
    if name not in available():
        raise LookupError(f"no service {name!r} (available: {', '.join(available())})")
    module = importlib.import_module(f"daemoneye.services.{name}.service")
    return module.SERVICE
