"""Unit tests run in one process with nothing listening: no network or unix socket of
their own, and ZeroMQ bound only to inproc://. A service built in a test may connect
its bus sockets to an empty run dir (ZeroMQ connects lazily: nothing is reached), and
the root-only netlink tests read the kernel's process connector. Anything more is an
integration test (tests/integration/: real services on ipc:// sockets)."""

from __future__ import annotations

import socket

import pytest
import zmq

REFUSED = {socket.AF_INET: "AF_INET", socket.AF_INET6: "AF_INET6", socket.AF_UNIX: "AF_UNIX"}


@pytest.fixture(autouse=True)
def nothing_listening(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    real_init = socket.socket.__init__
    real_bind, real_connect = zmq.Socket.bind, zmq.Socket.connect

    def init(self, family=-1, type=-1, proto=-1, fileno=None):  # type: ignore[no-untyped-def]
        # fileno: wrapping an existing descriptor (socketpair, accept), not a new socket
        kind = REFUSED.get(socket.AF_INET if family == -1 else family)
        if fileno is None and kind:
            raise AssertionError(
                f"{request.node.nodeid}: a unit test opened an {kind} socket; "
                "move it to tests/integration/"
            )
        real_init(self, family, type, proto, fileno)

    def bind(self, addr: str):  # type: ignore[no-untyped-def]
        if not addr.startswith("inproc://"):
            raise AssertionError(f"{request.node.nodeid}: a unit test bound {addr}")
        return real_bind(self, addr)

    def connect(self, addr: str):  # type: ignore[no-untyped-def]
        if addr.startswith(("tcp://", "udp://", "ws://", "wss://")):
            raise AssertionError(f"{request.node.nodeid}: a unit test connected to {addr}")
        return real_connect(self, addr)

    monkeypatch.setattr(socket.socket, "__init__", init)
    monkeypatch.setattr(zmq.Socket, "bind", bind)
    monkeypatch.setattr(zmq.Socket, "connect", connect)
