"""`daemoneye`: one subcommand per module in daemoneye.console.commands."""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from collections.abc import Sequence

from daemoneye import __version__
from daemoneye.bus import RunDirError
from daemoneye.config import ConfigError
from daemoneye.rpc import RpcError, RpcTimeout
from daemoneye.security import KeyFileError

from . import commands, common
from .common import CommandError, UsageError, common_options

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

EXIT_CODES = """exit codes (every command):
  0    success
  1    failure: a check failed (ledger verify, rules validate, status --check),
       a peer did not answer or refused, a file or database could not be read
  2    bad usage or invalid configuration (arguments, config file, environment)
  130  interrupted (Ctrl-C)

errors are one line on stderr; add --debug for the traceback.
docs/CLI.md documents every command, its flags and its --json output."""

# Typed errors of the library and service layers: each is a clear message already.
CONFIGURATION_ERRORS = (ConfigError, RunDirError, KeyFileError)


def failure_types() -> tuple[type[Exception], ...]:
    """Imported only when an error is being reported: `daemoneye run <service>` must not
    carry the ledger, rules and RocksDB modules (and their memory) just to name their
    errors."""
    from daemoneye.ledger.entry import EntryError
    from daemoneye.ledger.note import NoteError
    from daemoneye.ledger.store import LedgerError
    from daemoneye.merkle import ProofError
    from daemoneye.rules.model import RuleError
    from daemoneye.store import StoreError

    return (
        CommandError,
        RpcError,
        StoreError,
        LedgerError,
        NoteError,
        EntryError,
        ProofError,
        RuleError,
        OSError,
    )


def command_modules(argv: Sequence[str]) -> list[str]:
    """The verb's module alone when argv names one (each service started by `daemoneye
    run` then loads only what it uses); every verb otherwise, for help and usage."""
    names = sorted(m.name for m in pkgutil.iter_modules(commands.__path__))
    verb = next((a for a in argv if not a.startswith("-")), None)
    return [verb] if verb in names else names


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="daemoneye",
        description="DaemonEye: an offline-first endpoint process monitor.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"daemoneye {__version__}")
    # also accepted before the command (its own dest: the command's --debug default
    # would otherwise overwrite it)
    parser.add_argument("--debug", dest="debug_first", action="store_true", help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    parent = common_options()
    names = command_modules(argv) if argv is not None else command_modules([])
    for name in names:
        module = importlib.import_module(f"{commands.__name__}.{name}")
        module.add_parser(sub, parent)
    return parser


def command_name(args: argparse.Namespace) -> str:
    """`daemoneye rules validate`, not just `daemoneye rules`, in error lines."""
    words = [args.command]
    for nested in ("action", "ledger_command"):
        value = getattr(args, nested, None)
        if isinstance(value, str) and args.command in ("rules", "ledger"):
            words.append(value)
    return "daemoneye " + " ".join(words)


def error_line(name: str, message: object) -> None:
    """One line on stderr, never wrapped (a log collector reads it whole)."""
    from rich.markup import escape  # here, not at the top: see daemoneye.console.common

    text = "; ".join(line.strip() for line in str(message).splitlines() if line.strip())
    text = text or "failed"
    common.err_console.print(f"[red]{escape(name)}:[/red] {escape(text)}", soft_wrap=True)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    return execute(build_parser(argv).parse_args(argv))


def execute(args: argparse.Namespace) -> int:
    """Run a parsed command, every error one line and an exit code (main's second half;
    a service forked by `daemoneye up` comes here with its arguments parsed)."""
    name = command_name(args)
    debug = bool(getattr(args, "debug", False) or getattr(args, "debug_first", False))
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # the reader went away (`| head`): nothing more to say, and nowhere to say it
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except Exception as exc:
        if debug:
            raise
        if isinstance(exc, CONFIGURATION_ERRORS):
            error_line(name, f"configuration error: {exc}")
            return EXIT_USAGE
        if isinstance(exc, UsageError):
            error_line(name, exc)
            return EXIT_USAGE
        if isinstance(exc, RpcError) and not isinstance(exc, RpcTimeout):
            # the peer's own reason; "control.detector query:" adds nothing to the verb
            error_line(name, str(exc).removeprefix(f"{exc.target} {exc.verb}: "))
            return EXIT_FAILED
        if isinstance(exc, failure_types()):
            error_line(name, exc)
            return EXIT_FAILED
        error_line(name, f"unexpected {type(exc).__name__}: {exc} (--debug shows the traceback)")
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
