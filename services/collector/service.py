"""The collector: sees every process start, change and stop, and publishes it.

Sources: a /proc snapshot (initial, then every `scan_interval_s`) and, on Linux as
root, the kernel's process connector read by a thread (`realtime`). Both feed one
`Tracker`; every event it returns is appended to the WAL and then published on
`events.process.<kind>`. Notices (degraded mode, lost events, WAL cuts) go to
`events.collector.<id>`.
"""

from __future__ import annotations

import json
import os
import select
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

from pydantic import ValidationError

from daemoneye import procfs
from daemoneye.bus import Topics
from daemoneye.config import describe_validation_error
from daemoneye.metrics import labelled
from daemoneye.replay import ReplayRequestError, answer, parse_request
from daemoneye.rpc import RpcResult
from daemoneye.service import Request, RpcFault, Service, rpc
from daemoneye.settings.collector import CollectorSettings
from daemoneye.wire import SEVERITIES

from . import kseq, netlink, privdrop, reader, tailprobe
from .handover import Handover
from .hasher import Hasher
from .kseq import SeqCheck
from .netlink import NetlinkUnavailable
from .realtime import RealtimeSource
from .tracker import Out, Tracker
from .wal import Wal

TICK_S = 0.1  # pending forks, due rescans and WAL syncs are looked at this often
HELD_TIMEOUT_S = 0.5  # a main leaving waits this long at most for what the reader holds
IDLE_TICK_S = 1.0  # ...and this often when none waits (no fork, no frame to ack)
ACK_INTERVAL_S = 0.5  # acks to the reader (each writes the kernel numbers down) this often
# after a loss, each CPU is asked for a number this many times, a settle apart: the first
# may find the reader's socket still full, and be dropped with the rest (tailprobe.py)
TAIL_PROBES = 3
SWITCH_INTERVAL_S = 0.0005  # the hasher thread hands the GIL back to the main loop this soon


