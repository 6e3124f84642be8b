"""`daemoneye ledger`: verify, prove and inspect the audit ledger offline.

Every subcommand but `verify-proof` reads the ledger's RocksDB directory directly
(read-only, so the service may keep running); `verify-proof` needs only a proof
file and the public key, for third parties without our database.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path
from typing import Any

from rich.table import Table

from daemoneye.config import Settings
from daemoneye.ledger import verify as verifying
from daemoneye.ledger.entry import parse_record
from daemoneye.ledger.note import (
    NoteError,
    Signer,
    Verifier,
    load_key,
    parse_checkpoint,
    public_key_path,
)
from daemoneye.ledger.proofs import consistency_document, inclusion_document
from daemoneye.ledger.store import LedgerError, LedgerStore, open_store
from daemoneye.store import StoreError

from ..common import (
    CommandError,
    add_command,
    add_subcommand,
    common_options,
    console,
    non_negative,
    progress_bar,
    settings_from,
)

EXAMPLES = """  daemoneye ledger verify
  daemoneye ledger prove 42 --json > proof.json
  daemoneye ledger verify-proof proof.json --key "$(daemoneye ledger key)"
  daemoneye ledger consistency 1000 2000 --json
  daemoneye ledger show --from 100 --count 20
"""


def add_parser(sub: Any, parent: argparse.ArgumentParser) -> None:
    p = add_command(
        sub,
        parent,
        "ledger",
        "Verify, prove and inspect the tamper-evident audit ledger.",
        EXAMPLES,
    )
    verbs = p.add_subparsers(dest="ledger_command", metavar="SUBCOMMAND", required=True)
    again = common_options(repeatable=True)

    def verb(name: str, summary: str, handler: Any, examples: str) -> argparse.ArgumentParser:
        v = add_subcommand(verbs, again, name, summary, examples)
        v.set_defaults(handler=handler)
        return v

    v = verb(
        "verify",
        "Recompute the hash chain, the tree and every checkpoint; exit 1 naming the first "
        "bad entry.",
        run_verify,
        "  daemoneye ledger verify\n"
        "  daemoneye ledger verify --from 1000000 --to 1999999\n"
        '  daemoneye ledger verify --key "$(cat ledger.pub)" --json | jq .ok\n',
    )
    v.add_argument(
        "--from",
        dest="start",
        type=non_negative,
        default=0,
        metavar="N",
        help="first entry (starts from the stored hash of entry N-1 and stored tree nodes)",
    )
    v.add_argument(
        "--to", dest="stop", type=non_negative, metavar="M", help="last entry (inclusive)"
    )
    v.add_argument("--key", help="verifier key or file (default: the ledger's own .pub file)")
    v.add_argument("--json", action="store_true", help="print the result as JSON")

    v = verb(
        "prove",
        "Print an inclusion proof of one entry.",
        run_prove,
        "  daemoneye ledger prove 42\n  daemoneye ledger prove 42 --payload --json > proof.json\n",
    )
    v.add_argument("index", type=non_negative, help="entry sequence number (leaf index)")
    v.add_argument("--tree-size", type=non_negative, help="tree size (default: latest checkpoint)")
    v.add_argument("--payload", action="store_true", help="include the payload bytes")
    v.add_argument("--json", action="store_true", help="print the proof as JSON")

    v = verb(
        "consistency",
        "Print a consistency proof between two tree sizes.",
        run_consistency,
        "  daemoneye ledger consistency 1000 2000\n"
        "  daemoneye ledger consistency 1000 2000 --json > consistency.json\n",
    )
    v.add_argument("old", type=non_negative, help="old tree size")
    v.add_argument("new", type=non_negative, help="new tree size")
    v.add_argument("--json", action="store_true", help="print the proof as JSON")

    v = verb(
        "checkpoint",
        "Print the latest signed checkpoint (a signed note).",
        run_checkpoint,
        "  daemoneye ledger checkpoint > head.note\n  daemoneye ledger checkpoint --size 4096\n",
    )
    v.add_argument("--size", type=non_negative, help="the checkpoint for this tree size instead")

    v = verb(
        "show",
        "List entries.",
        run_show,
        "  daemoneye ledger show --from 100 --count 20\n"
        "  daemoneye ledger show --json | jq -r .action\n",
    )
    v.add_argument(
        "--from", dest="start", type=non_negative, default=0, metavar="N", help="first entry"
    )
    v.add_argument("--count", type=non_negative, default=20, metavar="K", help="how many (20)")
    v.add_argument("--json", action="store_true", help="one JSON object per line")

    v = verb(
        "key",
        "Print the ledger's public (verifier) key.",
        run_key,
        "  daemoneye ledger key > ledger.pub\n",
    )

    v = verb(
        "verify-proof",
        "Check a proof file with only its checkpoint and a key (no database needed).",
        run_vp,
        '  daemoneye ledger verify-proof proof.json --key "$(cat ledger.pub)"\n'
        "  daemoneye ledger prove 42 --json | daemoneye ledger verify-proof - --key ledger.pub\n",
    )
    v.add_argument("file", type=Path, help="`ledger prove|consistency --json` output (- = stdin)")
    v.add_argument("--key", required=True, help="verifier key, or a file holding it")
    v.add_argument("--checkpoint", type=Path, help="signed checkpoint file, if not in the proof")


# --- helpers -----------------------------------------------------------------


def _open(settings: Settings) -> LedgerStore:
    path = settings.ledger.db_path(settings.data_dir)
    try:
        return LedgerStore(open_store(path, read_only=True))
    except StoreError as exc:
        raise CommandError(f"{exc} (has the ledger service run with this --data-dir?)") from None


def _own_verifier(settings: Settings) -> Verifier | None:
    """The ledger's verifier key: from its .pub file, else derived from the private key."""
    key_path = settings.ledger.signing_key_path(settings.data_dir)
    pub = public_key_path(key_path)
    try:
        if pub.exists():
            return Verifier.from_vkey(pub.read_text())
        if key_path.exists():
            origin = settings.ledger.origin_for(settings.hostname)
            return Signer(origin, load_key(key_path)).verifier
    except NoteError as exc:
        raise CommandError(str(exc)) from None
    return None


