"""`daemoneye keys generate NAME`: a CurveZMQ key pair for tcp:// endpoints."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from daemoneye.security import generate_keypair

from ..common import CommandError, add_command, console, settings_from


def add_parser(sub: Any, parent: argparse.ArgumentParser) -> None:
    p = add_command(
        sub,
        parent,
        "keys",
        "Make CurveZMQ key pairs. The broker's pair is named by bus.server_key (broker); "
        "a client's public key admitted by copying it into the broker's authorized dir.",
        "  daemoneye keys generate broker\n  daemoneye keys generate host2 --dir /tmp/keys\n"
        "  cp ~/.local/share/daemoneye/keys/host2.key <broker data dir>/keys/authorized/\n",
    )
    p.add_argument("action", choices=["generate"])
    p.add_argument("name", help="key pair name: NAME.key (public) and NAME.key_secret")
    p.add_argument("--dir", type=Path, help="where to write (default: <data_dir>/keys)")
    p.add_argument("--force", action="store_true", help="replace an existing pair")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    keys_dir = args.dir or settings_from(args).keys_dir()
    secret = keys_dir / f"{args.name}.key_secret"
    if secret.exists() and not args.force:
        raise CommandError(f"{secret} exists; pass --force to replace it")
    public, secret = generate_keypair(keys_dir, args.name)
    console.print(f"public key: {public}\nsecret key: {secret} (mode 0600)")
    return 0