class Collector(Service):
    name: ClassVar[str] = "collector"

    def __init__(self, settings: Any, service_id: str | None = None) -> None:
        super().__init__(settings, service_id)
        self.cfg: CollectorSettings = settings.collector
        self.hostname = settings.hostname
        self.wal: Wal | None = None
        self.hasher: Hasher | None = None
        self.realtime: RealtimeSource | None = None
        self.tracker: Tracker | None = None
        self.monitoring = False
        self.scans = 0
        self.last_scan_s = 0.0
        self.lost_events = 0  # the kernel's overruns (ENOBUFS) the reader told of
        self.spool_dropped = 0  # frames the reader dropped from its full spool (markers)
        # execs whose process had exited before the reader read its argv, by why (the
        # reader's ARGV_LOST_*): woken too late by the kernel (the host's), or busy
        self.argv_lost = dict.fromkeys(reader.ARGV_LOST_WHY, 0)
        self.published = {"start": 0, "stop": 0, "modify": 0, "suspicious": 0}
        self._next_scan = 0.0
        self._next_sync = 0.0
        self._next_ack = 0.0
        self._next_retention = 0.0
        self._degraded_why = ""
        self._wal_failing = ""  # why WAL appends fail now ('' when they work)
        self.unlogged = 0  # events published without a WAL record (cannot be replayed)
        self.unencodable = 0  # events the schema refused (a value out of range): a bug
        self._batch: list[Out] = []  # batching: events waiting for their envelope
        self._batch_since = 0.0
        self._batch_bytes = 0  # batching: an estimate of the batch's encoded size
        self._holding = False  # batching: a handler is still producing events
        # encoded envelopes waiting for their WAL write (one per hold) and their send:
        # (seq, topic, envelope, kind, events in it)
        self._staged: list[tuple[int, str, bytes, str, int]] = []
        self._tick_timer: Any = None  # the tick's timer: moved by _pace_tick, _hasten_tick
        self.kseq = SeqCheck()  # the kernel's per-CPU numbers: duplicates and losses
        self._handover: Handover | None = None  # what a previous main already published
        self._reader_fd = -1
        self._gathering = False  # the reader's socket is unwatched: a timer takes its frames
        self._last_ready = -1e9  # monotonic time the reader's socket last woke us
        self._positions_path: Path | None = None  # the kernel numbers taken (kseq.save)
        # kseq's state noted at the last frame acked (or the one continued from): the
        # reader gives the next main every frame after it again
        self._acked_kseq: dict[str, Any] = {}
        self.held_back = 0  # events a previous main had published, not sent again
        self._tail_probes = 0  # after a loss: asks left for a number on each CPU
        self._next_tail_probe = 0.0

    # --- start and stop -------------------------------------------------------

    def niceness(self) -> int:
        return self.cfg.nice  # applied by run() as root, before setup() drops privileges

    def setup(self) -> None:
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        wal_dir = self._wal_dir()
        self.wal = Wal(
            wal_dir,
            self.cfg.wal_segment_bytes,
            self.cfg.wal_max_bytes,
            self.cfg.wal_max_age_s,
            self.cfg.wal_fsync,
        )
        assert self.publisher is not None
        self.publisher.continue_from(Topics.PROCESS_STREAM, self.wal.last_seq)
        self._wait_for_bus()
        self.realtime = self._start_reader()  # needs root: before any privilege drop
        if self.realtime is not None:
            self._reader_fd = self.realtime.wake_fd
            self._watch_reader()
        self._drop_privileges(wal_dir)
        if self.cfg.hash_executables:
            self.hasher = Hasher(self.cfg.hash_max_bytes, self.cfg.hash_cache_entries)
            self.watch(self.hasher.wake_fd, self._on_hashes)  # type: ignore[arg-type]
        self.tracker = Tracker(self.cfg.world_writable_dirs, self.cfg.shell_parents, self.hasher)
        self.tracker.full_rescan_reads = self.realtime is None
        self.tracker.read_workers = self.cfg.read_workers()
        for cut in self.wal.cuts:
            self.log.warning("WAL tail cut: %s", cut)
        self._tick_timer = self.every(TICK_S, self._tick)
        if self.cfg.autostart:
            self.begin()

    def _announce(self) -> None:
        """The standing notices: degraded mode and WAL cuts found at start."""
        assert self.wal is not None
        if self._degraded_why:
            self.notice("degraded", self._degraded_why)
        for cut in self.wal.cuts:
            self.notice(
                "wal_cut",
                f"cut {cut.bytes_cut} bytes of {cut.segment} at {cut.offset}: {cut.reason}",
                cut.bytes_cut,
                vars(cut),
            )

    def _wait_for_bus(self, timeout_s: float = 3.0) -> None:
        """Publishing before the PUB socket has connected drops messages silently. The
        PUB and the control DEALER connect to the broker together, so a registration
        round trip (bounded) tells the bus is up before the initial snapshot goes out."""
        if not self.reach_broker(timeout_s):
            self.log.warning("broker not reachable yet; first events may need replay")
            return
        time.sleep(0.005)  # the broker's subscription travels right behind the handshake

    def _reader_config(self) -> dict[str, Any]:
        """What a reader is started with: one started otherwise (settings changed, or
        other code after an upgrade) is replaced, make before break."""
        cfg = self.cfg
        return {
            "priority": cfg.realtime_priority,
            "rcvbuf": cfg.netlink_rcvbuf_bytes,
            "user": cfg.user,
            "linger_s": cfg.reader_linger_s,
            "spool_bytes": cfg.reader_spool_bytes,
            "hold_ms": cfg.reader_hold_ms,
            "send_ms": cfg.reader_send_ms,
        }

    def _same_reader(self, hello: dict[str, Any]) -> bool:
        return (
            hello.get("protocol") == reader.PROTOCOL
            and hello.get("code") == reader.code_version()
            and hello.get("config") == self._reader_config()
        )

    def _child_drop(self) -> None:
        privdrop.drop_to(self.cfg.user)

    def _start_reader(self) -> RealtimeSource | None:
        """Adopt the netlink reader a previous main left running (it kept every event
        since), or start one (forked before the drop: it sets its real-time priority,
        then drops too). A reader of other code is replaced, make before break."""
        path = reader.socket_path(self.settings.run_dir, self.service_id)
        if not self.cfg.netlink:
            reader.stop_reader(path, timeout_s=0.5)
            self._degrade("netlink disabled by configuration: snapshots only")
            return None
        if self._positions_path is None and self.wal is not None:  # at start: continue
            self._positions_path = self.wal.path / kseq.POSITIONS_FILE  # the old main's count
            self._acked_kseq = kseq.load(self._positions_path, 2 * self.cfg.reader_linger_s)
            self.kseq.restore(self._acked_kseq)
            self.log.info("kernel numbers to continue from: %s", self.kseq.last or "none")
        source = RealtimeSource(path)
        hello = source.attach()
        if hello is not None:
            backlog = int(hello.get("backlog", 0))
            if backlog and self.wal is not None:
                oldest = int(hello.get("oldest_ns", 0))
                self._handover = Handover.from_wal(self.wal, oldest, backlog)
            self.log.info(
                "adopted the netlink reader (pid %s): %d frames kept for us",
                hello.get("pid"),
                backlog,
            )
            if self._same_reader(hello):
                return source
        try:
            connector, other, exits = netlink.open_sockets(self.cfg.netlink_rcvbuf_bytes)
            source.spawn(
                connector,
                self.cfg.realtime_priority,
                self.cfg.reader_linger_s,
                self.cfg.reader_spool_bytes,
                self._child_drop if self.cfg.user else None,
                self._reader_config(),
                other,
                exits,
            )
        except (NetlinkUnavailable, RuntimeError, OSError) as exc:
            if hello is not None:  # cannot replace it: keep the old reader
                self.log.warning("cannot replace the netlink reader: %s", exc)
                return source
            self._degrade(f"{exc}; snapshots only")
            return None
        return source

    def _degrade(self, why: str) -> None:
        self.state = "degraded"
        self.notes.append(why)
        self.log.warning("degraded: %s", why)
        self._degraded_why = why

    def _wal_dir(self) -> Path:
        if self.cfg.wal_dir:
            return Path(self.cfg.wal_dir)
        safe = self.service_id.replace("/", "_")
        return Path(self.settings.data_dir) / "collector" / safe / "wal"

    def _drop_privileges(self, wal_dir: Path) -> None:
        if self.cfg.user:
            try:
                note = privdrop.drop_to(self.cfg.user, (str(wal_dir),))
            except (privdrop.PrivilegeError, OSError) as exc:
                raise RuntimeError(f"privilege drop failed: {exc}") from None
            self.notes.append(note)
            self.log.info(note)
        else:
            self.notes.extend(privdrop.lacking())

    def begin(self) -> bool:
        """Start monitoring: the initial snapshot; netlink items queued meanwhile follow.
        False when already monitoring."""
        if self.monitoring:
            return False
        assert self.tracker is not None
        self.monitoring = True  # netlink items queue from here on: nothing is missed
        self._announce()
        self._take_backlog()
        t = time.perf_counter()
        self._publish_all(self.tracker.rescan("snapshot", publish_new=self.cfg.publish_initial))
        self.last_scan_s = time.perf_counter() - t
        self.scans += 1
        self._next_scan = time.monotonic() + self.cfg.scan_interval_s
        self.log.info(
            "monitoring",
            extra={"processes": len(self.tracker.procs), "snapshot_s": self.last_scan_s},
        )
        return True

    def _take_backlog(self, timeout_s: float = 3.0) -> None:
        """What an adopted reader kept for us, before the snapshot: events, then the
        state they led to (a pid reused since is then a stop plus a start)."""
        deadline = time.monotonic() + timeout_s
        while self.realtime is not None and self._handover is not None:
            link = self.realtime.links[0] if self.realtime.links else None
            if link is not None and link.pending:  # read with the hello, counted, not taken
                self._on_realtime()
                continue
            if link is None or link.frames >= self._handover.backlog:
                return
            if time.monotonic() > deadline:
                self.log.warning("the reader's backlog is still arriving; taking it live")
                return
            select.select([link.sock], [], [], 0.05)
            self._on_realtime()

    def teardown(self) -> None:
        if self.realtime is not None:
            if self.monitoring:  # what waits (gather_ms, the reader's send wait): logged
                self._safely(self._take_held)  # now, not by the next main
            self._write_positions()  # with the losses counted since the last ack
            self.realtime.close()  # the reader stays: it spools for the next main
        if self.hasher is not None:
            self.hasher.close()
        if self.wal is not None:
            self.wal.close()

    def _take_held(self) -> None:
        """Everything the reader has, the frames its send wait holds too: it sends them
        at once, then an empty frame (bounded: a reader that does not answer keeps
        them for the next main)."""
        assert self.realtime is not None
        self.realtime.send_held()
        deadline = time.monotonic() + HELD_TIMEOUT_S
        while self.realtime is not None and self.realtime.links:
            self._on_realtime()
            left = deadline - time.monotonic()
            if self.realtime is None or self.realtime.synced or left <= 0:
                return
            select.select([self.realtime.wake_fd], [], [], left)

    # --- the loop's work ------------------------------------------------------

    def _watch_reader(self) -> None:
        if self._reader_fd >= 0 and not self._gathering:
            self.watch(self._reader_fd, self._on_reader_ready)

    def _on_reader_ready(self) -> None:
        """Frames after a quiet spell are taken at once (a lone exec waits for nothing);
        when the last ones came less than gather_ms ago, the next are gathered (see
        _gather): below 1000/gather_ms frames a second, each wakes us as before."""
        now = time.monotonic()
        busy = now - self._last_ready < self.cfg.gather_ms / 1000
        self._last_ready = now
        self._on_realtime()
        if busy:
            self._gather(now)

    def _gather(self, taken_at: float) -> None:
        """Take the reader's frames every gather_ms instead of waking for each: a wake-up
        costs several times the work it does at 200 exec/s (caches gone cold while we
        slept), so 2-8 execs a wake-up cost little more than one. The socket is watched
        again once a look finds nothing. The next take is due gather_ms after the last
        one (`taken_at`), not after its work: frames that came during long work have
        waited that long already."""
        wait_s = self.cfg.gather_ms / 1000
        if wait_s <= 0 or self._reader_fd < 0:
            return
        self.unwatch(self._reader_fd)
        self._gathering = True
        self.once(max(0.0, taken_at + wait_s - time.monotonic()), self._on_gathered)

    def _on_gathered(self) -> None:
        self._gathering = False
        if self.realtime is None:
            return  # gone meanwhile (_reader_died): nothing to watch
        taken_at = time.monotonic()
        if self._on_realtime():
            self._last_ready = taken_at  # frames still come: as if they woke us
            self._gather(taken_at)
        else:
            self._watch_reader()

    def _on_realtime(self) -> int:
        """Take and handle what the reader sent; how many items that was."""
        assert self.realtime is not None and self.tracker is not None
        source = self.realtime
        items = source.take()
        if source.wake_fd != self._reader_fd:  # a hand-over: the next reader's socket
            self._rewatch_reader()
        if source.dead:
            self._reader_died()
        if not self.monitoring:
            return len(items)  # before begin_monitoring: the initial snapshot sees these
        overruns = dropped = 0
        check = self.kseq
        gaps_before = check.lost
        self._holding = True  # batching: one read of the kernel's events, few envelopes
        outs: list[Out] = []  # what the take's events led to: published together
        try:
            try:
                on_event, fresh = self.tracker.on_event, check.take
                for item in items:
                    event = item.event
                    if event is None:  # a loss marker: whose (reader.SPOOL_LOSS)?
                        if item.record:
                            dropped += item.lost
                        else:
                            overruns += item.lost
                    elif fresh(event):  # False: a duplicate of a hand-over's overlap
                        why = ""
                        if item.lost:  # an exec's argv, gone before the read: why
                            self.argv_lost[item.lost] = self.argv_lost.get(item.lost, 0) + 1
                            why = reader.ARGV_LOST_WHY.get(item.lost, "unknown")
                        outs += on_event(event, item.record, why)
            finally:
                if outs:
                    self._publish_all(outs)
        finally:
            self._holding = False
            self._send_batch()
        check.settle(time.monotonic())  # a number still missing after the reader's hold: lost
        if items:
            self._hasten_tick()  # their acks, forks and settles are the tick's
        handover = self._handover
        if handover is not None and source.links and handover.done(source.links[0].frames):
            self.held_back += handover.held_back
            self._handover = None
        missed = check.lost - gaps_before
        if missed:
            self.log.warning(
                "%d kernel events missed (cpu, last, next: %s)", missed, check.last_loss
            )
        if overruns or dropped or missed:
            self.lost_events += overruns
            self.spool_dropped += dropped
            message = _loss_message(overruns, dropped, missed)
            if overruns or dropped:  # (missed is logged above, with where)
                self.log.warning("%s", message)
            detail = {"overruns": overruns, "spool_dropped_frames": dropped, "missing": missed}
            self.notice("lost_events", message, missed or overruns + dropped, detail)
            self.rescan(drain=False)
        if overruns or dropped:  # what was dropped last shows only with a later number
            self._tail_probes = TAIL_PROBES
            self._probe_tail(time.monotonic())
        return len(items)

    def _probe_tail(self, now: float) -> None:
        """Ask each CPU for one more number (tailprobe.py), so that events dropped at the
        end of a burst count in `collector.lost` now, not at the host's next exec."""
        if not self._tail_probes or now < self._next_tail_probe:
            return
        self._tail_probes -= 1
        self._next_tail_probe = now + kseq.SETTLE_S
        tailprobe.number_an_event_on_each_cpu()

    def _rewatch_reader(self) -> None:
        assert self.realtime is not None
        self.unwatch(self._reader_fd)
        self._reader_fd = self.realtime.wake_fd
        self._watch_reader()

    def _reader_died(self) -> None:
        """The reader and its spare are both gone (or it was told to leave): start
        another where we still may (root), else snapshots only."""
        assert self.realtime is not None and self.tracker is not None
        self.unwatch(self._reader_fd)
        self.realtime.close()
        self.realtime = self._start_reader() if os.geteuid() == 0 else None
        if self.realtime is not None:
            self._reader_fd = self.realtime.wake_fd
            self._watch_reader()
            self.log.warning("the netlink reader and its spare were gone; started another")
            return
        self.tracker.full_rescan_reads = True
        self._degrade("the netlink reader process exited; snapshots only")
        self.notice("degraded", self._degraded_why)

    def _on_hashes(self) -> None:
        assert self.hasher is not None and self.tracker is not None
        for res in self.hasher.results():
            if res.error:
                self.log.debug("hash failed: %s %s", res.key, res.error)
            self._publish_all(self.tracker.apply_hash(res.key, res.sha256))

    def _tick(self) -> None:
        if not self.monitoring or self.tracker is None or self.wal is None:
            return
        now = time.monotonic()
        if self.realtime is not None:
            self._on_realtime()  # drain first: a pending fork may have exec'd meanwhile
        self._probe_tail(now)
        if self.realtime is not None and now >= self._next_ack:  # the WAL has what we
            self._ack(now)  # took: the reader may drop it
            self._next_ack = now + ACK_INTERVAL_S
        if self.tracker.pending:
            self._publish_all(self.tracker.flush_pending(self.cfg.fork_publish_delay_s))
        if now >= self._next_scan:
            self.rescan()
        if self.cfg.wal_fsync == "interval" and now >= self._next_sync:
            self.wal.sync()
            self._next_sync = now + self.cfg.wal_fsync_interval_s
        if now >= self._next_retention:
            self.wal.enforce_limits()
            self._next_retention = now + 60
        self._pace_tick(now)

    def _pace_tick(self, now: float) -> None:
        """With no fork pending and every frame acked, the next tick waits for its next
        duty (a rescan, a WAL sync, at most IDLE_TICK_S): ten wake-ups a second were
        most of an idle collector's CPU. A frame taken brings it back (_hasten_tick)."""
        assert self.tracker is not None and self.wal is not None
        if self.tracker.pending or self.kseq.unsettled() or self._tail_probes:
            return
        if self.realtime is not None and not self.realtime.all_acked():
            return
        due = min(self._next_scan, self._next_retention, now + IDLE_TICK_S)
        if self.cfg.wal_fsync == "interval" and self.wal.unsynced:
            due = min(due, self._next_sync)
        self._tick_timer.due = max(due, now + TICK_S)

    def _hasten_tick(self) -> None:
        timer = self._tick_timer
        if timer is not None:
            timer.due = min(timer.due, time.monotonic() + TICK_S)

    def _ack(self, now: float) -> None:
        """Ack the reader, after writing down the kernel numbers taken by then: the next
        main starts from them, so a hole in what it is given is counted, not silent."""
        assert self.realtime is not None
        delay = self.cfg.fork_publish_delay_s + TICK_S
        n, last = self.realtime.due_ack(now, delay, self.kseq.state)
        if not n:
            return
        if last["last"]:
            self._acked_kseq = last
            self._write_positions()
        self.realtime.ack(n)

    def _write_positions(self) -> None:
        """Write down where the next main starts: the kernel numbers noted when the last
        frame acked was taken (it is given every later frame again, and must take them),
        and what this main counted lost since (kseq.counted_since), or it would count
        those numbers a second time. At each ack, and at the end: the losses counted
        after the last ack (its frames are ~0.6 s old) go with them too."""
        noted = self._acked_kseq
        if self._positions_path is None or not noted.get("last"):
            return
        try:
            kseq.save(self._positions_path, {**noted, "counted": self.kseq.counted_since(noted)})
        except OSError as exc:  # the WAL dir failing says so already; ack anyway
            self.log.debug("cannot write %s: %s", self._positions_path, exc)

    def rescan(self, drain: bool = True) -> None:
        assert self.tracker is not None
        if drain and self.realtime is not None:
            self._on_realtime()  # first: a queued exec must not become a snapshot start
        t = time.perf_counter()
        self._publish_all(self.tracker.rescan("snapshot"))
        self.last_scan_s = time.perf_counter() - t
        self.scans += 1
        self._next_scan = time.monotonic() + self.cfg.scan_interval_s

    # --- publishing -----------------------------------------------------------

    def _publish_all(self, outs: list[Out]) -> None:
        if self._handover is not None:  # a new main: what the old one published, once
            outs = [out for out in outs if not self._handover.seen(out)]
        if self.cfg.publish_batch_max <= 1:
            for out in outs:
                self.emit(out)
            return
        # batching: consecutive events of one kind share an envelope on their usual topic
        # (order is kept exactly); a batch goes out when full (by count, or by size: an
        # envelope above the bus's event limit would be dropped), when the kind changes,
        # when its first event has waited publish_batch_ms, and when the handler is done.
        # Not by time within a hold (one take of the reader's frames): what it encodes is
        # staged until the hold ends anyway, so a cut there only makes more envelopes
        limit, wait_s = self.cfg.publish_batch_max, self.cfg.publish_batch_ms / 1000
        if self._holding:
            wait_s = float("inf")
        max_bytes = self.settings.bus.max_event_bytes // 2
        monotonic = time.monotonic
        for out in outs:
            batch = self._batch
            if batch:
                if batch[0].kind == out.kind and monotonic() - self._batch_since < wait_s:
                    if len(batch) == 1:  # sizes are worked out once a second event joins:
                        self._batch_bytes = _approx_bytes(batch[0])  # a lone one goes as is
                    size = _approx_bytes(out)
                    if self._batch_bytes + size <= max_bytes:
                        batch.append(out)
                        self._batch_bytes += size
                        if len(batch) >= limit:
                            self._send_batch()
                        continue
                self._send_batch()
            self._batch = [out]
            self._batch_since = monotonic()
        if not self._holding:
            self._send_batch()

    def _send_batch(self) -> None:
        """One processEventBatch envelope: one seq, one WAL entry (WAL first, as emit);
        outside a hold, what is staged goes out with it."""
        outs, self._batch = self._batch, []
        if len(outs) <= 1:
            for out in outs:
                self._emit_or_count(out)
        else:
            self._encode_batch(outs)
        if not self._holding:
            self._flush_staged()

    def _encode_batch(self, outs: list[Out]) -> None:
        assert self.publisher is not None
        topic = f"{Topics.PROCESS}{outs[0].kind}"
        body = {"events": [self.event_body(out) for out in outs]}
        try:
            seq, data = self.publisher.encode(topic, "processEventBatch", body)
        except (ValueError, TypeError):
            # one event the schema refuses must not take its batch down with it: each
            # goes alone, and the one that cannot is counted and named
            for out in outs:
                self._emit_or_count(out)
            return
        self._staged.append((seq, topic, data, outs[0].kind, len(outs)))

    def _flush_staged(self) -> None:
        """The staged envelopes: into the WAL with one write, then onto the bus (WAL
        first: a crash between the two is repaired by replay). A hold (one take of the
        reader's frames) stages all it encodes, so it costs one write, and its sends go
        out back to back (ZeroMQ's I/O thread wakes once for them)."""
        staged, self._staged = self._staged, []
        if not staged:
            return
        assert self.publisher is not None and self.wal is not None
        try:  # a failing WAL degrades replay, never the live stream
            self.wal.append_many([(seq, topic, data) for seq, topic, data, _, _ in staged])
            if self._wal_failing:
                self._wal_recovered()
        except OSError as exc:
            self._wal_failed(exc, len(staged))  # still published: live subscribers lose nothing
        send = self.publisher.send_encoded
        published = self.published
        n = 0
        for _, topic, data, kind, count in staged:
            send(topic, data)
            published[kind] += count
            n += count
        self.events.add(n)

    def event_body(self, out: Out) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": out.kind,
            "source": out.source,
            "timeNs": out.time_ns or time.time_ns(),
            "record": out.record,
            "changedFields": out.changed,
            "reason": out.reason,
            "severity": out.severity if out.severity in SEVERITIES else "info",
            "runtimeNs": out.runtime_ns,
            "exitCode": out.exit_code,
            "hostname": self.hostname,
        }
        if out.previous is not None:
            body["previous"] = out.previous
        return body

    def _emit_or_count(self, out: Out) -> None:
        try:
            self.emit(out)
        except (ValueError, TypeError) as exc:
            self.unencodable += 1
            self.log.error(
                "cannot encode a %s event of pid %s: %s", out.kind, out.record.get("pid"), exc
            )

    def emit(self, out: Out) -> int:
        """WAL first, then the bus (_flush_staged); in a hold, when the hold ends."""
        assert self.publisher is not None
        topic = f"{Topics.PROCESS}{out.kind}"
        seq, data = self.publisher.encode(topic, "processEvent", self.event_body(out))
        self._staged.append((seq, topic, data, out.kind, 1))
        if not self._holding:
            self._flush_staged()
        return seq

    def _wal_failed(self, exc: OSError, envelopes: int = 1) -> None:
        self.unlogged += envelopes
        if self._wal_failing:
            return
        self._wal_failing = f"WAL writes failing ({exc.strerror or exc}): events are published "
        self._wal_failing += "but cannot be replayed"
        self.state = "degraded"
        self.notes.append(self._wal_failing)
        self.log.error("%s", self._wal_failing)
        self.notice("wal_error", self._wal_failing, 1, {"errno": exc.errno})

    def _wal_recovered(self) -> None:
        message = f"WAL writes work again; {self.unlogged} events were not logged"
        self.notes = [n for n in self.notes if n != self._wal_failing]
        self._wal_failing = ""
        if not self._degraded_why:
            self.state = "running"
        self.log.warning("%s", message)
        self.notice("wal_ok", message, self.unlogged)

    def notice(self, kind: str, message: str, count: int = 0, detail: Any = None) -> None:
        assert self.publisher is not None
        self.publisher.publish(
            Topics.collector_notice(self.service_id),
            "collectorNotice",
            {
                "kind": kind,
                "message": message,
                "count": count,
                "detailJson": json.dumps(detail or {}, default=str),
            },
        )

    # --- status ---------------------------------------------------------------

    def metrics(self) -> dict[str, float]:
        m: dict[str, float] = {
            "processes": len(self.tracker.procs) if self.tracker else 0,
            "scans": self.scans,
            "last_scan_s": self.last_scan_s,
            "lost_events": self.lost_events,
            "spool.dropped_frames": self.spool_dropped,
            "monitoring": int(self.monitoring),
        }
        m.update({f"published.{k}": v for k, v in self.published.items()})
        for code, why in reader.ARGV_LOST_WHY.items():
            m[labelled("argv.lost", why=why)] = self.argv_lost[code]
        if self.wal is not None:
            m["wal.last_seq"] = self.wal.last_seq
            m["wal.cuts"] = len(self.wal.cuts)
            m["wal.write_errors"] = self.wal.write_errors
            m["wal.unlogged"] = self.unlogged
            m["collector.unencodable"] = self.unencodable
            m["wal.bytes"] = self.wal.size_bytes()
        if self.hasher is not None:
            m["hash.done"] = self.hasher.hashed
            m["hash.pending"] = self.hasher.pending()
        # every event lost, once: by its kernel number (a spool's dropped frames and an
        # overrun's datagrams are holes in them); lost_events and spool.dropped_frames say how
        m["collector.lost"] = self.kseq.lost
        m["netlink.duplicates"] = self.kseq.duplicates
        m["netlink.late"] = self.kseq.late
        m["netlink.settles"] = self.kseq.settles
        m["handover.held_back"] = self.held_back + (
            self._handover.held_back if self._handover else 0
        )
        if self.realtime is not None:
            m["netlink.received"] = self.realtime.received
            m["netlink.takeovers"] = self.realtime.takeovers
        return m

    def queue_depth(self) -> int:
        return self.hasher.pending() if self.hasher else 0

    # --- RPC ------------------------------------------------------------------

    @rpc("begin_monitoring")
    def rpc_begin_monitoring(self, request: Request) -> dict[str, Any]:
        started = self.begin()
        if not started:  # a late subscriber asks again: say the standing notices again
            self._announce()
        return {"monitoring": True, "started_now": started, "degraded": bool(self._degraded_why)}

    @rpc("adjust_interval")
    def rpc_adjust_interval(self, request: Request) -> dict[str, Any]:
        value = request.params.get("scan_interval_s", request.params.get("interval_s"))
        if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
            raise RpcFault(
                "bad_request", f"scan_interval_s must be a positive number, not {value!r}"
            )
        self.cfg = self.cfg.model_copy(update={"scan_interval_s": float(value)})
        self._next_scan = min(self._next_scan, time.monotonic() + float(value))
        return {"scan_interval_s": self.cfg.scan_interval_s}

    @rpc("update_config")
    def rpc_update_config(self, request: Request) -> dict[str, Any]:
        fixed = {"netlink", "user", "wal_dir", "nice"}  # set at start: a restart changes them
        bad = sorted(set(request.params) & fixed)
        if bad:
            raise RpcFault("bad_request", f"collector.{bad[0]} cannot change at run time")
        try:
            cfg = CollectorSettings(**{**self.cfg.model_dump(), **request.params})
        except ValidationError as exc:
            text = describe_validation_error(exc).replace("invalid setting ", "collector.")
            raise RpcFault("bad_request", text) from None
        unknown = sorted(set(request.params) - set(CollectorSettings.model_fields))
        if unknown:
            raise RpcFault("bad_request", f"collector has no setting {unknown[0]!r}")
        self.cfg = cfg
        self._next_scan = min(self._next_scan, time.monotonic() + cfg.scan_interval_s)
        if self.tracker is not None:
            self.tracker.writable_places = tuple(cfg.world_writable_dirs)
            self.tracker.shell_parents = tuple(cfg.shell_parents)
            self.tracker.read_workers = cfg.read_workers()
        if self.wal is not None:
            self.wal.segment_bytes = cfg.wal_segment_bytes
            self.wal.max_bytes = cfg.wal_max_bytes
            self.wal.max_age_s = cfg.wal_max_age_s
            self.wal.fsync_policy = cfg.wal_fsync
        self.audit("config.change", "collector", request.params)
        return cfg.model_dump()

    @rpc("snapshot")
    def rpc_snapshot(self, request: Request) -> list[dict[str, Any]]:
        """The current process table. Params (all optional): `fresh` (rescan first),
        `pids` (only these), `offset` and `limit` (pages, in pid order)."""
        if self.tracker is None:
            raise RpcFault("failed", "collector not set up")
        p = request.params
        pids = p.get("pids")
        offset, limit = p.get("offset", 0), p.get("limit")
        if pids is not None and not (
            isinstance(pids, list) and all(isinstance(x, int) for x in pids)
        ):
            raise RpcFault(
                "bad_request", f"snapshot: pids must be a list of integers, not {pids!r}"
            )
        for name, value in (("offset", offset), ("limit", limit)):
            if value is not None and (not isinstance(value, int) or value < 0):
                raise RpcFault("bad_request", f"snapshot: {name} must be a non-negative integer")
        if p.get("fresh"):
            self.rescan()
        rows = sorted(self.tracker.records(), key=lambda r: r["pid"])
        if pids is not None:
            wanted = set(pids)
            rows = [r for r in rows if r["pid"] in wanted]
        rows = rows[offset : None if limit is None else offset + limit]
        return [dict(r) for r in rows]

    @rpc("replay")
    def rpc_replay(self, request: Request) -> RpcResult:
        if self.wal is None:
            raise RpcFault("failed", "collector not set up")
        try:
            req = parse_request(request.params, self.cfg.replay_max)
        except ReplayRequestError as exc:
            raise RpcFault("bad_request", str(exc)) from None
        # An answer above the bus's frame limit would be refused by the broker (and its
        # connection to us dropped): cut by bytes too, at half the limit for headroom.
        max_bytes = self.settings.bus.max_message_bytes // 2
        entries = self.wal.read(req.from_seq, req.to_seq, req.limit + 1, max_bytes)
        return answer(
            [(e.seq, e.topic, e.data) for e in entries],
            req.limit,
            max_bytes,
            self.wal.first_seq,
            self.wal.last_seq,
        )

    def health(self) -> dict[str, Any]:
        out = super().health()
        out["monitoring"] = self.monitoring
        out["netlink"] = self.realtime is not None
        if self.realtime is not None:
            out["reader_pid"] = self.realtime.hello.get("pid", 0)
            out["spare_pid"] = self.realtime.hello.get("spare", 0)
        out["pid_namespace"] = _own_pid_ns()
        return out


