"""The broker's forwarding path in C: libzmq's steerable proxy between XSUB `events-in`
and XPUB `events-out`, in a thread of its own.

Frames are not checked here: every subscriber checks each frame it receives
(`bus.Subscriber.accept`: shape, size, a decodable envelope) and drops and counts what
fails before its service sees it, so a check in the broker only repeated that work in
Python for every frame (~4 us a frame, plus a Python wake-up per burst). The broker's
Python loop keeps the control plane and reads the bus through its own subscriber (heartbeats,
lifecycle, uplink topics). The proxy's counters (frames in and out on each side) come
from libzmq's STATISTICS command on the steering socket.
"""

from __future__ import annotations

import logging
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass

import zmq

log = logging.getLogger("daemoneye.broker")

_U64 = struct.Struct("<Q").unpack


@dataclass(frozen=True, slots=True)
class ProxyStats:
    """Frames (message parts) and bytes through the proxy since it started."""

    frames_in: int = 0  # read from events-in (publishers)
    bytes_in: int = 0
    frames_out: int = 0  # written to events-out (subscribers; once per frame, not per peer)
    bytes_out: int = 0

    @property
    def messages(self) -> int:
        """[topic, envelope] messages forwarded (a frame of a malformed message counts half)."""
        return self.frames_in // 2


class Forwarder:
    """Runs `zmq.proxy_steerable(frontend, backend, None, steer)` in a thread. The four
    sockets are made by the caller (daemoneye.bus); the thread alone uses `frontend`,
    `backend` and `steer` once started; the caller keeps `control`, the other end of the
    steering pair, for STATISTICS and TERMINATE."""

    def __init__(
        self,
        frontend: zmq.Socket,
        backend: zmq.Socket,
        steer: zmq.Socket,
        control: zmq.Socket,
        on_failure: Callable[[str], None],
    ) -> None:
        self.frontend, self.backend, self.steer, self.control = frontend, backend, steer, control
        self.on_failure = on_failure
        self._thread = threading.Thread(target=self._run, name="bus-forwarder", daemon=True)
        self._last = ProxyStats()
        self._stopping = False

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        try:
            zmq.proxy_steerable(self.frontend, self.backend, None, self.steer)
        except zmq.ContextTerminated:
            pass
        except Exception as exc:  # the bus is down: say so, the supervisor restarts us
            if not self._stopping:
                log.error("the forwarder stopped: %s", exc)
                self.on_failure(f"forwarder: {exc}")

    def stats(self, timeout_ms: int = 1000) -> ProxyStats:
        """The proxy's counters now; the last known ones when it does not answer in time."""
        if not self.alive:
            return self._last
        try:
            self.control.send(b"STATISTICS")
            if not self.control.poll(timeout_ms):
                return self._last
            parts = self.control.recv_multipart()
        except zmq.ZMQError:
            return self._last
        if len(parts) == 8:
            v = [_U64(p)[0] for p in parts]
            # frontend msgs in, bytes in, msgs out, bytes out; then the backend's four
            self._last = ProxyStats(v[0], v[1], v[6], v[7])
        return self._last

    def stop(self, timeout_s: float = 5.0) -> None:
        if not self.alive:
            return
        self._stopping = True
        try:
            self.control.send(b"TERMINATE")
        except zmq.ZMQError:
            return
        self._thread.join(timeout_s)
