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
        "Make CurveZMQ key pairs in <data_dir>/keys (and its authorized/ dir). The broker's "
        "pair is named by bus.server_key (broker), a client's by bus.client_key (client); a "
        "client is admitted by copying its NAME.key into the broker's keys/authorized/.",
        "  daemoneye keys generate broker\n  daemoneye keys generate host2 --dir /tmp/keys\n"
        "  cp ~/.local/share/daemoneye/keys/host2.key <broker data dir>/keys/authorized/\n",
    )
    p.add_argument("action", choices=["generate"])
    p.add_argument("name", help="key pair name: NAME.key (public) and NAME.key_secret")
    p.add_argument("--dir", type=Path, help="where to write (default: <data_dir>/keys)")
    p.add_argument("--force", action="store_true", help="replace an existing pair")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    keys_dir = args.dir or settings.keys_dir()
    secret = keys_dir / f"{args.name}.key_secret"
    if secret.exists() and not args.force:
        raise CommandError(f"{secret} exists; pass --force to replace it")
    public, secret = generate_keypair(keys_dir, args.name)
    # soft_wrap: paths whole on one line each, to copy
    console.print(f"public key: {public}\nsecret key: {secret} (mode 0600)", soft_wrap=True)
    if args.dir is None:
        # This host's own keys dir: the allow-list beside it, ready for client keys.
        authorized = settings.authorized_dir()
        authorized.mkdir(parents=True, exist_ok=True, mode=0o700)
        console.print(
            f"authorized client keys: {authorized} (copy a client's NAME.key here)",
            soft_wrap=True,
        )
    return 0