def _loss_message(overruns: int, dropped: int, missed: int) -> str:
    """What a lost_events notice tells: which loss (the kernel's socket overrun, the
    reader's spool overflowing while this main did not read, numbers never brought)."""
    parts = []
    if overruns:
        parts.append(
            f"the kernel dropped process events: {overruns} netlink socket overruns "
            "(ENOBUFS, the reader did not read in time)"
        )
    if dropped:
        parts.append(
            f"the netlink reader's spool overflowed while this main was not reading "
            f"(stalled or stopped): {dropped} frames of events dropped, oldest first"
        )
    if missed:
        parts.append(f"{missed} events missing from the kernel's sequence numbers")
    return "; ".join(parts) + "; repairing with a snapshot"


def _approx_bytes(out: Out) -> int:
    """An upper estimate of an event's encoded size: fixed fields plus its strings."""
    total = 0
    for rec in (out.record, out.previous):
        if rec:
            total += 1024 + sum(len(a) + 8 for a in rec.get("cmdline", ()))
            total += len(rec.get("exePath", "")) + len(rec.get("cwd", ""))
            total += len(rec.get("cgroupPath", "")) + len(rec.get("root", ""))
    return total + len(out.reason) + 8 * len(out.changed)


def _own_pid_ns() -> int:
    rec = os.readlink("/proc/self/ns/pid") if procfs.IS_LINUX else ""
    return int(rec[5:-1]) if rec.startswith("pid:[") else 0


SERVICE = Collector
