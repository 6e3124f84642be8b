"""NATS settings and subject names: what an operator writes, what JetStream sees."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from daemoneye.config import ConfigError, load_settings
from daemoneye.jetstream import classify, host_token, subject_of
from daemoneye.settings.nats import NatsConnection


def test_a_host_name_becomes_one_subject_token() -> None:
    assert host_token("web1.example.com") == "web1_example_com"
    assert host_token("db-2") == "db-2"
    assert host_token("a b*c>d") == "a_b_c_d"
    assert host_token("") == "_"
    cfg = NatsConnection(subject_prefix="acme.daemoneye")
    assert subject_of(cfg, "web1.example.com", "alerts.high") == (
        "acme.daemoneye.web1_example_com.alerts.high"
    )


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"servers": ["http://x:4222"]}, "nats://HOST:PORT"),
        ({"servers": []}, "at least 1"),
        ({"creds_file": "a", "nkey_seed_file": "b"}, "not both"),
        ({"tls_cert_file": "c"}, "go together"),
        ({"subject_prefix": "a.>"}, "dot-separated tokens"),
        ({"stream": "A.B"}, "letters, digits"),
    ],
)
def test_bad_connection_settings_say_why(fields: dict, says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        NatsConnection(**fields)


def test_tls_is_on_for_tls_urls_or_a_ca() -> None:
    assert not NatsConnection().uses_tls()
    assert NatsConnection(servers=["tls://n:4222"]).uses_tls()
    assert NatsConnection(tls_ca_file="ca.pem").uses_tls()


def test_a_nats_sink_from_the_config_file(tmp_path) -> None:
    path = tmp_path / "d.toml"
    path.write_text(
        '[[alerter.sinks]]\nkind = "nats"\nservers = ["tls://n1:4222", "tls://n2:4222"]\n'
        'nkey_seed_file = "/etc/daemoneye/seed.nk"\n'
    )
    sink = load_settings(path).alerter.sinks[0]
    assert sink.kind == "nats" and sink.name == "nats" and len(sink.servers) == 2
    assert sink.max_attempts >= 1000  # an outage does not dead-letter alerts
    bad = tmp_path / "bad.toml"
    bad.write_text('[[alerter.sinks]]\nkind = "nats"\nservers = ["n1:4222"]\n')
    with pytest.raises(ConfigError, match=r"alerter\.sinks\.0\.nats\.servers"):
        load_settings(bad)


def test_the_broker_uplink_takes_no_alerts(monkeypatch) -> None:
    monkeypatch.setenv("DAEMONEYE_BROKER__NATS__TOPICS", '["events.process."]')
    assert load_settings().broker.nats.topics == ["events.process."]
    monkeypatch.setenv("DAEMONEYE_BROKER__NATS__TOPICS", '[""]')
    with pytest.raises(ConfigError, match="nats sink"):
        load_settings()


def test_failures_are_classified() -> None:
    import nats.errors

    assert classify(nats.errors.Error("nats: 'Authorization Violation'")) == "refused"
    assert classify(ConnectionRefusedError(111, "refused")) == "down"
    assert classify(nats.errors.AuthorizationError()) == "refused"
    # a reset that ends a TLS connection before it came up is the server's refusal of
    # the handshake (a client certificate it wants); on a link that was up it is a drop
    reset = ConnectionResetError(104, "Connection reset by peer")
    assert classify(reset, tls_handshake=True) == "tls"
    assert classify(reset) == "down"
    assert classify(ConnectionRefusedError(111, "refused"), tls_handshake=True) == "down"


def test_services_without_nats_do_not_load_nats_py() -> None:
    """nats-py costs ~14 MB and a second of start-up: only a configured sink or
    uplink loads it."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import daemoneye.services.alerter.service, daemoneye.services.broker.service\n"
        "from daemoneye.services.alerter.sinks import sink_class\n"
        "sink_class('file')\n"
        "assert 'nats' not in sys.modules, 'nats-py loaded'\n"
        "sink_class('nats')\n"
        "assert 'nats' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
