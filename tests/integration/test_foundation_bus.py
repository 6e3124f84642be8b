"""The bus end to end: a real broker, real ipc sockets, publishers in other processes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import zmq

from daemoneye import service, wire
from daemoneye.bus import Publisher, SocketFactory, Subscriber
from daemoneye.config import Settings
from daemoneye.service import Service
from tests.conftest import close_in_process, open_in_process, wait_for

REPO = Path(__file__).resolve().parents[2]

PUBLISHER_SCRIPT = textwrap.dedent(
    """
    import select, sys, zmq
    from daemoneye.bus import Publisher, SocketFactory
    from daemoneye.config import load_settings
    settings = load_settings()
    factory = SocketFactory(settings)
    pub = Publisher(factory.connect(zmq.PUB, settings.endpoint("events-in")), sys.argv[1])
    count, skip = int(sys.argv[2]), int(sys.argv[3])
    # Handshake: publish probes until the test's subscriber has seen one (it then
    # writes a line to our stdin), so no counted message is lost to the slow joiner.
    while True:
        pub.publish("probe.ready", "empty")
        if select.select([sys.stdin], [], [], 0.02)[0]:
            sys.stdin.readline()
            break
    for i in range(count):
        if skip and i == count // 2:
            pub.continue_from("events.process", pub.last_seq("events.process") + skip)
        record = {"pid": i, "name": "n%d" % i, "cmdline": ["a", str(i)]}
        pub.publish("events.process.start", "processEvent", {"kind": "start", "record": record})
    factory.shutdown()
    """
)


def run_publisher(env: dict[str, str], source: str, count: int, skip: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", PUBLISHER_SCRIPT, source, str(count), str(skip)],
        env=env,
        stdin=subprocess.PIPE,
        text=True,
    )


def release_when_probed(sub: Subscriber, proc: subprocess.Popen) -> None:
    wait_for(
        lambda: (m := sub.recv(100)) is not None and m.topic == "probe.ready",
        15,
        "the publisher's probe",
    )
    proc.stdin.write("go\n")
    proc.stdin.flush()


def test_no_loss_across_processes_at_steady_state(broker, subscribe, run_env) -> None:
    sub = subscribe("events.process.", "probe.")
    proc = run_publisher(run_env, "pub-a", 20_000, 0)
    release_when_probed(sub, proc)
    pids = []
    while len(pids) < 20_000:
        msg = sub.recv(10_000)
        assert msg is not None, f"only {len(pids)} of 20000 arrived"
        if msg.topic.startswith("events.process."):
            pids.append(msg.body.record.pid)
    assert proc.wait(30) == 0
    assert pids == list(range(20_000))
    assert sub.stats.gaps == 0 and sub.stats.dropped_malformed == 0


def test_a_gap_is_detected_and_counted(broker, subscribe, run_env) -> None:
    sub = subscribe("events.process.", "probe.")
    proc = run_publisher(run_env, "pub-gap", 100, 7)
    release_when_probed(sub, proc)
    got = 0
    while got < 100:
        msg = sub.recv(10_000)
        assert msg is not None
        got += msg.topic.startswith("events.")
    assert proc.wait(30) == 0
    assert (sub.stats.gaps, sub.stats.missing) == (1, 7)


def test_malformed_and_oversized_frames_are_dropped_and_counted(
    broker, subscribe, settings: Settings, factory: SocketFactory, rpc_client
) -> None:
    sub = subscribe("")
    pub_sock = factory.connect(zmq.PUB, settings.endpoint("events-in"))
    pub = Publisher(pub_sock, "hostile")

    # Wait until our publisher's frames flow through (the slow joiner): until its own
    # probe comes back, not any message. The subscriber takes every topic, so a broker
    # heartbeat could end the wait while the PUB had not yet joined, and a PUB drops
    # what it sends before then: the first hostile frames vanished unseen (5 of 6).
    def probe_heard() -> bool:
        pub.publish("probe.ready", "empty")
        while (msg := sub.recv(50)) is not None:
            if msg.topic == "probe.ready":
                return True
        return False

    wait_for(probe_heard, 15, "our own probe")

    pub_sock.send_multipart([b"events.process.start", b"not capnp at all"])
    pub_sock.send_multipart([b"events.process.start", b"\x00" * 16])
    pub_sock.send_multipart([b"a", b"b", b"c"])
    pub_sock.send(b"events.lonely-topic-frame")  # one frame: no envelope at all
    pub_sock.send_multipart(
        [b"\xff\xfe", wire.encode_envelope(wire.Header("x", "b", 1, 0), "empty")]
    )
    pub_sock.send_multipart([b"events.big", b"\x00" * (settings.bus.max_event_bytes + 8)])
    pub.publish("events.process.start", "processEvent", {"kind": "start", "record": {"pid": 4242}})

    def after_drops():
        msg = sub.recv(100)
        return msg if msg is not None and msg.topic == "events.process.start" else None

    msg = wait_for(after_drops, 15, "the valid message after the bad ones")
    assert msg.body.record.pid == 4242  # the broker kept forwarding
    # The broker forwards in C; the subscriber checks every frame it receives and drops
    # and counts each bad one before handing anything on (two of shape, one oversize,
    # three malformed), in order: all six before the valid message after them.
    assert (sub.stats.dropped_malformed, sub.stats.dropped_oversize) == (6, 1)
    assert sub.stats.received >= 2  # the probe and the valid event, nothing else
    stats = rpc_client.call("control.broker", "stats").value
    assert stats["frames_in"] >= 2 * 2 + 6  # the bad frames went through as frames
    assert rpc_client.call("control.broker", "health").value["state"] == "running"


def test_a_foreign_subscriber_decodes_every_message(broker, settings: Settings, run_env) -> None:
    """Any ZeroMQ SUB with pycapnp and schemas/*.capnp decodes the bus, without our code."""
    script = textwrap.dedent(
        f"""
        import json, sys, capnp, zmq
        capnp.remove_import_hook()
        schema = capnp.load({str(REPO / "schemas" / "daemoneye.capnp")!r})
        ctx = zmq.Context()
        sub = ctx.socket(zmq.SUB)
        sub.connect({settings.endpoint("events-out")!r})
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        out = []
        while len(out) < 3:
            topic, data = sub.recv_multipart()
            with schema.Envelope.from_bytes(data) as env:
                out.append({{"topic": topic.decode(), "kind": env.body.which(),
                            "source": env.sourceId, "service": env.body.heartbeat.service}})
        print(json.dumps(out))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], env=run_env, capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    messages = json.loads(out.stdout)
    assert all(m["kind"] == "heartbeat" and m["service"] == "broker" for m in messages)
    assert all(m["topic"].startswith("control.health.heartbeat.broker@") for m in messages)


SEND_AND_EXIT_SCRIPT = textwrap.dedent(
    """
    import sys, zmq
    from daemoneye.bus import SocketFactory
    from daemoneye.config import load_settings
    settings = load_settings()
    factory = SocketFactory(settings)
    sock = factory.connect(zmq.PUSH, sys.argv[1])  # nobody there yet: all of it is queued
    for i in range(int(sys.argv[2])):
        sock.send(b"%d" % i)
    print("sent", flush=True)
    getattr(factory, sys.argv[3])()
    """
)


def test_a_process_that_exits_right_after_sending_delivers_everything(
    settings: Settings, factory: SocketFactory, run_env
) -> None:
    """SocketFactory.shutdown waits (up to the linger time) for queued messages to leave;
    closing the sockets alone lost what libzmq's I/O thread still held at exit."""
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    endpoint = f"ipc://{settings.run_dir}/exit-flush"
    count = 50_000
    sender = subprocess.Popen(
        [sys.executable, "-c", SEND_AND_EXIT_SCRIPT, endpoint, str(count), "shutdown"],
        env={**run_env, "DAEMONEYE_BUS__SEND_HWM": "0", "DAEMONEYE_BUS__LINGER_MS": "60000"},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert sender.stdout.readline() == "sent\n"
    pull = factory.bind(zmq.PULL, endpoint)  # the receiver appears as the sender closes
    received = 0
    while received < count and pull.poll(10_000):
        assert pull.recv() == b"%d" % received
        received += 1
    assert received == count
    assert sender.wait(30) == 0


class _Batched(Service):
    """Records the topics of each burst on_drained closes."""

    name = "batched"
    subscriptions = ("t.",)

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.pending: list[str] = []
        self.bursts: list[list[str]] = []

    def on_message(self, msg) -> None:
        self.pending.append(msg.topic)

    def on_drained(self) -> None:
        if self.pending:
            self.bursts.append(self.pending)
            self.pending = []


def test_a_batch_wait_gathers_a_burst_into_one_drain(broker, settings, factory) -> None:
    svc = open_in_process(_Batched(settings))
    loop = threading.Thread(target=svc._loop, daemon=True)
    pub = Publisher(factory.connect(zmq.PUB, settings.endpoint("events-in")), "batcher")
    try:
        loop.start()
        # joined (no wait yet): a probe goes through
        wait_for(lambda: pub.publish("t.probe", "empty") and svc.bursts, 15, "a first probe")
        svc.bus_batch_wait_s = 5.0  # long: the test sends the rest while the loop waits
        sock = svc.subscriber.sock
        pub.publish("t.go", "empty")
        wait_for(lambda: sock not in svc._watched, 15, "the loop to defer the first message")
        for _ in range(9):
            pub.publish("t.more", "empty")
        wait_for(lambda: any("t.go" in b for b in svc.bursts), 30, "the burst to be handled")
        mine = [[t for t in b if t != "t.probe"] for b in svc.bursts]
        mine = [b for b in mine if b]
        assert mine == [["t.go"] + ["t.more"] * 9], mine  # one drain, one on_drained
        assert svc.events.count == sum(len(b) for b in svc.bursts)  # counted once a burst
    finally:
        svc.stop("test")
        loop.join(10)
        close_in_process(svc)


def _loop_with_burst_log(
    settings, factory, kind: type[_Batched] = _Batched
) -> tuple[_Batched, threading.Thread, Publisher]:
    svc = open_in_process(kind(settings))
    loop = threading.Thread(target=svc._loop, daemon=True)
    pub = Publisher(factory.connect(zmq.PUB, settings.endpoint("events-in")), "batcher")
    loop.start()
    # joined (no wait yet): a probe goes through; then a marker, after every probe sent
    # (one publisher's messages keep their order): none is left to arm a wait of the test's
    wait_for(lambda: pub.publish("t.probe", "empty") and svc.bursts, 15, "a first probe")
    pub.publish("t.sync", "empty")
    wait_for(lambda: any("t.sync" in b for b in svc.bursts), 15, "the probes drained")
    return svc, loop, pub


class _Woken(_Batched):
    """Counts the wake-ups a message's arrival gave the loop (the socket was watched)."""

    name = "woken"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.arrivals = 0
        self.reads = 0  # drains of the bus, empty ones too

    def _on_bus(self) -> None:
        self.arrivals += 1
        super()._on_bus()

    def on_drained(self) -> None:
        self.reads += 1
        super().on_drained()


def test_a_busy_bus_is_read_a_batch_wait_after_the_last_read(broker, settings, factory) -> None:
    """Messages still coming: the read after a batch wait arms the next one a wait later
    and leaves the socket unwatched, so what arrives meanwhile wakes nobody (one wake-up a
    batch, not two: the first arrival's and the wait's end). A read that finds nothing
    watches the socket again."""
    svc, loop, pub = _loop_with_burst_log(settings, factory, _Woken)
    try:
        svc.bus_batch_wait_s = 1.0  # long: the test sends the second batch meanwhile
        arrivals = svc.arrivals
        for _ in range(service.BUSY_BATCH):
            pub.publish("t.go", "empty")
        wait_for(lambda: ["t.go"] * service.BUSY_BATCH in svc.bursts, 30, "the first batch")
        for _ in range(3):
            pub.publish("t.more", "empty")
        wait_for(lambda: ["t.more"] * 3 in svc.bursts, 30, "the second batch")
        wait_for(lambda: svc.subscriber.sock in svc._watched, 30, "the socket watched again")
        assert svc.arrivals - arrivals == 1  # the first t.go's arrival alone woke the loop
    finally:
        svc.stop("test")
        loop.join(10)
        close_in_process(svc)


class _SlowBatch(_Batched):
    """Holds the work of its first `t.slow` burst until the test releases it (a batch
    whose work outlasts the batch wait); notes when each burst's read began."""

    name = "slow-batch"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.inside, self.release = threading.Event(), threading.Event()
        self.released_at = 0.0
        self.read_at: list[float] = []

    def on_message(self, msg) -> None:
        if not self.pending:
            self.read_at.append(time.monotonic())
        super().on_message(msg)

    def on_drained(self) -> None:
        slow = "t.slow" in self.pending
        super().on_drained()
        if slow and not self.release.is_set():
            self.inside.set()
            self.release.wait(30)
            self.released_at = time.monotonic()


def test_a_batch_whose_work_outlasts_the_wait_is_followed_by_a_read_at_once(
    broker, settings, factory
) -> None:
    """The next read of a busy bus is due a batch wait after the last read, not after
    the last batch's work: what came during long work has waited that long already (a
    storm's alerts waited the work and then a whole wait more)."""
    svc, loop, pub = _loop_with_burst_log(settings, factory, _SlowBatch)
    try:
        svc.bus_batch_wait_s = 1.0
        for _ in range(service.BUSY_BATCH):
            pub.publish("t.slow", "empty")
        assert svc.inside.wait(30), "the slow batch was never read"
        slow_read = svc.read_at[-1]
        for _ in range(3):
            pub.publish("t.more", "empty")
        wait_for(lambda: time.monotonic() > slow_read + 1.0, 30, "the work to outlast the wait")
        svc.release.set()
        wait_for(lambda: ["t.more"] * 3 in svc.bursts, 30, "the messages sent during the work")
        waited = svc.read_at[-1] - svc.released_at
        assert waited < svc.bus_batch_wait_s, f"read {waited:.3f} s after the work ended"
    finally:
        svc.release.set()
        svc.stop("test")
        loop.join(10)
        close_in_process(svc)


def test_a_trickle_is_watched_again_after_each_batch(broker, settings, factory) -> None:
    """A batch wait that gathered less than BUSY_BATCH messages: the socket is watched
    again at once (a read armed a wait later would most often find nothing)."""
    svc, loop, pub = _loop_with_burst_log(settings, factory, _Woken)
    try:
        svc.bus_batch_wait_s = 0.2
        sock = svc.subscriber.sock
        reads = svc.reads
        for n in range(1, 4):
            pub.publish("t.alone", "empty")
            wait_for(lambda n=n: svc.bursts.count(["t.alone"]) == n, 30, "the lone message")
            wait_for(lambda: sock in svc._watched, 30, "the socket watched again")
        assert svc.reads - reads == 3  # one read each, no empty read armed after it
    finally:
        svc.stop("test")
        loop.join(10)
        close_in_process(svc)


def test_timers_due_while_a_batch_waits_run_after_its_drain(broker, settings, factory) -> None:
    """A timer (the detector's scheduled rules, its window trim: several ms each, more
    with a full window) that comes due while a batch waits would delay the batch past its
    wait: it runs once the batch is drained instead, in the same wake-up."""
    svc, loop, pub = _loop_with_burst_log(settings, factory)
    log: list[str] = []
    try:
        svc.every(0.02, lambda: log.append("tick"))
        svc.bus_batch_wait_s = 1.0  # long: many ticks come due meanwhile
        drained = len(svc.bursts)
        on_drained = svc.on_drained
        svc.on_drained = lambda: (
            log.append("drain") if "t.go" in svc.pending else None,
            on_drained(),
        )
        wait_for(lambda: "tick" in log, 15, "the tick to run")
        pub.publish("t.go", "empty")
        wait_for(lambda: svc.subscriber.sock not in svc._watched, 15, "the batch wait")
        log.append("armed")
        wait_for(lambda: len(svc.bursts) > drained, 30, "the batch to be drained")
        wait_for(lambda: log[-1] == "tick", 15, "a tick after the drain")
        after_armed = log[log.index("armed") + 1 :]
        assert after_armed[0] == "drain", after_armed[:5]  # no tick ran while it waited
    finally:
        svc.stop("test")
        loop.join(10)
        close_in_process(svc)
