"""`daemoneye config`: the effective settings, or an example file with every setting."""

from __future__ import annotations

import argparse
import json
from typing import Any

from daemoneye.config_doc import example_toml

from ..common import add_command, settings_from


def add_parser(sub: Any, parent: argparse.ArgumentParser) -> None:
    p = add_command(
        sub,
        parent,
        "config",
        "Show the effective settings (after files, environment and flags), or print an "
        "example file with every setting commented.",
        "  daemoneye config show\n  daemoneye config example > daemoneye.toml\n",
    )
    p.add_argument("action", choices=["show", "example"])
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.action == "example":
        print(example_toml(), end="")
        return 0
    settings = settings_from(args)
    print(json.dumps(settings.model_dump(mode="json"), indent=2))
    return 0
