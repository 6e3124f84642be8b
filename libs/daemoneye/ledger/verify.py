"""Offline verification: of the whole ledger database, and of a single proof file.

`verify_ledger` walks the entries in order and, for each, checks that its record
parses, carries its own sequence number, hashes to the stored entry hash, links
to the previous entry's hash and matches its payload (unless retention dropped
it); it rebuilds the Merkle tree and compares every stored node it completes, and
every stored checkpoint's signature and root. It stops at the first problem and
names the entry.

`verify_proof_document` checks what `daemoneye ledger prove|consistency --json`
prints, with only the checkpoint(s) and the public key: no database needed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3
from rocksdict import ReadOptions

from daemoneye import merkle
from daemoneye.ledger import entry as entries
from daemoneye.ledger.note import NoteError, Verifier, open_checkpoint, parse_checkpoint
from daemoneye.ledger.store import (
    ENTRY,
    HASHER,
    MIN_STORED_LEVEL,
    NODE,
    PAYLOAD,
    LedgerError,
    LedgerStore,
    entry_key,
    node_key,
)
from daemoneye.store import be64, prefix_end, un_be64

READ_AHEAD = 8 << 20
PROGRESS_EVERY = 1 << 14  # entries between progress callbacks (a negligible cost per entry)


@dataclass
class Problem:
    seq: int | None  # the first bad entry, when one can be named
    what: str

    def __str__(self) -> str:
        return f"entry {self.seq}: {self.what}" if self.seq is not None else self.what


@dataclass
class Report:
    size: int = 0
    checked_from: int = 0
    checked_to: int = 0
    checkpoints: int = 0
    payloads_pruned: int = 0
    root: bytes = b""
    problem: Problem | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.problem is None


class _Stop(Exception):
    def __init__(self, problem: Problem) -> None:
        self.problem = problem


def verify_ledger(
    ledger: LedgerStore,
    verifier: Verifier | None,
    start: int = 0,
    stop: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Report:
    """Check entries [start, stop) (all by default) and the checkpoints inside that range.

    `progress(done, total)`, if given, is called every PROGRESS_EVERY entries checked
    and once at the end of the range."""
    size = ledger.size()
    stop = size if stop is None else min(stop, size)
    report = Report(size=size, checked_from=start, checked_to=stop)
    try:
        _verify(ledger, verifier, start, stop, report, progress)
    except _Stop as exc:
        report.problem = exc.problem
    return report


def _verify(
    ledger: LedgerStore,
    verifier: Verifier | None,
    start: int,
    stop: int,
    report: Report,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    if start > stop:
        raise _Stop(Problem(None, f"--from {start} is beyond the checked end {stop}"))
    checkpoints = _load_checkpoints(ledger, verifier, report)
    cp_sizes = sorted(s for s in checkpoints if start < s <= stop)
    floor = ledger.payload_floor()
    report.payloads_pruned = min(floor, stop)
    try:
        frontier = ledger.frontier(start)
        prev = ledger.entry_hash(start - 1) if start else entries.GENESIS_PREV
    except LedgerError as exc:
        raise _Stop(Problem(start, f"cannot start here: {exc}")) from None

    assert HASHER is merkle.BLAKE3  # the inlined tree code below hashes with BLAKE3 directly
    b3 = blake3.blake3
    stack = frontier.hashes
    get = ledger.db.get
    payload_it = _prefixed(ledger, PAYLOAD, PAYLOAD + be64(max(start, floor)))
    next_payload = next(payload_it, None)
    next_cp = iter(cp_sizes)
    cp_due = next(next_cp, None)
    expected = start
    for key, value in _prefixed(ledger, ENTRY, entry_key(start)):
        seq = un_be64(key[1:])
        if seq >= stop:
            break
        if seq != expected:
            raise _Stop(Problem(expected, f"missing (entries jump from {expected - 1} to {seq})"))
        try:
            record_seq, encoding, payload_hash, prev_hash = entries.unpack_record(value)
        except entries.EntryError as exc:
            raise _Stop(Problem(seq, f"malformed record: {exc}")) from None
        if record_seq != seq:
            raise _Stop(Problem(seq, f"record says it is entry {record_seq}"))
        entry_hash = b3(encoding).digest()
        if entry_hash != value[:32]:
            raise _Stop(
                Problem(
                    seq,
                    f"contents hash to {entry_hash.hex()[:16]}… but the stored entry hash "
                    f"is {value[:32].hex()[:16]}… (entry or its hash was changed)",
                )
            )
        if prev_hash != prev:
            raise _Stop(
                Problem(
                    seq,
                    "previous-hash link broken: it names "
                    f"{prev_hash.hex()[:16]}…, entry {seq - 1} hashes to "
                    f"{prev.hex()[:16]}…",
                )
            )
        # payloads: a parallel scan (be64 keys compare as bytes in numeric order)
        seq_key = key[1:]
        payload_key = next_payload[0][1:] if next_payload is not None else None
        if payload_key == seq_key:
            payload_digest = b3(next_payload[1]).digest()
            if payload_digest != payload_hash:
                raise _Stop(
                    Problem(
                        seq,
                        f"payload hashes to {payload_digest.hex()[:16]}… but the "
                        f"entry records {payload_hash.hex()[:16]}…",
                    )
                )
            next_payload = next(payload_it, None)
        elif payload_key is not None and payload_key < seq_key:
            raise _Stop(Problem(un_be64(payload_key), "payload of a missing entry"))
        elif seq >= floor:
            raise _Stop(Problem(seq, f"payload missing (retention floor is {floor})"))
        # Frontier.append inlined (this loop is the verifier's whole cost): fold the new
        # leaf into the stack of complete subtrees, checking each stored node it completes.
        h = b3(b"\x00" + entry_hash).digest()
        index, level = seq, 0
        while index & 1:
            h = b3(b"\x01" + stack.pop() + h).digest()
            index >>= 1
            level += 1
            if level >= MIN_STORED_LEVEL:
                stored = get(node_key(level, index))
                if stored != h:
                    first = index << level
                    state = "missing" if stored is None else "different"
                    raise _Stop(
                        Problem(
                            seq,
                            f"tree node level {level} index {index} (entries {first}..{seq}) "
                            f"is {state} from the recomputed one",
                        )
                    )
        stack.append(h)
        frontier.size = seq + 1
        if cp_due is not None and frontier.size == cp_due:
            cp = checkpoints[cp_due]
            if frontier.root() != cp.root:
                raise _Stop(
                    Problem(
                        seq,
                        f"signed checkpoint at tree size {cp_due} has root "
                        f"{cp.root.hex()[:16]}…, the entries give {frontier.root().hex()[:16]}…",
                    )
                )
            report.checkpoints += 1
            cp_due = next(next_cp, None)
        prev = entry_hash
        expected = seq + 1
        if progress is not None and not expected % PROGRESS_EVERY:
            progress(expected - start, stop - start)
    if progress is not None:
        progress(expected - start, stop - start)
    if expected != stop:
        raise _Stop(Problem(expected, f"missing (the ledger ends at {expected - 1})"))
    if stop == report.size and next_payload is not None:
        stray = un_be64(next_payload[0][1:])
        raise _Stop(Problem(stray, "payload stored beyond the last entry"))
    report.root = frontier.root()
    if stop == report.size:
        _check_no_nodes_beyond(ledger, stop)


def _prefixed(ledger: LedgerStore, prefix: bytes, start: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) from `start` while keys carry the one-byte `prefix`: the fast scan
    (an upper bound and read-ahead in RocksDB, no per-key prefix test in Python)."""
    options = ReadOptions()
    options.set_iterate_upper_bound(prefix_end(prefix))
    options.set_readahead_size(READ_AHEAD)
    options.fill_cache(False)
    return iter(ledger.db.items(from_key=start, read_opt=options))


