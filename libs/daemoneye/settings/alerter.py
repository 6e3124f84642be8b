"""Settings of the alerter (`[alerter]`) and its sinks (`[[alerter.sinks]]`).

Sinks are a list of tables, each with a `kind` (stdout, file, syslog, webhook, nats);
several of one kind are allowed. A sink's `name` keys its delivery state in the
alerter's store, so give sinks stable names when there are several of a kind.
With no `sinks` configured, one file sink writes `<data_dir>/alerts.jsonl`.

    [[alerter.sinks]]
    kind = "webhook"
    name = "soc"
    url = "https://soc.example/hooks/daemoneye"
    token = "..."

    [[alerter.sinks]]
    kind = "nats"
    servers = ["tls://nats.example:4222"]
    creds_file = "/etc/daemoneye/nats.creds"
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from daemoneye.settings.nats import NatsConnection
from daemoneye.wire import SEVERITIES

FACILITIES = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6,
    "news": 7, "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11, "ntp": 12, "security": 13,
    "console": 14, "solaris-cron": 15, **{f"local{i}": 16 + i for i in range(8)},
}  # fmt: skip


def facility_code(value: str | int) -> int:
    """RFC 5424 facility number of a name or number; ValueError names the known ones."""
    if isinstance(value, int) and 0 <= value <= 23:
        return value
    if isinstance(value, str) and value.lower() in FACILITIES:
        return FACILITIES[value.lower()]
    raise ValueError(f"unknown syslog facility {value!r}; use 0-23 or {', '.join(FACILITIES)}")


Severity = Literal[SEVERITIES]  # type: ignore[valid-type]  # the schema's enum, as a type
SEVERITY_ORDER = SEVERITIES  # lowest first


class RateLimit(BaseModel):
    """A token bucket: `rate` per second, bursts up to `burst`; rate 0 means unlimited."""

    rate: float = Field(0.0, ge=0)
    burst: int = Field(0, ge=0, description="0: the same as rate (at least 1)")

    @property
    def capacity(self) -> float:
        return float(self.burst or max(1.0, self.rate))


class SinkBase(BaseModel):
    model_config = {"extra": "forbid"}

    name: str = Field("", pattern=r"^[A-Za-z0-9_.\-]*$", max_length=64)
    enabled: bool = True
    min_severity: Severity = "info"
    incidents: bool = Field(
        True,
        description="alerts grouped by incident: the first of each at once, then incident "
        "updates (false: every alert as it comes, no updates; e.g. an archive)",
    )
    queue_size: int = Field(10_000, ge=1, description="in-memory queue; the rest waits in store")
    batch_size: int = Field(500, ge=1)
    rate_limit: RateLimit = RateLimit()
    max_attempts: int = Field(10, ge=1, description="failed attempts before dead-letter")
    backoff_initial_s: float = Field(0.5, gt=0)
    backoff_max_s: float = Field(60.0, gt=0)


# json: our alert record; ocsf: an OCSF 1.8.0 Detection Finding; ecs: an Elastic Common
# Schema 9.4 document (event.kind alert). See daemoneye.formats and docs/FORMATS.md.
SchemaFormat = Literal["json", "ocsf", "ecs"]


class StdoutSink(SinkBase):
    kind: Literal["stdout"] = "stdout"
    format: Literal["json", "human", "csv", "ocsf", "ecs"] = "json"


class FileSink(SinkBase):
    kind: Literal["file"] = "file"
    path: Path | None = None  # None: <data_dir>/alerts.jsonl
    format: SchemaFormat = "json"  # one document a line
    rotate_bytes: int = Field(64 << 20, ge=0, description="rotate past this size; 0 never")
    rotate_age_s: float = Field(0.0, ge=0, description="rotate files older than this; 0 never")
    keep: int = Field(5, ge=0, description="rotated files kept (alerts.jsonl.1 ...)")
    fsync: Literal["batch", "interval", "never"] = "batch"
    fsync_interval_s: float = Field(1.0, gt=0)


class SyslogSink(SinkBase):
    kind: Literal["syslog"] = "syslog"
    transport: Literal["unix", "udp", "tcp"] = "unix"
    address: str = "/dev/log"  # a socket path for unix, host:port for udp/tcp
    format: Literal["text", "ocsf", "ecs"] = "text"  # the message: title: description, or JSON
    facility: str | int = "auth"
    app_name: str = Field("daemoneye", pattern=r"^[!-~]{1,48}$")
    hostname: str = ""  # empty: the settings' hostname
    timeout_s: float = Field(5.0, gt=0)
    max_message_bytes: int = Field(8192, ge=480)

    @field_validator("facility")
    @classmethod
    def _known_facility(cls, value: str | int) -> str | int:
        facility_code(value)  # raises ValueError naming the known facilities
        return value

    @model_validator(mode="after")
    def _address_fits(self) -> SyslogSink:
        if self.transport in ("udp", "tcp"):
            host, sep, port = self.address.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"address {self.address!r} must be host:port for {self.transport}")
        return self


class WebhookSink(SinkBase):
    kind: Literal["webhook"] = "webhook"
    url: str = Field(pattern=r"^https?://")
    format: SchemaFormat = "json"  # the POST body
    headers: dict[str, str] = {}
    token: str = ""  # sent as `Authorization: Bearer <token>`
    hmac_secret: str = ""  # signs the body: `X-DaemonEye-Signature: sha256=<hex>`
    verify_tls: bool = True
    ca_file: Path | None = None
    timeout_s: float = Field(5.0, gt=0)
    retries: int = Field(3, ge=0, description="quick retries within one attempt")
    breaker_failures: int = Field(3, ge=1, description="failed attempts that open the breaker")
    breaker_reset_s: float = Field(30.0, gt=0, description="open time before a trial request")
    batch_size: int = Field(1, ge=1)  # one POST per alert


class NatsSink(SinkBase, NatsConnection):
    """Alerts to NATS JetStream on `<subject_prefix>.<host>.alerts.<severity>`; the
    connection, TLS, auth and stream settings are daemoneye.settings.nats's."""

    kind: Literal["nats"] = "nats"
    # json: our record, what `daemoneye fleet alerts` reads back; ocsf / ecs: for a SIEM
    # or data lake consuming the stream (the fleet reader then shows the documents raw)
    format: SchemaFormat = "json"
    max_attempts: int = Field(
        1_000_000,
        ge=1,
        description="failed attempts before dead-letter: a NATS outage is not the alert's "
        "fault, so it waits; a message JetStream refuses is dead-lettered at once",
    )
    backoff_max_s: float = Field(
        5.0, gt=0, description="longest wait between attempts (a reconnect ends it at once)"
    )


