"""What every console verb shares: the common flags, settings and output consoles."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console

from daemoneye.bus import SocketFactory
from daemoneye.config import Settings, load_settings
from daemoneye.rpc import RpcResult, RpcTimeout, call_once

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


class CommandError(Exception):
    """A failure to report as one clear line (exit 1)."""


def common_options(repeatable: bool = False) -> argparse.ArgumentParser:
    """--run-dir, --data-dir, --config, --debug. `repeatable`: for a nested subcommand
    that accepts them again, with SUPPRESS defaults so it does not reset what was given
    before it to None."""
    default = argparse.SUPPRESS if repeatable else None
    parent = argparse.ArgumentParser(add_help=False, argument_default=default)
    group = parent.add_argument_group("common options")
    group.add_argument("--run-dir", type=Path, help="socket directory (env DAEMONEYE_RUN_DIR)")
    group.add_argument("--data-dir", type=Path, help="data directory (env DAEMONEYE_DATA_DIR)")
    group.add_argument("--config", type=Path, help="config file (env DAEMONEYE_CONFIG)")
    group.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    return parent


def add_command(
    sub: Any, parent: argparse.ArgumentParser, name: str, summary: str, examples: str
) -> argparse.ArgumentParser:
    return sub.add_parser(
        name,
        parents=[parent],
        help=summary,
        description=summary,
        epilog="examples:\n" + examples,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def settings_from(args: argparse.Namespace) -> Settings:
    return load_settings(
        config_file=args.config,
        run_dir=args.run_dir,
        data_dir=args.data_dir,
        log_level="debug" if args.debug else None,
    )


def call(
    settings: Settings,
    target: str,
    verb: str,
    params: dict | None = None,
    timeout_s: float | None = None,
) -> RpcResult:
    """One RPC through the broker; an unreachable broker is one clear error."""
    factory = SocketFactory(settings)
    try:
        return call_once(
            factory,
            settings.endpoint("control"),
            target,
            verb,
            params,
            timeout_s or settings.rpc_timeout_s,
        )
    except RpcTimeout as exc:
        if target == "control.broker":
            raise CommandError(
                f"the broker at {settings.endpoint('control')} did not answer "
                f"({exc}); is `daemoneye up` running?"
            ) from None
        raise
    finally:
        factory.close_all(linger_ms=0)
