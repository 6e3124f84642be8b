"""The syslog sink against real listeners on loopback: UDP, TCP (octet counting) and a
unix datagram socket. Each line must be a well-formed RFC 5424 message."""

from __future__ import annotations

import re
import socket
import threading
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.integration.test_alerter_harness import Feed, alert_body, start_alerter, wait_live

# RFC 5424 section 6: <PRI>VERSION SP TIMESTAMP SP HOSTNAME SP APP-NAME SP PROCID SP MSGID
# SP STRUCTURED-DATA [SP MSG]
SD_PARAM = r'[^= \]"]{1,32}="(?:[^"\\\]]|\\["\\\]])*"'
RFC5424 = re.compile(
    r"^<(?P<pri>\d{1,3})>1 "
    r"(?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?(?:Z|[+-]\d\d:\d\d)) "
    r"(?P<host>[!-~]{1,255}) (?P<app>[!-~]{1,48}) (?P<procid>[!-~]{1,128}) "
    r"(?P<msgid>[!-~]{1,32}) "
    rf"(?P<sd>-|(?:\[[^= \]\"]{{1,32}}(?: {SD_PARAM})*\])+)"
    r"(?: (?P<msg>.*))?$",
    re.S,
)


def parse(line: bytes) -> dict[str, str]:
    text = line.decode("utf-8")
    m = RFC5424.match(text)
    assert m, f"not RFC 5424: {text!r}"
    fields = m.groupdict()
    assert int(fields["pri"]) <= 191
    return fields


class Listener:
    """A real syslog receiver: collects each message it gets."""

    def __init__(self, kind: str, path: Path | None = None) -> None:
        self.kind = kind
        self.messages: list[bytes] = []
        self.stopped = threading.Event()
        if kind == "udp":
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.bind(("127.0.0.1", 0))
            self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        elif kind == "tcp":
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.sock.bind(("127.0.0.1", 0))
            self.sock.listen()
            self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        else:
            assert path is not None
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.sock.bind(str(path))
            self.address = str(path)
        self.sock.settimeout(0.2)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                if self.kind == "tcp":
                    conn, _ = self.sock.accept()
                    self._read_stream(conn)
                else:
                    self.messages.append(self.sock.recv(65536))
            except TimeoutError:
                continue
            except OSError:
                return

    def _read_stream(self, conn: socket.socket) -> None:
        """Octet-counted framing: MSG-LEN SP SYSLOG-MSG, repeated."""
        conn.settimeout(0.2)
        buf = b""
        while not self.stopped.is_set():
            try:
                chunk = conn.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                return
            buf += chunk
            while b" " in buf:
                length, _, rest = buf.partition(b" ")
                assert length.isdigit(), f"bad frame length {length!r}"
                if len(rest) < int(length):
                    break
                self.messages.append(rest[: int(length)])
                buf = rest[int(length) :]

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(2)
        self.sock.close()


@pytest.mark.parametrize("transport", ["udp", "tcp", "unix"])
def test_syslog_receiver_gets_rfc5424_lines(
    transport, broker, start_service, run_env, tmp_path, factory, settings, rpc_client
) -> None:
    listener = Listener(transport, Path(f"/tmp/de-sl-{tmp_path.name[-12:]}.sock"))
    try:
        toml = f"""
[alerter]
[[alerter.sinks]]
kind = "syslog"
transport = "{transport}"
address = "{listener.address}"
facility = "local3"
app_name = "daemoneye-test"
"""
        proc = start_alerter(start_service, run_env, tmp_path, toml)
        feed = Feed(factory, settings)
        wait_live(feed, rpc_client, proc)
        feed.alert(alert_body("r.syslog", 1, severity="critical", exe="/tmp/evil"))
        feed.alert(alert_body("r.syslog", 2, severity="low", exe='/bin/a "quoted] name'))
        wait_for(lambda: len(listener.messages) >= 2, 15, f"2 syslog messages over {transport}")
        first, second = (parse(m) for m in listener.messages[:2])
        assert int(first["pri"]) == 19 * 8 + 2  # local3, critical
        assert int(second["pri"]) == 19 * 8 + 5  # local3, notice
        assert first["app"] == "daemoneye-test" and first["msgid"] == "alert"
        assert 'ruleId="r.syslog"' in first["sd"] and 'exe="/tmp/evil"' in first["sd"]
        assert r'exe="/bin/a \"quoted\] name"' in second["sd"]
        assert first["msg"].startswith("\ufeffr.syslog fired")
    finally:
        listener.close()
        Path(f"/tmp/de-sl-{tmp_path.name[-12:]}.sock").unlink(missing_ok=True)


def test_tcp_reconnects_when_the_server_hangs_up(
    broker, start_service, run_env, tmp_path, factory, settings, rpc_client
) -> None:
    """A server that closes every connection after one message: none may be lost."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    got: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                data = b""
                while b" " not in data or len(data.partition(b" ")[2]) < int(
                    data.partition(b" ")[0]
                ):
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                got.append(data.partition(b" ")[2])
            # closing here: the alerter's connection is now half-closed

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        port = server.getsockname()[1]
        toml = f"""
[alerter]
[[alerter.sinks]]
kind = "syslog"
transport = "tcp"
address = "127.0.0.1:{port}"
backoff_initial_s = 0.05
"""
        proc = start_alerter(start_service, run_env, tmp_path, toml)
        feed = Feed(factory, settings)
        wait_live(feed, rpc_client, proc)
        for n in range(3):
            feed.alert(alert_body("r.tcp", n, exe=f"/bin/t{n}"))
            wait_for(lambda n=n: len(got) == n + 1, 15, f"message {n + 1} over a new connection")
        assert [parse(m)["sd"].count("/bin/t") for m in got] == [1, 1, 1]
        assert [f"/bin/t{n}" in m.decode() for n, m in enumerate(got)] == [True] * 3
    finally:
        stop.set()
        thread.join(2)
        server.close()
