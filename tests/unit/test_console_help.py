"""Every verb, nested ones included, has --help with examples of itself; exit codes are
stated once, at the top, and argparse's own usage errors exit 2."""

from __future__ import annotations

import argparse
import contextlib
import io
import re

import pytest

from daemoneye.console.cli import EXIT_CODES, build_parser, main

NESTED = {"rules", "ledger"}  # verbs whose actions are subcommands of their own


def verbs() -> list[tuple[str, argparse.ArgumentParser]]:
    """(`daemoneye rules validate`, its parser) for every verb and nested verb."""
    found = []

    def walk(prefix: str, parser: argparse.ArgumentParser) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    found.append((f"{prefix} {name}", child))
                    walk(f"{prefix} {name}", child)

    walk("daemoneye", build_parser())
    return found


ALL = verbs()


def test_the_tree_holds_every_verb() -> None:
    names = {name for name, _ in ALL}
    for expected in (
        "daemoneye up",
        "daemoneye run",
        "daemoneye status",
        "daemoneye tap",
        "daemoneye query",
        "daemoneye ps",
        "daemoneye dashboard",
        "daemoneye rules validate",
        "daemoneye rules import-sigma",
        "daemoneye ledger verify",
        "daemoneye ledger verify-proof",
    ):
        assert expected in names


@pytest.mark.parametrize("name,parser", ALL, ids=[n for n, _ in ALL])
def test_help_has_examples_of_the_verb_itself(name: str, parser: argparse.ArgumentParser) -> None:
    text = parser.format_help()
    assert parser.description, f"{name}: no description"
    assert "examples:" in text, f"{name} --help has no examples"
    examples = text.split("examples:", 1)[1]
    runs = [line.strip() for line in examples.splitlines() if line.strip().startswith("daemoneye")]
    assert runs, f"{name}: no example command"
    # a verb's examples show that verb (the top of a nested verb may show any of its actions)
    assert any(re.match(rf"{re.escape(name)}(\s|$)", run) for run in runs), (name, runs)
    if name.split()[-1] not in NESTED:
        for flag in ("--run-dir", "--data-dir", "--config", "--debug"):
            assert flag in text, f"{name}: common option {flag} missing"


def test_top_level_help_states_the_exit_codes() -> None:
    text = build_parser().format_help()
    assert EXIT_CODES in text
    for code in ("0", "1", "2", "130"):
        assert re.search(rf"^\s+{code}\s+\S", text, re.M), f"exit code {code} not described"


@pytest.mark.parametrize(
    "argv",
    [
        ["bogus"],
        ["status", "--nope"],
        ["query"],
        ["ledger"],
        ["ledger", "verify", "--from", "-5"],
        ["ledger", "show", "--count", "x"],
        ["ledger", "prove", "-1"],
        ["tap", "--count", "-1"],
        ["tap", "--timeout", "nan"],
        ["query", "SELECT 1", "--limit", "0"],
        ["rules", "validate"],
        ["rules", "test", "x.yml", "--limit", "-3"],
    ],
)
def test_bad_arguments_exit_2_with_a_usage_line(argv: list[str]) -> None:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert "error:" in err.getvalue() and "Traceback" not in err.getvalue()