def _print_json(doc: Any) -> None:
    print(json.dumps(doc, indent=2))


def _human_time(ns: int) -> str:
    return datetime.datetime.fromtimestamp(ns / 1e9).isoformat(sep=" ", timespec="milliseconds")


# --- subcommands -------------------------------------------------------------


def run_verify(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    try:
        verifier = verifying.load_verifier(args.key) if args.key else _own_verifier(settings)
    except NoteError as exc:
        raise CommandError(str(exc)) from None
    ledger = _open(settings)
    try:
        stop = None if args.stop is None else args.stop + 1
        with progress_bar("verifying ledger", enabled=not args.json) as progress:
            report = verifying.verify_ledger(ledger, verifier, args.start, stop, progress)
    finally:
        ledger.close()
    if args.json:
        _print_json(
            {
                "ok": report.ok,
                "size": report.size,
                "from": report.checked_from,
                "to": report.checked_to,
                "checkpoints_verified": report.checkpoints,
                "root_hash": report.root.hex(),
                "first_bad_entry": report.problem.seq if report.problem else None,
                "problem": str(report.problem) if report.problem else None,
                "warnings": report.warnings,
            }
        )
    else:
        for warning in report.warnings:
            console.print(f"[yellow]warning:[/yellow] {warning}")
        if report.ok:
            console.print(
                f"[green]ledger intact[/green]: entries {report.checked_from}.."
                f"{report.checked_to - 1} of {report.size}, "
                f"{report.checkpoints} signed checkpoint(s) verified, "
                f"payloads pruned below {report.payloads_pruned}, root {report.root.hex()}"
            )
        else:
            console.print(f"[red]ledger verification FAILED[/red]: {report.problem}")
    return 0 if report.ok else 1


def run_prove(args: argparse.Namespace) -> int:
    ledger = _open(settings_from(args))
    try:
        doc = inclusion_document(ledger, args.index, args.tree_size, args.payload)
    except (LedgerError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    finally:
        ledger.close()
    if args.json:
        _print_json(doc)
        return 0
    console.print(f"entry {doc['leaf_index']} in tree size {doc['tree_size']}")
    console.print(f"  entry hash  {doc['entry_hash']}\n  root hash   {doc['root_hash']}")
    for i, h in enumerate(doc["audit_path"]):
        console.print(f"  path[{i:2}]    {h}")
    if "checkpoint" not in doc:
        console.print("[yellow]no signed checkpoint at this tree size[/yellow]")
    return 0


def run_consistency(args: argparse.Namespace) -> int:
    ledger = _open(settings_from(args))
    try:
        doc = consistency_document(ledger, args.old, args.new)
    except (LedgerError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    finally:
        ledger.close()
    if args.json:
        _print_json(doc)
        return 0
    console.print(f"tree {doc['old_size']} -> {doc['new_size']}")
    console.print(f"  old root {doc['old_root']}\n  new root {doc['new_root']}")
    for i, h in enumerate(doc["proof"]):
        console.print(f"  proof[{i:2}] {h}")
    return 0


def run_checkpoint(args: argparse.Namespace) -> int:
    ledger = _open(settings_from(args))
    try:
        if args.size is not None:
            found = ledger.checkpoint(args.size)
            if found is None:
                raise CommandError(f"no checkpoint stored for tree size {args.size}")
            note = found[1]
        else:
            latest = ledger.latest_checkpoint()
            if latest is None:
                raise CommandError("no checkpoint yet")
            note = latest[2]
    finally:
        ledger.close()
    sys.stdout.write(note)
    return 0


def run_show(args: argparse.Namespace) -> int:
    ledger = _open(settings_from(args))
    try:
        rows = []
        for _seq, value in ledger.entries(args.start, args.start + max(0, args.count)):
            rows.append(parse_record(value))
    finally:
        ledger.close()
    if args.json:
        for e in rows:
            print(json.dumps(e.as_json()))
        return 0
    table = Table(title=f"ledger entries from {args.start}")
    for column in ("seq", "time", "actor", "action", "entry hash"):
        table.add_column(column, justify="right" if column == "seq" else "left")
    for e in rows:
        table.add_row(
            str(e.seq), _human_time(e.time_ns), e.actor, e.action, e.stored_hash.hex()[:16]
        )
    console.print(table)
    return 0


def run_key(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    verifier = _own_verifier(settings)
    if verifier is None:
        key_path = settings.ledger.signing_key_path(settings.data_dir)
        raise CommandError(f"no ledger key at {key_path}: it is created when the ledger starts")
    print(verifier.vkey())
    return 0


def _checkpoint_slot(doc: dict[str, Any], note: str) -> str:
    """Which field of the proof document a separately given checkpoint fills."""
    if "audit_path" in doc:
        return "checkpoint"
    try:
        size = parse_checkpoint(note.rpartition("\n\n")[0] + "\n").size
    except NoteError:
        return "new_checkpoint"  # verification will then say what is wrong with it
    return "old_checkpoint" if size == doc.get("old_size") else "new_checkpoint"


def run_vp(args: argparse.Namespace) -> int:
    try:
        raw = sys.stdin.read() if str(args.file) == "-" else args.file.read_text()
        doc = verifying.load_document(raw)
        if args.checkpoint is not None:
            note = args.checkpoint.read_text()
            doc[_checkpoint_slot(doc, note)] = note
        summary = verifying.verify_proof_document(doc, verifying.load_verifier(args.key))
    except OSError as exc:
        raise CommandError(f"cannot read {exc.filename}: {exc.strerror}") from None
    except NoteError as exc:
        console.print(f"[red]proof REJECTED[/red]: {exc}")
        return 1
    console.print(f"[green]proof verified[/green]: {summary}")
    return 0