def _load_checkpoints(ledger: LedgerStore, verifier: Verifier | None, report: Report) -> dict:
    checkpoints = {}
    for size, _t, note in ledger.checkpoints():
        if verifier is None:
            try:
                cp = parse_checkpoint(note.rpartition("\n\n")[0] + "\n")
            except NoteError as exc:
                raise _Stop(Problem(None, f"checkpoint at size {size}: {exc}")) from None
        else:
            try:
                cp = open_checkpoint(note, verifier)
            except NoteError as exc:
                raise _Stop(Problem(None, f"checkpoint at size {size}: {exc}")) from None
        if cp.size != size:
            raise _Stop(Problem(None, f"checkpoint stored at size {size} says size {cp.size}"))
        if size > report.size:
            raise _Stop(
                Problem(
                    report.size,
                    f"missing: a signed checkpoint covers {size} entries but the ledger ends "
                    f"at entry {report.size - 1} (entries deleted from the end?)",
                )
            )
        checkpoints[size] = cp
    if verifier is None:
        report.warnings.append("checkpoint signatures not checked: no public key")
    return checkpoints


def _check_no_nodes_beyond(ledger: LedgerStore, size: int) -> None:
    """Stored nodes for leaves that do not exist mean entries were cut off the end."""
    for level in range(MIN_STORED_LEVEL, max(size.bit_length(), MIN_STORED_LEVEL) + 1):
        index = size >> level  # the first node not complete at this size
        it = ledger.store.scan(NODE + bytes([level]), start=node_key(level, index))
        hit = next(it, None)
        if hit is not None:
            first = un_be64(hit[0][2:]) << level
            raise _Stop(
                Problem(
                    size,
                    f"missing: tree node level {level} covers entries from {first}, "
                    f"beyond the last entry {size - 1} (entries deleted from the end?)",
                )
            )


