"""`daemoneye`: one subcommand per module in daemoneye.console.commands."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from daemoneye import __version__
from daemoneye.config import ConfigError
from daemoneye.rpc import RpcError

from . import commands
from .common import CommandError, common_options, err_console

EXIT_CODES = """exit codes: 0 success, 1 failure (a check failed, a peer did not answer),
2 bad usage or invalid configuration, 130 interrupted"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="daemoneye",
        description="DaemonEye: an offline-first endpoint process monitor.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"daemoneye {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    parent = common_options()
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.add_parser(sub, parent)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except ConfigError as exc:
        err_console.print(f"[red]daemoneye: configuration error[/red]\n{exc}", highlight=False)
        return 2
    except (CommandError, RpcError) as exc:
        if getattr(args, "debug", False):
            raise
        err_console.print(f"[red]daemoneye {args.command}:[/red] {exc}", highlight=False)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
