"""How DaemonEye reaches a NATS JetStream server: servers, TLS, NKEY or credentials-file
auth, and the stream it publishes to. Shared by the alerter's `nats` sink, the broker's
NATS uplink (`[broker.nats]`) and `daemoneye fleet`.

Subjects are `<subject_prefix>.<host>.<bus topic>`, e.g. `daemoneye.web1.alerts.high`
or `daemoneye.web1.audit.ledger`; the host is made a single subject token (dots and
other characters NATS reserves become `_`).

The stream: with `create_stream` (the default) DaemonEye creates `stream` over
`<subject_prefix>.>` when it does not exist yet, and leaves an existing one exactly as
it is (an operator's own limits, replicas and placement win). With it off, the stream
must exist; publishing then fails, with an error naming the stream and the subject,
until it does.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, Field, field_validator, model_validator

SUBJECT_TOKEN = re.compile(r"^[A-Za-z0-9_\-]+$")


class NatsConnection(BaseModel):
    servers: list[str] = Field(
        ["nats://127.0.0.1:4222"],
        min_length=1,
        description="NATS server URLs (nats:// or tls://); several: a cluster",
    )
    creds_file: Path | None = Field(
        None, description="a credentials file (user JWT + NKEY seed), as `nsc` writes it"
    )
    nkey_seed_file: Path | None = Field(
        None, description="a file holding an NKEY user seed (SU...) for NKEY auth"
    )
    tls_ca_file: Path | None = Field(
        None, description="CA bundle that signed the server's certificate (default: system)"
    )
    tls_cert_file: Path | None = Field(None, description="client certificate (mutual TLS)")
    tls_key_file: Path | None = Field(None, description="client certificate's key")
    tls: bool = Field(
        False, description="require TLS even on nats:// URLs (tls:// URLs always use it)"
    )
    connect_timeout_s: float = Field(5.0, gt=0, description="one connection attempt, s")
    reconnect_wait_s: float = Field(0.5, gt=0, description="between reconnection attempts, s")
    ack_timeout_s: float = Field(5.0, gt=0, description="wait for a JetStream publish ack, s")
    subject_prefix: str = Field("daemoneye", description="first subject token(s)")
    stream: str = Field("DAEMONEYE", description="the JetStream stream over <prefix>.>")
    create_stream: bool = Field(
        True,
        description="create the stream when it does not exist (an existing one is never "
        "changed); false: it must exist, made by the operator",
    )
    duplicate_window_s: float = Field(
        3600.0,
        gt=0,
        description="a created stream's de-duplication window: a publish retried within it "
        "(after a lost ack) is stored once, by its Nats-Msg-Id",
    )
    max_age_days: float = Field(30.0, ge=0, description="a created stream's retention; 0 keeps")
    replicas: int = Field(1, ge=1, le=5, description="a created stream's replicas (clusters)")

    @field_validator("servers")
    @classmethod
    def _urls(cls, value: list[str]) -> list[str]:
        for url in value:
            if not re.match(r"^(nats|tls)://[^/\s]+$", url):
                raise ValueError(f"{url!r} is not a nats://HOST:PORT or tls://HOST:PORT URL")
        return value

    @field_validator("subject_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not all(SUBJECT_TOKEN.match(t) for t in value.split(".")):
            raise ValueError("must be dot-separated tokens of letters, digits, _ and -")
        return value

    @field_validator("stream")
    @classmethod
    def _stream(cls, value: str) -> str:
        if not SUBJECT_TOKEN.match(value):
            raise ValueError("a stream name is letters, digits, _ and - only")
        return value

    @model_validator(mode="after")
    def _one_auth(self) -> NatsConnection:
        if self.creds_file and self.nkey_seed_file:
            raise ValueError("set creds_file or nkey_seed_file, not both")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("tls_cert_file and tls_key_file go together")
        return self

    def uses_tls(self) -> bool:
        return (
            self.tls
            or any(u.startswith("tls://") for u in self.servers)
            or bool(self.tls_ca_file or self.tls_cert_file)
        )


class NatsUplinkSettings(NatsConnection):
    """The broker forwards chosen bus topics to NATS JetStream (off by default).

    Frames wait on disk (<data_dir>/broker-uplink-nats) while the link is down. Alerts
    go through the alerter's `nats` sink instead (deduplicated, rate-limited, their
    delivery tracked in `daemoneye alerts`), so `alerts.` is not accepted here."""

    enabled: bool = Field(False, description="forward `topics` to JetStream")
    topics: list[str] = Field(
        ["audit.", "ledger.checkpoint"],
        description="bus topic prefixes sent: audit., ledger.checkpoint, events.process. "
        "(every process event: plan the stream's size), control.health. ...",
    )
    queue_max: int = Field(1_000_000, gt=0, description="frames kept on disk while down")
    batch: int = Field(500, gt=0, le=10_000, description="frames per JetStream batch")

    @field_validator("topics")
    @classmethod
    def _no_alerts(cls, value: list[str]) -> list[str]:
        for topic in value:
            if topic.startswith("alerts") or "alerts.".startswith(topic):
                raise ValueError(
                    f"{topic!r}: alerts go to NATS through the alerter's nats sink "
                    '([[alerter.sinks]] kind = "nats"), which dedups them and tracks delivery'
                )
        return value