# --- proof files ---------------------------------------------------------------


def _hx(doc: dict[str, Any], name: str) -> bytes:
    try:
        value = bytes.fromhex(doc[name])
    except KeyError:
        raise NoteError(f"proof file has no {name!r}") from None
    except (TypeError, ValueError):
        raise NoteError(f"proof file field {name!r} is not hex") from None
    return value


def _checkpoint_of(doc: dict[str, Any], name: str, verifier: Verifier, size: int, root: bytes):
    note = doc.get(name)
    if not note:
        raise NoteError(f"proof file has no signed {name!r}; pass --checkpoint")
    cp = open_checkpoint(note, verifier)
    if cp.size != size:
        raise NoteError(f"{name} is for tree size {cp.size}, the proof for {size}")
    if cp.root != root:
        raise NoteError(f"{name} root {cp.root.hex()[:16]}… differs from the proof's root")
    return cp


def verify_proof_document(doc: dict[str, Any], verifier: Verifier) -> str:
    """Verify an inclusion or consistency proof document; returns a one-line summary."""
    try:
        if "audit_path" in doc:
            return _verify_inclusion_doc(doc, verifier)
        if "proof" in doc and "old_size" in doc:
            return _verify_consistency_doc(doc, verifier)
    except merkle.ProofError as exc:
        raise NoteError(f"proof does not verify: {exc}") from None
    except (TypeError, ValueError, KeyError) as exc:
        if isinstance(exc, NoteError):
            raise
        raise NoteError(f"malformed proof file: {exc}") from None
    raise NoteError("not a proof: expected 'audit_path' (inclusion) or 'proof' (consistency)")


def _verify_inclusion_doc(doc: dict[str, Any], verifier: Verifier) -> str:
    index, size = int(doc["leaf_index"]), int(doc["tree_size"])
    root = _hx(doc, "root_hash")
    entry_hash = _hx(doc, "entry_hash")
    if "entry" in doc:  # the canonical encoding: recompute its hash, check its seq
        encoding = _hx(doc, "entry")
        if entries.blake3_digest(encoding) != entry_hash:
            raise NoteError("the entry's encoding does not hash to entry_hash")
        if entries.parse_encoding(encoding).seq != index:
            raise NoteError("the entry's encoding is for another sequence number")
    if "payload" in doc:
        payload = _hx(doc, "payload")
        if "entry" not in doc:
            raise NoteError("a payload needs the entry encoding to be checked against")
        if entries.blake3_digest(payload) != entries.parse_encoding(encoding).payload_hash:
            raise NoteError("the payload does not match the entry's payload hash")
    leaf_hash = HASHER.leaf(entry_hash)
    if "leaf_hash" in doc and _hx(doc, "leaf_hash") != leaf_hash:
        raise NoteError("leaf_hash is not H(0x00 || entry_hash)")
    path = [bytes.fromhex(h) for h in doc["audit_path"]]
    merkle.verify_inclusion(HASHER, index, size, leaf_hash, path, root)
    cp = _checkpoint_of(doc, "checkpoint", verifier, size, root)
    return f"entry {index} is in {cp.origin} at tree size {size} (signed by {verifier.name})"


def _verify_consistency_doc(doc: dict[str, Any], verifier: Verifier) -> str:
    old, new = int(doc["old_size"]), int(doc["new_size"])
    old_root, new_root = _hx(doc, "old_root"), _hx(doc, "new_root")
    path = [bytes.fromhex(h) for h in doc["proof"]]
    merkle.verify_consistency(HASHER, old, new, old_root, new_root, path)
    signed = []
    for name, size, root in (("old_checkpoint", old, old_root), ("new_checkpoint", new, new_root)):
        if doc.get(name):
            _checkpoint_of(doc, name, verifier, size, root)
            signed.append(name.split("_")[0])
    if not signed:
        raise NoteError("proof file has no signed old_checkpoint or new_checkpoint")
    return (
        f"tree size {new} extends tree size {old} "
        f"({' and '.join(signed)} head signed by {verifier.name})"
    )


def load_verifier(text: str) -> Verifier:
    """A verifier key given inline or as the path of a file holding it."""
    candidate = Path(text)
    if "+" not in text or candidate.is_file():
        try:
            text = candidate.read_text()
        except OSError as exc:
            raise NoteError(f"cannot read public key {text}: {exc.strerror}") from None
    return Verifier.from_vkey(text)


def load_document(raw: str) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise NoteError(f"proof file is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise NoteError("proof file must hold a JSON object")
    return doc
