"""The ledger service end to end: a real broker and ledger on ipc sockets, real
RocksDB, the real `daemoneye ledger` command; tampering and kill -9 included."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import zmq

from daemoneye.bus import Publisher, SocketFactory, Topics
from daemoneye.config import Settings
from daemoneye.ledger import entry as entries
from daemoneye.ledger.note import Verifier, open_checkpoint
from daemoneye.ledger.store import LedgerStore, entry_key, open_store, payload_key
from daemoneye.rpc import RpcClient, RpcError
from daemoneye.store import Store
from tests.conftest import ServiceProcess, daemoneye, wait_for

SOURCE = "tester@host"


def ledger_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return daemoneye("ledger", *args, env=env, timeout=120, COLUMNS="200")


def audit_body(action: str, subject: str) -> dict:
    return {
        "actor": SOURCE,
        "action": action,
        "subject": subject,
        "detailJson": "{}",
        "timeNs": time.time_ns(),
    }


def ledger_head(rpc_client: RpcClient) -> int:
    try:
        return rpc_client.call("control.ledger", "head", timeout_s=1).value["size"]
    except RpcError:
        return -1


def start_ledger(
    start_service: Callable[..., ServiceProcess], rpc_client: RpcClient
) -> ServiceProcess:
    proc = start_service("ledger")
    wait_for(lambda: ledger_head(rpc_client) >= 0, 20, f"the ledger to answer\n{proc.log()}")
    return proc


def join(pub: Publisher, rpc_client: RpcClient) -> int:
    """Publish probes until the ledger has recorded one: the bus path is then open."""
    start = ledger_head(rpc_client)

    def landed() -> bool:
        pub.publish(Topics.audit("tester"), "auditRecord", audit_body("probe", ""))
        return ledger_head(rpc_client) > start

    wait_for(landed, 20, "a probe to reach the ledger")
    return ledger_head(rpc_client)


@pytest.fixture
def pub(factory: SocketFactory, settings: Settings) -> Publisher:
    return Publisher(factory.connect(zmq.PUB, settings.endpoint("events-in")), SOURCE)


def db_path(settings: Settings) -> Path:
    return settings.ledger.db_path(settings.data_dir)


def test_records_bus_messages_checkpoints_and_proves(
    broker, start_service, rpc_client, pub, subscribe, settings, run_env
) -> None:
    run_env["DAEMONEYE_LEDGER__CHECKPOINT_EVERY_ENTRIES"] = "10"
    run_env["DAEMONEYE_LEDGER__CHECKPOINT_EVERY_S"] = "0.5"
    checkpoints = subscribe(Topics.CHECKPOINT)
    ledger = start_ledger(start_service, rpc_client)
    join(pub, rpc_client)

    sent: dict[bytes, tuple[str, str]] = {}  # payload -> (actor, action)
    for i in range(20):
        topic, body = Topics.audit("tester"), audit_body("rule.load", f"rule-{i}")
        _, data = pub.encode(topic, "auditRecord", body)
        pub.send_encoded(topic, data)
        sent[data] = (SOURCE, "rule.load")
    for i in range(10):
        event = {"kind": "start", "record": {"pid": 1000 + i, "name": "sh"}}
        _, data = pub.encode(Topics.PROCESS_START, "processEvent", event)
        pub.send_encoded(Topics.PROCESS_START, data)
        sent[data] = (SOURCE, Topics.PROCESS_START)
    alert = {"alertId": "a1", "ruleId": "r1", "severity": "high", "title": "t"}
    _, data = pub.encode(Topics.alert("high"), "alert", alert)
    pub.send_encoded(Topics.alert("high"), data)
    sent[data] = (SOURCE, "alerts.high")

    # A checkpoint covering everything arrives on the bus (every 10 entries, or on stop).
    vkey = ledger_cli(run_env, "key").stdout.strip()
    verifier = Verifier.from_vkey(vkey)
    head = {}

    def covered() -> bool:
        msg = checkpoints.recv(200)
        if msg is not None:
            body = msg.body
            cp = open_checkpoint(body.signedNote, verifier)  # signature checked here
            assert (cp.size, cp.root) == (body.treeSize, bytes(body.rootHash))
            head["cp"] = cp
        return "cp" in head and head["cp"].size >= ledger_head(rpc_client) > len(sent)

    wait_for(covered, 20, "a signed checkpoint covering every entry")

    proof = rpc_client.call("control.ledger", "prove", {"index": 3}).value
    assert proof["tree_size"] == head["cp"].size and "checkpoint" in proof
    with pytest.raises(RpcError, match="index must be a non-negative integer"):
        rpc_client.call("control.ledger", "prove", {"index": "x"})
    assert ledger.stop() == 0

    store = LedgerStore(open_store(db_path(settings), read_only=True))
    try:
        final_size = store.size()
        assert store.entry(final_size - 1).action == "ledger.stop"
        recorded = {}
        for seq, value in store.entries():
            e = entries.parse_record(value)
            recorded[store.payload(seq)] = (e.actor, e.action)
        for payload, want in sent.items():
            assert recorded.get(payload) == want  # the envelope bytes exactly as sent
    finally:
        store.close()

    result = ledger_cli(run_env, "verify")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ledger intact" in result.stdout

    proof_file = Path(run_env["DAEMONEYE_DATA_DIR"]) / "proof.json"
    out = ledger_cli(run_env, "prove", "5", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert set(doc) >= {"leaf_index", "tree_size", "entry_hash", "leaf_hash", "root_hash",
                        "audit_path"}  # fmt: skip
    proof_file.write_text(out.stdout)
    ok = ledger_cli(run_env, "verify-proof", str(proof_file), "--key", vkey)
    assert ok.returncode == 0 and "proof verified" in ok.stdout, ok.stdout + ok.stderr
    doc["entry_hash"] = "00" * 32
    proof_file.write_text(json.dumps(doc))
    bad = ledger_cli(run_env, "verify-proof", str(proof_file), "--key", vkey)
    assert bad.returncode == 1 and "REJECTED" in bad.stdout

    cons = ledger_cli(run_env, "consistency", "10", str(doc["tree_size"]), "--json")
    assert cons.returncode == 0 and json.loads(cons.stdout)["new_size"] == doc["tree_size"]
    show = ledger_cli(run_env, "show", "--from", "1", "--count", "3", "--json")
    assert [json.loads(line)["seq"] for line in show.stdout.splitlines()] == [1, 2, 3]
    note = ledger_cli(run_env, "checkpoint").stdout.split("\n")
    assert note[:2] == [settings.ledger.origin_for(settings.hostname), str(final_size)]


def test_undecodable_frames_do_not_stop_it(
    broker, start_service, rpc_client, pub, factory, settings
) -> None:
    ledger = start_ledger(start_service, rpc_client)
    size = join(pub, rpc_client)
    raw = factory.connect(zmq.PUB, settings.endpoint("events-in"))
    for _ in range(50):
        raw.send_multipart([b"audit.evil", b"\x00\x00\x00\x00\x02\x00\x00\x00" + b"\xff" * 16])
    wait_for(lambda: join(pub, rpc_client) > size, 20, "the ledger to keep recording")
    assert ledger.proc.poll() is None


def test_a_trickle_is_read_in_batches_and_all_recorded(
    broker, start_service, rpc_client, pub
) -> None:
    """Messages arriving one at a time are read a batch per wake-up (once read dry, the
    bus is left to fill for read_interval_ms), and every one is recorded."""
    start_ledger(start_service, rpc_client)
    start = join(pub, rpc_client)

    def pauses() -> float:
        return rpc_client.call("control.ledger", "health").value["metrics"]["ledger.read_pauses"]

    before = pauses()
    count = 60
    for i in range(count):
        event = {"kind": "start", "record": {"pid": 2000 + i, "name": "sh"}}
        pub.publish(Topics.PROCESS_START, "processEvent", event)
        time.sleep(0.002)  # pacing the sender into a trickle, not synchronising
    wait_for(lambda: ledger_head(rpc_client) >= start + count, 20, "the trickle recorded")
    batches = pauses() - before
    assert 1 <= batches < count // 2, f"{batches} pauses for {count} messages"


@pytest.fixture
def stopped_ledger(broker, start_service, rpc_client, pub, settings, run_env) -> Path:
    """A ledger with 300 entries and checkpoints, stopped cleanly: its data dir."""
    run_env["DAEMONEYE_LEDGER__CHECKPOINT_EVERY_ENTRIES"] = "50"
    ledger = start_ledger(start_service, rpc_client)
    join(pub, rpc_client)
    for i in range(300):
        pub.publish(Topics.audit("tester"), "auditRecord", audit_body("config.change", str(i)))
    wait_for(lambda: ledger_head(rpc_client) >= 300, 30, "300 entries")
    assert ledger.stop() == 0
    return Path(run_env["DAEMONEYE_DATA_DIR"])


def tampered_copy(data_dir: Path, tmp_path: Path, name: str, change: Callable) -> Path:
    copy = tmp_path / name
    shutil.copytree(data_dir, copy)
    store = Store(copy / "ledger" / "db")
    try:
        change(store)
    finally:
        store.close()
    return copy


def flip(store: Store, key: bytes, offset: int) -> None:
    value = bytearray(store.get(key))
    value[offset] ^= 0x20
    store.put(key, bytes(value))


def test_tampering_with_the_stopped_ledger_is_found_and_located(
    stopped_ledger: Path, tmp_path: Path, run_env
) -> None:
    intact = ledger_cli(run_env, "verify", "--json")
    assert intact.returncode == 0 and json.loads(intact.stdout)["ok"], intact.stdout
    cases = {
        "entry-byte": (lambda s: flip(s, entry_key(123), 70), 123),
        "payload-byte": (lambda s: flip(s, payload_key(77), 40), 77),
        "deleted-entry": (lambda s: s.delete(entry_key(200)), 200),
        "deleted-tail": (lambda s: [s.delete(entry_key(k)) for k in range(280, 400)], 280),
    }
    for name, (change, seq) in cases.items():
        copy = tampered_copy(stopped_ledger, tmp_path, name, change)
        # the public key comes from the intact original: an attacker could replace the copy's
        key = str(stopped_ledger / "ledger" / "ed25519.pub")
        result = ledger_cli(run_env, "--data-dir", str(copy), "verify", "--key", key, "--json")
        assert result.returncode == 1, (name, result.stdout, result.stderr)
        report = json.loads(result.stdout)
        assert report["first_bad_entry"] == seq, (name, report)
        human = ledger_cli(run_env, "--data-dir", str(copy), "verify", "--key", key)
        assert human.returncode == 1 and f"entry {seq}" in human.stdout, (name, human.stdout)


def test_kill_9_mid_append_then_restart(
    broker, start_service, rpc_client, pub, subscribe, settings, run_env
) -> None:
    run_env["DAEMONEYE_LEDGER__CHECKPOINT_EVERY_ENTRIES"] = "100"
    checkpoints = subscribe(Topics.CHECKPOINT)
    ledger = start_ledger(start_service, rpc_client)
    join(pub, rpc_client)

    stop_publishing = threading.Event()
    lock = threading.Lock()  # the publisher is used by this thread and by join() later

    def publish_forever() -> None:
        i = 0
        while not stop_publishing.is_set():
            with lock:
                pub.publish(Topics.audit("tester"), "auditRecord", audit_body("flood", str(i)))
            i += 1
            if i % 20 == 0:
                time.sleep(0.001)

    thread = threading.Thread(target=publish_forever, daemon=True)
    thread.start()
    try:
        wait_for(lambda: ledger_head(rpc_client) > 1500, 60, "1500 entries")
        ledger.kill()  # SIGKILL while entries are still streaming in
    finally:
        stop_publishing.set()
        thread.join(10)

    seen = []
    while (msg := checkpoints.recv(200)) is not None:
        seen.append((msg.body.treeSize, bytes(msg.body.rootHash)))
    assert seen, "no checkpoint was published before the kill"

    store = LedgerStore(open_store(db_path(settings), read_only=True))
    durable = store.size()
    last_hash = store.entry_hash(durable - 1)
    store.close()
    assert durable > 1500

    restarted = start_ledger(start_service, rpc_client)
    with lock:
        join(pub, rpc_client)
        for i in range(200):
            pub.publish(Topics.audit("tester"), "auditRecord", audit_body("after", str(i)))
    wait_for(lambda: ledger_head(rpc_client) >= durable + 200, 30, "entries after the restart")
    assert restarted.stop() == 0

    store = LedgerStore(open_store(db_path(settings), read_only=True))
    try:
        assert store.entry_hash(durable - 1) == last_hash  # nothing durable was rewritten
        after = store.entry(durable)
        assert after.seq == durable and after.prev_hash == last_hash  # chain continues
        assert after.action == "ledger.start"  # the restart itself is on the record
        assert json.loads(store.payload(durable))["resumed_at"] == durable
        for size, root in seen:  # every published head is still the ledger's history
            assert size <= durable and store.root(size) == root
    finally:
        store.close()
    result = ledger_cli(run_env, "verify")
    assert result.returncode == 0, result.stdout + result.stderr


def test_first_checkpoint_within_seconds_of_start(
    broker, start_service, rpc_client, pub, settings, run_env
) -> None:
    """With the default cadence (every 60 s or 10,000 entries), the first checkpoint is
    signed at once: `ledger checkpoint` never answers "no checkpoint yet" for a minute."""
    assert settings.ledger.checkpoint_every_s >= 60  # the defaults: a timer alone would wait
    assert settings.ledger.checkpoint_every_entries >= 10_000
    started = time.monotonic()
    start_ledger(start_service, rpc_client)
    join(pub, rpc_client)  # the ledger's start entry and a probe

    def signed() -> bool:
        out = ledger_cli(run_env, "checkpoint")
        return out.returncode == 0 and out.stdout.startswith(
            settings.ledger.origin_for(settings.hostname)
        )

    wait_for(signed, 15, "a signed checkpoint from `daemoneye ledger checkpoint`")
    assert time.monotonic() - started < 30
    note = ledger_cli(run_env, "checkpoint").stdout.split("\n")
    assert int(note[1]) >= 1  # the tree size it signs