AnySink = Annotated[
    StdoutSink | FileSink | SyslogSink | WebhookSink | NatsSink, Field(discriminator="kind")
]


class AlerterSettings(BaseModel):
    nice: int = Field(
        -10,
        ge=-20,
        le=19,
        description="niceness of the alerter's threads, as the collector's and the "
        "detector's: the last step from exec to alert must not wait behind a storm "
        "saturating the CPU; raising needs root or CAP_SYS_NICE, else it stays as started",
    )
    dedup_window_s: float = Field(300.0, ge=0, description="0 disables dedup")
    dedup_max_keys: int = Field(100_000, ge=1)
    rule_rate_limit: RateLimit = RateLimit(rate=100.0, burst=1000)
    summary_interval_s: float = Field(60.0, gt=0, description="how often held-back counts report")
    history_retention_days: float = Field(30.0, gt=0)
    coalesce_s: float = Field(
        0.01,
        ge=0,
        le=1,
        description="at low rates, one bus read, store write and sink hand-off per this "
        "interval: the first alert after a quiet spell goes at once, the rest of a steady "
        "stream in batches (fewer fsyncs, writes and thread wake-ups per alert); a burst of "
        "4 or more (a detector's batch in an alert storm) goes at once too, and in a storm the "
        "rest of a batch read in pieces is read 2 ms after its first piece; 0: every burst",
    )
    store_sync: bool = Field(
        False, description="fsync the delivery store on every write: survives power loss, slower"
    )
    sinks: list[AnySink] = Field(default_factory=lambda: [FileSink()])
    incident_window_s: float = Field(
        60.0,
        ge=0,
        description="alerts whose processes share a session or an ancestor below its "
        "leader within this long of the incident's last alert form one incident (0: none)",
    )
    incident_update_s: float = Field(
        30.0, gt=0, description="incident updates go out at most this often, in one record"
    )
    incident_max_open: int = Field(10_000, ge=1, description="open incidents kept at most")
    catch_up_new_streams: bool = Field(
        True, description="replay a detector's alerts from seq 1 when first seen mid-stream"
    )
    replay_timeout_s: float = Field(5.0, gt=0, description="deadline of one replay RPC")
    replay_routing_wait_s: float = Field(
        5.0, ge=0, description="how long a replay waits for a source to re-register"
    )

    @model_validator(mode="after")
    def _name_sinks(self) -> AlerterSettings:
        """Unnamed sinks get `<kind>`, `<kind>-2`, ...; explicit names must be unique."""
        explicit = [s.name for s in self.sinks if s.name]
        dupes = sorted({n for n in explicit if explicit.count(n) > 1})
        if dupes:
            raise ValueError(f"sink names must be unique; repeated: {', '.join(dupes)}")
        taken = set(explicit)
        for sink in self.sinks:
            if sink.name:
                continue
            name, n = sink.kind, 1
            while name in taken:
                n += 1
                name = f"{sink.kind}-{n}"
            sink.name = name
            taken.add(name)
        return self
