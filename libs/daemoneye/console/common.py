"""What every console verb shares: the common flags, settings and output consoles.

Rich is imported on first use of `console` or `err_console` (PEP 562), never at
import: `daemoneye run <service>` goes through here, and a service must not carry
Rich's modules (and their memory) it never uses.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemoneye.bus import SocketFactory, endpoint_in_use, ipc_path
from daemoneye.config import Settings, load_settings
from daemoneye.rpc import RpcResult, RpcTimeout, call_once

if TYPE_CHECKING:
    from rich.console import Console

    console: Console
    err_console: Console

_CONSOLES = {"console": {}, "err_console": {"stderr": True}}


def __getattr__(name: str) -> Any:
    """`console` (stdout) and `err_console` (stderr), made on first use."""
    if name not in _CONSOLES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from rich.console import Console

    made = globals()[name] = Console(highlight=False, **_CONSOLES[name])
    return made


class CommandError(Exception):
    """A failure to report as one clear line (exit 1)."""


class UsageError(CommandError):
    """Arguments that cannot work, found after parsing (exit 2, like argparse's own)."""


def non_negative(text: str) -> int:
    """argparse type: an integer >= 0 (a bad one is a usage error, exit 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def positive(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = non_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be 1 or more, not 0")
    return value


def seconds(text: str) -> float:
    """argparse type: a duration in seconds, >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, not {text}")
    return value


# What a progress callback receives: (units done, units in all).
ProgressFn = Callable[[int, int], None]


@contextlib.contextmanager
def progress_bar(description: str, enabled: bool = True) -> Iterator[ProgressFn | None]:
    """A Rich progress bar on stderr, fed by the work's own (done, total) callback.

    Yields None (no bar, no cost) unless both stdout and stderr are terminals and the
    caller wants it: piped or --json output stays free of escape codes."""
    out, err = __getattr__("console"), __getattr__("err_console")
    if not (enabled and out.is_terminal and err.is_terminal):
        yield None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    )
    task = bar.add_task(description, total=None)

    def update(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    with bar:
        yield update


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


def add_subcommand(
    sub: Any, parent: argparse.ArgumentParser, name: str, summary: str, examples: str
) -> argparse.ArgumentParser:
    """A nested verb (`rules validate`, `ledger verify`): its own --help with examples;
    `parent` is common_options(repeatable=True) so the common flags work after it too."""
    return sub.add_parser(
        name,
        parents=[parent],
        help=summary,
        description=summary,
        epilog="examples:\n" + examples,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def print_json(doc: Any) -> None:
    """--json output: one compact document on stdout, whatever the terminal."""
    print(json.dumps(doc, default=str), flush=True)


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
    control = settings.endpoint("control")
    socket_path = ipc_path(control)
    if socket_path is not None and not socket_path.exists():
        # no broker ever bound it: say so now rather than after the whole RPC timeout
        raise CommandError(f"no broker socket at {socket_path}; is `daemoneye up` running?")
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
        if target == "control.broker" or (
            control.startswith("ipc://") and not endpoint_in_use(control)
        ):
            raise CommandError(
                f"the broker at {control} did not answer ({exc}); is `daemoneye up` running?"
            ) from None
        raise
    finally:
        factory.close_all(linger_ms=0)
