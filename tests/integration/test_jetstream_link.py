"""daemoneye.jetstream against a real nats-server: a batch sent again with the same
message ids (what a retry after a lost ack does) is stored once, also across a
server crash; and the link says why it is down (down, refused, no_stream)."""

from __future__ import annotations

import pytest

from daemoneye.config import ConfigError
from daemoneye.jetstream import MSG_ID, JetStreamError, JetStreamLink, Outgoing
from daemoneye.settings.nats import NatsConnection
from tests.conftest import wait_for
from tests.nats_server import NatsServer, nkey_pair, stream_contents
from tests.tls import self_signed_cert


def batch(n: int, offset: int = 0) -> list[Outgoing]:
    return [
        Outgoing("daemoneye.h1.alerts.high", f'{{"n":{i}}}'.encode(), f"id-{i}")
        for i in range(offset, offset + n)
    ]


@pytest.fixture
def server(tmp_path):
    s = NatsServer(tmp_path).start()
    yield s
    s.stop()


def test_a_retried_batch_is_stored_once_even_across_a_server_crash(server) -> None:
    link = JetStreamLink(NatsConnection(servers=[server.url], ack_timeout_s=2), "t")
    link.start()
    try:
        wait_for(lambda: link.stats.link_up, 10, "the link")
        assert link.publish(batch(300)) == 300
        server.kill()  # as if the acks of that batch were lost with the server
        with pytest.raises(JetStreamError) as err:
            link.publish(batch(5))
        assert err.value.retryable
        server.start()
        wait_for(lambda: link.stats.link_up, 20, "the link back")

        def resend() -> int | None:  # JetStream may answer 503 while it recovers
            try:
                return link.publish(batch(300) + batch(10, offset=300)) + 1
            except JetStreamError:
                return None

        fresh = wait_for(resend, 20, "the retry to be acknowledged") - 1
        assert fresh == 10, "only the 10 new ids were stored anew"
        assert link.stats.duplicates >= 300
        ids = [m.headers[MSG_ID] for m in stream_contents(server.url)]
        assert sorted(ids) == sorted(f"id-{i}" for i in range(310))
    finally:
        link.close()


def test_down_refused_and_no_stream_are_told_apart(tmp_path) -> None:
    seed, public = nkey_pair()
    server = NatsServer(tmp_path, f'authorization {{ users = [ {{ nkey: "{public}" }} ] }}')
    good, bad = tmp_path / "good.nk", tmp_path / "bad.nk"
    good.write_text(seed)
    bad.write_text(nkey_pair()[0])

    def link_to(seed_file, **extra) -> JetStreamLink:
        cfg = NatsConnection(
            servers=[server.url], nkey_seed_file=seed_file, ack_timeout_s=1,
            reconnect_wait_s=0.1, **extra,
        )  # fmt: skip
        link = JetStreamLink(cfg, "t")
        link.start()
        return link

    down = link_to(good)
    try:
        wait_for(lambda: down.stats.last_error, 10, "a failed connection attempt")
        with pytest.raises(JetStreamError) as err:
            down.publish(batch(1))
        assert err.value.reason == "down" and "not connected" in str(err.value)
    finally:
        down.close()

    server.start()
    refused = link_to(bad)
    expecting = link_to(good, create_stream=False)
    try:
        wait_for(lambda: refused.stats.reason == "refused", 10, "the refusal")
        with pytest.raises(JetStreamError) as err:
            refused.publish(batch(1))
        assert err.value.reason == "refused" and "refused our credentials" in str(err.value)

        wait_for(lambda: expecting.stats.link_up, 10, "the good link")
        with pytest.raises(JetStreamError) as err:
            expecting.publish(batch(1))
        assert err.value.reason == "no_stream" and "DAEMONEYE" in str(err.value)
    finally:
        refused.close()
        expecting.close()
        server.stop()


def test_a_missing_credentials_file_is_named_at_start(tmp_path) -> None:
    cfg = NatsConnection(creds_file=tmp_path / "nope.creds")
    with pytest.raises(ConfigError, match=r"creds_file .*nope\.creds does not exist"):
        JetStreamLink(cfg, "t")


def test_mutual_tls_and_a_missing_client_certificate(tmp_path) -> None:
    """The server verifies client certificates: with one the link publishes, without it
    the link says `tls`."""
    cert, key = self_signed_cert(tmp_path)  # a CA for itself: server and client cert
    server = NatsServer(
        tmp_path,
        f'tls {{ cert_file: "{cert}", key_file: "{key}", ca_file: "{cert}", verify: true }}',
    ).start()
    url = f"tls://127.0.0.1:{server.port}"

    def link_to(**extra) -> JetStreamLink:
        cfg = NatsConnection(
            servers=[url], tls_ca_file=cert, ack_timeout_s=2, reconnect_wait_s=0.1, **extra
        )
        link = JetStreamLink(cfg, "t")
        link.start()
        return link

    with_cert = link_to(tls_cert_file=cert, tls_key_file=key)
    without = link_to()
    try:
        wait_for(lambda: with_cert.stats.link_up, 10, "the mutual-TLS link")
        assert with_cert.publish(batch(3)) == 3
        wait_for(lambda: without.stats.last_error, 10, "the refused handshake")
        assert not without.stats.link_up
        with pytest.raises(JetStreamError) as err:
            without.publish(batch(1))
        assert err.value.reason == "tls", err.value
        print(f"\nwithout a client certificate: {without.stats.reason}: {err.value}")
    finally:
        with_cert.close()
        without.close()
        server.stop()
