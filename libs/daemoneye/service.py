"""The service base: sockets, registration, heartbeats, RPC dispatch, signals, shutdown.

A service is a small class that declares the topics it subscribes to and the RPC
verbs it answers (`@rpc("verb")` methods). The base wires the sockets, runs one
poll loop, publishes `control.health.heartbeat.<id>` every interval, re-registers
with the broker on every heartbeat (so a restarted broker relearns routes) and
stops cleanly on SIGTERM/SIGINT. Unit tests call handlers directly.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import psutil
import zmq

from daemoneye import logs, memory, priority, private, wire
from daemoneye.bus import Gap, Message, Publisher, SocketFactory, Subscriber, Topics, new_boot_id
from daemoneye.config import Settings
from daemoneye.metrics import stream_figures
from daemoneye.rpc import (
    Request,
    Routed,
    RpcFault,
    RpcResult,
    at_service,
    decode_reply,
    decode_request,
    encode_reply,
    encode_request,
    error_reply,
    reply_frames,
    result_reply,
)

__all__ = ["Request", "RpcFault", "RpcResult", "Service", "rpc"]

# The longest the loop sleeps. Signals and stop() write to a wake-up pipe the loop
# polls, so it sleeps until its next timer; without the pipe (a loop run off the main
# thread cannot have signals write to it), a short bound on how late a stop flag is seen.
IDLE_POLL_MS = 60_000
# A poll that returned sooner than this did not sleep: what it found ready came while the
# loop was busy (see Service._ready_since)
SLEPT_S = 0.001
_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)
MAX_POLL_MS = 200
# Messages a batch wait gathered from which the bus counts as busy: the next read is
# then armed a wait later instead of watching the socket. At 200 exec/s the detector's
# batches hold ~2-3 and this saves a wake-up a batch; at 50/s they hold one, and reads
# armed after them found nothing half the time (+6 / +20 % of the detector's CPU in two
# pairs at 50/s with every batch arming one)
BUSY_BATCH = 2


def rpc(verb: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark a method `(self, request: Request) -> Any | RpcResult` as the handler of `verb`."""

    def mark(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn._rpc_verb = verb  # type: ignore[attr-defined]
        return fn

    return mark


@dataclass
class _Timer:
    interval_s: float | None  # None: runs once
    fn: Callable[[], None]
    due: float = 0.0
    # When due, the monotonic time before which fn has nothing to do (<= now: run now,
    # inf: not before the loop handles something). See Service.every.
    idle_until: Callable[[], float] | None = None
    resting: bool = False  # due, but idle_until said wait: re-asked on each activity
    ran_at: float = float("-inf")


@dataclass
class RateMeter:
    """Events per second over the last heartbeat interval."""

    count: int = 0
    _last_count: int = 0
    _last_t: float = field(default_factory=time.monotonic)
    rate: float = 0.0

    def add(self, n: int = 1) -> None:
        self.count += n

    def sample(self) -> float:
        now = time.monotonic()
        elapsed = now - self._last_t
        if elapsed > 0:
            self.rate = (self.count - self._last_count) / elapsed
        self._last_count, self._last_t = self.count, now
        return self.rate


class Service:
    name: ClassVar[str] = ""
    subscriptions: ClassVar[tuple[str, ...]] = ()
    # How long one wake-up may spend on bus messages before RPCs and timers get a turn
    # (a batch message can hold hundreds of events).
    drain_budget_s: ClassVar[float] = 0.05
    # How long the first message of a burst may wait for more before the service handles
    # them (0: at once). At moderate rates (a message every few ms) a wait of 10-20 ms
    # makes one wake-up, one on_drained and one flush of many messages instead of one
    # each; a backlog (a drain cut by drain_budget_s) is handled without waiting.
    bus_batch_wait_s: ClassVar[float] = 0.0
    # Whether it registers with the broker (and deregisters on the way out): every
    # service but the broker, which is the registry.
    registers: ClassVar[bool] = True
    # How often freed heap pages go back to the kernel while busy (see daemoneye.memory)
    trim_interval_s: ClassVar[float] = memory.TRIM_INTERVAL_S

    def __init__(self, settings: Settings, service_id: str | None = None) -> None:
        self.settings = settings
        self.service_id = service_id or f"{self.name}@{settings.hostname}"
        self.boot_id = new_boot_id()
        self.started_ns = time.time_ns()
        self.started = time.monotonic()
        self.log = logging.getLogger(f"daemoneye.{self.name}")
        self.factory = SocketFactory(settings)
        self.publisher: Publisher | None = None
        self.subscriber: Subscriber | None = None
        self.control: zmq.Socket | None = None
        self.events = RateMeter()
        self.state = "running"
        self.notes: list[str] = []
        self._stopping = False
        self._stop_reason = ""
        self._watched: dict[zmq.Socket | int, Callable[[], None]] = {}
        # kept up to date by watch/unwatch, not rebuilt: services unwatch a socket while
        # they gather (bus_batch_wait_s, the collector's gather_ms) and watch it again
        # after, several times a second under load
        self._poller = zmq.Poller()
        self._wake_r: int | None = None  # the wake-up pipe (see IDLE_POLL_MS)
        self._wake_w: int | None = None
        self._poll_bound_ms = MAX_POLL_MS
        self._trimmed_at = -1  # activity count at the last heap trim
        self._bus_backlog = False  # the last drain was cut by drain_budget_s
        # When the batch wait (bus_batch_wait_s) ends, while one is armed: the loop's
        # other timers wait for it, so a timer due meanwhile delays no batch
        self._bus_wait_due: float | None = None
        self._drained_at = 0.0  # when the last drain found the socket empty (or was cut)
        # The earliest a socket the last poll found ready can have become so: when the
        # poll slept, its return; else when the loop last woke (it was busy since)
        self._ready_since = 0.0
        self._timers: list[_Timer] = []
        self._active = False  # the loop handled something since resting timers were asked
        self._beats = 0  # heartbeats published: not work that frees heap (_trim)
        self._process = psutil.Process()
        self._process.cpu_percent()  # prime: the first call always returns 0
        self._early: list[Routed] = []  # requests that came before setup() was done
        self.verbs: dict[str, Callable[[Request], Any]] = {}
        for attr in dir(type(self)):
            verb = getattr(getattr(type(self), attr), "_rpc_verb", None)
            if verb:
                self.verbs[verb] = getattr(self, attr)

    # --- hooks for subclasses -------------------------------------------------

    def setup(self) -> None:
        """Open stores and extra sockets; called after the bus sockets exist."""

    def teardown(self) -> None:
        """Flush and close what setup opened; called once on the way out."""

    def on_message(self, msg: Message) -> None:
        """One decoded bus message on a subscribed topic."""

    def on_drained(self) -> None:
        """After each burst of bus messages: flush what on_message staged (one write per
        burst rather than per message)."""

    def on_gap(self, gap: Gap) -> None:
        """Messages of a source's stream were missed; override to repair by replay."""

    def on_reload(self) -> None:
        """SIGHUP: reload configuration or rules."""

    def metrics(self) -> dict[str, float]:
        """Service-specific figures for heartbeats and health replies (reads only)."""
        return {}

    def refresh_status(self) -> None:
        """Bring `state` and `notes` up to date from what the service watches; called
        before each heartbeat and health reply."""

    def queue_depth(self) -> int:
        return 0

    def niceness(self) -> int | None:
        """The niceness `run` gives every thread of this service (None: as started)."""
        return None

    # --- wiring ---------------------------------------------------------------

    def open_sockets(self) -> None:
        settings = self.settings
        pub = self.factory.connect(zmq.PUB, settings.endpoint("events-in"))
        self.publisher = Publisher(pub, self.service_id, self.boot_id)
        self.control = self.factory.connect(zmq.DEALER, settings.endpoint("control"))
        self.watch(self.control, self._on_control)
        if self.subscriptions:
            sub = self.factory.connect(zmq.SUB, settings.endpoint("events-out"))
            self.subscriber = Subscriber(
                sub, self.subscriptions, settings.bus.max_event_bytes, self.on_gap, watch_tails=True
            )
            self.watch(sub, self._on_bus)

    def watch(self, sock: zmq.Socket | int, handler: Callable[[], None]) -> None:
        """Call `handler` when `sock` (a ZeroMQ socket or a file descriptor) is readable."""
        if sock not in self._watched:
            self._poller.register(sock, zmq.POLLIN)
        self._watched[sock] = handler

    def unwatch(self, sock: zmq.Socket | int) -> None:
        if self._watched.pop(sock, None) is not None:
            self._poller.unregister(sock)

    def every(
        self,
        interval_s: float,
        fn: Callable[[], None],
        first_in_s: float = 0.0,
        idle_until: Callable[[], float] | None = None,
    ) -> _Timer:
        """Call `fn` every `interval_s`; the timer returned may be moved (its `due`).

        `idle_until`: asked when the timer is due, the monotonic time before which `fn`
        would have nothing to do (<= now: run it now; inf: nothing until the loop handles
        a message, a request, a wake-up or another timer). Till then the timer rests and
        costs no wake-up; it is asked again after each such activity, and runs no sooner
        than `interval_s` after its last run. An idle service then sleeps between the
        timers that must run (heartbeats) instead of waking for work that is not there.
        What it says may change only with the loop's activity or with the time it
        names: a thread that gives a resting timer work must wake the loop (_wake)."""
        timer = _Timer(interval_s, fn, time.monotonic() + first_in_s, idle_until)
        self._timers.append(timer)
        return timer

    def once(self, delay_s: float, fn: Callable[[], None]) -> None:
        """Call `fn` once, `delay_s` from now, unless it is already waiting to run."""
        if not any(t.interval_s is None and t.fn == fn for t in self._timers):
            self._timers.append(_Timer(None, fn, time.monotonic() + delay_s))

    def raise_priority(self, nice: int) -> None:
        """Every thread, now and later, at niceness `nice` (daemoneye.priority); without
        the right to raise it, a note in the status instead."""
        why = priority.boost(nice)
        if why:
            self.notes.append(why)
            self.log.info("%s", why)

    def stop(self, reason: str = "requested") -> None:
        if not self._stopping:
            self._stopping = True
            self._stop_reason = reason
            self.state = "stopping"
            self._wake()

    def _wake(self) -> None:
        """Make the loop's poll return now (from a thread, or a signal handler)."""
        if self._wake_w is not None:
            # full (the loop is already due to wake) or closed: nothing to do
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"\0")

    @property
    def stopping(self) -> bool:
        return self._stopping

    # --- running --------------------------------------------------------------

    def run(self) -> int:
        memory.tune()  # first: open_sockets() starts ZeroMQ's thread, setup() RocksDB's
        logs.configure(self.name, self.service_id, self.settings.log_level)
        why = private.protect(self.settings.data_dir)  # before any file: umask 027
        if why:
            self.log.warning("%s", why)
            self.notes.append(why)
        self._install_signals()
        nice = self.niceness()
        if nice is not None:  # in run, not setup: a unit test's setup() leaves pytest alone
            self.raise_priority(nice)
        try:
            self.open_sockets()
            self.setup()
        except Exception as exc:
            self.log.error("cannot start: %s", exc)
            self.factory.close_all(linger_ms=0)
            return 1
        for request in self._early:  # answered now: `health` means set up, not starting
            self._answer(request)
        self._early.clear()
        self.every(self.settings.heartbeat_interval_s, self.heartbeat)
        # freed heap pages back to the kernel now and then (see daemoneye.memory), once
        # after work: an idle service has nothing to free
        self.every(self.trim_interval_s, self._trim, self.trim_interval_s, self._trim_idle_until)
        self.log.info("started", extra={"pid": os.getpid(), "boot_id": self.boot_id})
        self._open_wakeup()
        try:
            self._loop()
        finally:
            self._close_wakeup()
            self.log.info("stopping", extra={"reason": self._stop_reason})
            try:
                self.teardown()
            finally:
                self._deregister()
                self.factory.shutdown()
        self.log.info("stopped")
        return 0

    def _install_signals(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.stop("SIGTERM"))
        signal.signal(signal.SIGINT, lambda *_: self.stop("SIGINT"))
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, lambda *_: self._safely(self.on_reload))

    def _open_wakeup(self) -> None:
        """A pipe that signals (through signal.set_wakeup_fd) and stop() write to, polled
        with the sockets: the loop can then sleep until its next timer instead of waking
        every MAX_POLL_MS to look at its stop flag."""
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        self._wake_r, self._wake_w = r, w
        self.watch(r, self._drain_wakeup)
        try:
            signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        except ValueError:  # not the main thread: signals cannot wake the poll
            return
        self._poll_bound_ms = IDLE_POLL_MS

    def _close_wakeup(self) -> None:
        if self._wake_r is None:
            return
        if self._poll_bound_ms == IDLE_POLL_MS:
            signal.set_wakeup_fd(-1)
        self.unwatch(self._wake_r)
        r, w = self._wake_r, self._wake_w
        self._wake_r = self._wake_w = None
        self._poll_bound_ms = MAX_POLL_MS
        os.close(r)
        os.close(w)  # type: ignore[arg-type]

    def _drain_wakeup(self) -> None:
        try:
            while os.read(self._wake_r, 512):  # type: ignore[arg-type]
                pass
        except (BlockingIOError, TypeError):
            pass

    def _activity(self) -> int:
        """Messages handled and published, heartbeats aside."""
        sent = self.publisher.sent if self.publisher else 0
        return self.events.count + sent - self._beats

    def _trim(self) -> None:
        """Hand freed heap pages back, when there was work since the last time: at idle
        nothing is freed, and a trim walks every heap (see daemoneye.memory)."""
        activity = self._activity()
        if activity != self._trimmed_at:
            self._trimmed_at = activity
            memory.trim()

    def _trim_idle_until(self) -> float:
        return 0.0 if self._activity() != self._trimmed_at else float("inf")

    def _loop(self) -> None:
        poller = self._poller
        woke = time.monotonic()
        while not self._stopping:
            if self._active:
                self._wake_resting()
            now = time.monotonic()
            next_due = self._bus_wait_due
            if next_due is None:
                next_due = min((t.due for t in self._timers), default=now + 1)
            wait_ms = (next_due - now) * 1000
            timeout_ms = (
                self._poll_bound_ms if wait_ms >= self._poll_bound_ms else max(0, int(wait_ms) + 1)
            )
            try:
                ready = poller.poll(timeout_ms)
            except zmq.ZMQError as exc:
                if exc.errno == zmq.ETERM:
                    break
                raise
            last, woke = woke, time.monotonic()
            self._ready_since = woke if woke - now >= SLEPT_S else last
            for sock, _ in ready:
                handler = self._watched.get(sock)
                if handler:
                    self._active = True
                    self._safely(handler)
            self._run_timers()

    def _run_timers(self) -> None:
        now = time.monotonic()
        wait_due = self._bus_wait_due
        if wait_due is not None:
            if wait_due > now:
                return  # a batch waits: timers due meanwhile run after its drain, not before
            self._bus_wait_due = None
            self._active = True  # a drain is work: resting timers are asked again
            self._safely(self._on_bus_after_wait)
        for timer in list(self._timers):
            if timer.due <= now:
                if timer.idle_until is not None:
                    until = self._idle_until(timer)
                    if until > now:  # nothing to do yet: rest (see every)
                        timer.due, timer.resting = until, True
                        continue
                    timer.resting = False
                if timer.interval_s is None:
                    self._timers.remove(timer)
                else:
                    timer.due = now + timer.interval_s
                timer.ran_at = now
                self._active = True
                self._safely(timer.fn)
                if timer.idle_until is not None:  # rest now rather than wake to be told
                    until = self._idle_until(timer)
                    if until > timer.due:
                        timer.due, timer.resting = until, True

    def _wake_resting(self) -> None:
        """The loop did something: ask each resting timer again whether it has work."""
        self._active = False
        for timer in self._timers:
            if timer.resting:
                assert timer.idle_until is not None and timer.interval_s is not None
                timer.due = max(self._idle_until(timer), timer.ran_at + timer.interval_s)

    def _idle_until(self, timer: _Timer) -> float:
        assert timer.idle_until is not None
        try:
            return timer.idle_until()
        except Exception:  # a broken estimate must not stop the loop: run the timer
            self.log.exception("idle_until of %s failed", getattr(timer.fn, "__name__", "?"))
            return 0.0

    def _safely(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:
            self.log.exception("handler %s failed; continuing", getattr(fn, "__name__", fn))

    def _on_bus(self) -> None:
        sub = self.subscriber
        assert sub is not None
        if self.bus_batch_wait_s > 0 and not self._bus_backlog:
            # The first message of a burst: let more come; the socket is not watched
            # until the wait ends (else every arrival would wake the loop). The wait counts
            # from when the message can have come: one that came during a long timer or
            # flush has waited that long already.
            due = (self._ready_since or time.monotonic()) + self.bus_batch_wait_s
            if due > time.monotonic():
                self.unwatch(sub.sock)
                self._bus_wait_due = due
                return
        self._drain_bus(sub)

    def _on_bus_after_wait(self) -> None:
        sub = self.subscriber
        assert sub is not None
        handled = self._drain_bus(sub)
        if handled >= BUSY_BATCH and not self._bus_backlog:
            # busy: read again a batch wait after this read found the socket empty,
            # whatever comes meanwhile (one wake-up a batch, not two: the first arrival's
            # and the wait's end). Counted from the read, not from the end of the batch's
            # work: a message that came during a long batch has waited that long already
            self._bus_wait_due = self._drained_at + self.bus_batch_wait_s
        else:  # a trickle: the next read would most often find nothing, a wake-up lost
            self.watch(sub.sock, self._on_bus)

    def _drain_bus(self, sub: Subscriber) -> int:
        deadline = time.monotonic() + self.drain_budget_s
        on_message = self.on_message
        handled = 0
        cut = False
        try:
            for msg in sub.drain():
                handled += 1
                try:
                    on_message(msg)
                except wire.DecodeError as exc:
                    sub.count_malformed(
                        f"{msg.topic} from {msg.envelope.sourceId}: {exc}", msg.topic
                    )
                except Exception:
                    self.log.exception("handling %s failed; continuing", msg.topic)
                if time.monotonic() > deadline:
                    cut = True
                    break  # the rest waits on the socket; the poller wakes the loop at once
        finally:
            self.events.add(handled)  # once a burst, not per message
            # a backlog (cut by the budget or by drain's frame limit) is handled without
            # the batch wait until it is gone
            self._bus_backlog = cut or (
                self.bus_batch_wait_s > 0 and bool(sub.sock.getsockopt(_EVENTS) & _POLLIN)
            )
            self._drained_at = time.monotonic()
            self.on_drained()
        return handled

    def audit(self, action: str, subject: str = "", detail: dict[str, Any] | None = None) -> None:
        """Publish an `audit.<service>` record (rule loads, config changes, deliveries...)."""
        assert self.publisher is not None
        self.publisher.publish(
            Topics.audit(self.name),
            "auditRecord",
            {
                "actor": self.service_id,
                "action": action,
                "subject": subject,
                "detailJson": json.dumps(detail or {}, default=str),
                "timeNs": time.time_ns(),
            },
        )

    # --- heartbeats and registration -----------------------------------------

    def heartbeat(self) -> None:
        assert self.publisher is not None
        self.events.sample()
        self.publisher.publish(
            Topics.heartbeat(self.service_id), "heartbeat", self.heartbeat_body()
        )
        self._beats += 1
        self._register("register")

    def heartbeat_body(self) -> dict[str, Any]:
        self.refresh_status()
        with self._process.oneshot():
            rss = self._process.memory_info().rss
            cpu = self._process.cpu_percent()
        metrics = {**self._bus_metrics(), **self.metrics()}
        return {
            "service": self.name,
            "serviceId": self.service_id,
            "pid": os.getpid(),
            "hostname": self.settings.hostname,
            "state": self.state,
            "intervalMs": int(self.settings.heartbeat_interval_s * 1000),
            "uptimeS": time.monotonic() - self.started,
            "eventsPerSec": self.events.rate,
            "queueDepth": self.queue_depth(),
            "rssBytes": rss,
            "cpuPercent": cpu,
            "metrics": [{"name": k, "value": float(v)} for k, v in metrics.items()],
            "notes": list(self.notes),
            "streams": [
                {"stream": stream, "lastSeq": seq}
                for stream, seq in (self.publisher.positions() if self.publisher else {}).items()
            ],
        }

    def _bus_metrics(self) -> dict[str, float]:
        if self.subscriber is None:
            return {}
        s = self.subscriber.stats
        return {
            "bus.received": s.received,
            "bus.dropped": s.dropped_malformed,
            "bus.gaps": s.gaps,
            "bus.missing": s.missing,
            "bus.tail_gaps": s.tail_gaps,
            "bus.restarts": s.restarts,
            **stream_figures(self.subscriber, getattr(self, "replayer", None)),
        }

    def registration(self) -> dict[str, Any]:
        return {
            "service": self.name,
            "service_id": self.service_id,
            "pid": os.getpid(),
            "hostname": self.settings.hostname,
            "boot_id": self.boot_id,
            "heartbeat_interval_ms": int(self.settings.heartbeat_interval_s * 1000),
            "verbs": sorted(self.verbs),
            "started_ns": self.started_ns,
        }

    def _register(self, verb: str) -> None:
        """Fire-and-forget to the broker; its reply is read by _on_control."""
        if self.control is None or self.publisher is None:
            return
        frames = encode_request(self.publisher, Topics.BROKER, verb, self.registration())
        try:
            self.control.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            self.log.warning("broker not reachable; will register on the next heartbeat")

    def _deregister(self) -> None:
        if self.registers:
            self._register("deregister")

    def reach_broker(self, timeout_s: float) -> bool:
        """Register and wait (bounded) for the broker to answer on the control socket,
        then take what came; False when nothing came in time. (The PUB socket connects
        to the broker with the control socket: an answer means the bus is up too.)
        Requests routed to us meanwhile wait until setup() is done: answering `health`
        now would tell a client we are up before we are (a collector not yet reading
        the kernel's events)."""
        self._register("register")
        if self.control is None or not self.control.poll(int(timeout_s * 1000)):
            return False
        self._on_control(answer=False)
        return True

    # --- RPC ------------------------------------------------------------------

    def _on_control(self, answer: bool = True) -> None:
        """Broker replies and requests routed to us; with `answer` False (still
        starting), requests are kept for run() to answer once setup() is done."""
        assert self.control is not None
        for _ in range(100):
            try:
                frames = self.control.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            got = at_service(frames)
            if isinstance(got, Routed):
                if answer:
                    self._answer(got)
                else:
                    self._early.append(got)
            elif got is not None:
                self._on_broker_reply(got)
            else:
                self.log.warning("dropped control frame with %d parts", len(frames))

    def _answer(self, request: Routed) -> None:
        assert self.control is not None
        reply = self.handle_request(request.data, route=request.client)
        self.control.send_multipart(reply_frames(request.client, reply))

    def _on_broker_reply(self, data: bytes) -> None:
        reply = decode_reply(data)
        if reply is None:
            self.log.warning("undecodable reply from the broker (%d bytes)", len(data))
        elif not reply.ok:
            self.log.warning("broker refused: %s (%s)", reply.error, reply.errorCode)

    def handle_request(self, data: bytes, route: bytes | None = None) -> bytes:
        """Decode a request envelope, dispatch it and encode the reply."""
        try:
            request_id, request = decode_request(data, route)
            reply = self.dispatch(request_id, request)
        except RpcFault as exc:
            reply = error_reply(exc.request_id, exc.code, str(exc))
        assert self.publisher is not None
        return encode_reply(self.publisher, reply)

    def dispatch(self, request_id: int, request: Request) -> dict[str, Any]:
        handler = self.verbs.get(request.verb)
        if handler is None:
            known = ", ".join(sorted(self.verbs))
            return error_reply(
                request_id,
                "unknown_verb",
                f"{self.service_id} has no verb {request.verb!r} (known: {known})",
            )
        try:
            result = handler(request)
        except RpcFault as exc:
            return error_reply(request_id, exc.code, str(exc))
        except Exception as exc:
            self.log.exception("rpc %s failed", request.verb)
            return error_reply(request_id, "failed", f"{type(exc).__name__}: {exc}")
        return result_reply(request_id, result)

    def health(self) -> dict[str, Any]:
        body = self.heartbeat_body()
        return {
            "service": self.name,
            "service_id": self.service_id,
            "boot_id": self.boot_id,
            "pid": body["pid"],
            "state": self.state,
            "uptime_s": body["uptimeS"],
            "rss_bytes": body["rssBytes"],
            "cpu_percent": body["cpuPercent"],
            "notes": body["notes"],
            "metrics": {m["name"]: m["value"] for m in body["metrics"]},
        }

    @rpc("ping")
    def rpc_ping(self, request: Request) -> dict[str, Any]:
        return {}

    @rpc("health")
    def rpc_health(self, request: Request) -> dict[str, Any]:
        return self.health()

    @rpc("graceful_shutdown")
    def rpc_graceful_shutdown(self, request: Request) -> dict[str, Any]:
        self.stop(f"graceful_shutdown from {request.source_id or 'a client'}")
        return {"stopping": True}
