"""Typed settings: defaults < /etc/daemoneye/daemoneye.toml < ~/.config/daemoneye/daemoneye.toml
< --config FILE < DAEMONEYE_* env (nested with `__`) < CLI flags.

`load_settings` is the one entry point; an invalid value raises `ConfigError`
naming the key, the value and the reason.
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from daemoneye.settings.alerter import AlerterSettings
from daemoneye.settings.collector import CollectorSettings
from daemoneye.settings.detector import DetectorSettings
from daemoneye.settings.ledger import LedgerSettings
from daemoneye.settings.metrics import MetricsSettings
from daemoneye.settings.nats import NatsUplinkSettings

SYSTEM_CONFIG = Path("/etc/daemoneye/daemoneye.toml")
USER_CONFIG = Path("~/.config/daemoneye/daemoneye.toml").expanduser()


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def default_run_dir() -> Path:
    if is_root():
        return Path("/run/daemoneye")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and Path(runtime).is_dir():
        return Path(runtime) / "daemoneye"
    return Path(tempfile.gettempdir()) / f"daemoneye-{os.getuid()}"


def default_data_dir() -> Path:
    if is_root():
        return Path("/var/lib/daemoneye")
    return Path("~/.local/share/daemoneye").expanduser()


class BusSettings(BaseModel):
    """Endpoints and socket options. Empty endpoints mean `ipc://<run_dir>/<name>`."""

    events_in: str = Field("", description="where publishers send (the broker's XSUB)")
    events_out: str = Field("", description="where subscribers listen (the broker's XPUB)")
    control: str = Field("", description="RPC (the broker's ROUTER)")
    max_message_bytes: int = Field(
        16 << 20, gt=1024, description="hard cap on any frame (ZMQ_MAXMSGSIZE), bytes"
    )
    max_event_bytes: int = Field(
        1 << 20, gt=64, description="bus frames larger than this are dropped and counted, bytes"
    )
    send_hwm: int = Field(100_000, ge=0, description="messages queued per peer before drops")
    recv_hwm: int = Field(100_000, ge=0, description="messages queued on receipt")
    linger_ms: int = Field(1000, ge=0, description="how long a closing socket flushes, ms")
    reconnect_ivl_ms: int = Field(100, gt=0, description="first reconnect delay, ms")
    reconnect_ivl_max_ms: int = Field(2000, ge=0, description="longest reconnect delay, ms")
    curve: bool | None = Field(
        None, description="CurveZMQ on tcp:// endpoints (unset: on; false: plain TCP)"
    )
    keys_dir: Path | None = Field(None, description="key pairs; unset: <data_dir>/keys")
    server_key: str = Field("broker", description="the broker's key pair name in keys_dir")
    client_key: str = Field("client", description="this host's client key pair name in keys_dir")
    authorized_dir: Path | None = Field(
        None, description="public keys of admitted clients; unset: <keys_dir>/authorized"
    )

    @field_validator("events_in", "events_out", "control")
    @classmethod
    def _known_transport(cls, value: str) -> str:
        if value and not value.startswith(("ipc://", "tcp://", "inproc://")):
            raise ValueError("must start with ipc://, tcp:// or inproc://")
        return value


class BrokerSettings(BaseModel):
    nice: int = Field(
        0,
        ge=-20,
        le=19,
        description="niceness of the broker's threads. At -10 (as the collector, detector "
        "and alerter) it wakes for every frame instead of taking several per wake-up: "
        "lower latency for more CPU an event (measured: bench/README.md, priorities)",
    )
    unhealthy_after_missed: int = Field(
        3, ge=1, description="missed heartbeats before a service is marked unhealthy"
    )
    remove_after_missed: int = Field(
        12, ge=2, description="missed heartbeats before a service is removed from the registry"
    )
    max_counted_topics: int = Field(
        4096, ge=16, description="distinct streams counted by name; the rest as (other)"
    )
    uplink: str = Field(
        "", description="a central broker's control endpoint to forward topics to (off if empty)"
    )
    uplink_topics: list[str] = Field(
        ["alerts.", "audit.", "control.health."], description="topic prefixes sent uplink"
    )
    uplink_queue_max: int = Field(
        1_000_000, gt=0, description="frames kept on disk while the uplink is down"
    )
    uplink_batch: int = Field(500, gt=0, le=10_000, description="frames per uplink delivery")
    uplink_timeout_s: float = Field(5.0, gt=0, description="deadline of one uplink delivery, s")
    nats: NatsUplinkSettings = NatsUplinkSettings()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="DAEMONEYE_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    run_dir: Path = Field(default_factory=default_run_dir, description="socket directory")
    data_dir: Path = Field(default_factory=default_data_dir, description="databases, WAL and keys")
    config: Path | None = Field(None, description="an extra config file, read after the others")
    hostname: str = Field(
        default_factory=socket.gethostname, description="host name in ids and alerts"
    )
    log_level: str = Field("info", description="debug, info, warning or error")
    heartbeat_interval_s: float = Field(
        5.0, gt=0, le=3600, description="how often every service publishes a heartbeat, s"
    )
    rpc_timeout_s: float = Field(5.0, gt=0, le=3600, description="default RPC deadline, s")
    bus: BusSettings = BusSettings()
    broker: BrokerSettings = BrokerSettings()
    collector: CollectorSettings = CollectorSettings()
    detector: DetectorSettings = DetectorSettings()
    alerter: AlerterSettings = AlerterSettings()
    ledger: LedgerSettings = LedgerSettings()
    metrics: MetricsSettings = MetricsSettings()

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.lower()
        if level not in {"debug", "info", "warning", "error"}:
            raise ValueError("must be one of debug, info, warning, error")
        return level

    def keys_dir(self) -> Path:
        return self.bus.keys_dir or self.data_dir / "keys"

    def authorized_dir(self) -> Path:
        return self.bus.authorized_dir or self.keys_dir() / "authorized"

    def endpoint(self, name: str) -> str:
        configured = getattr(self.bus, name.replace("-", "_"))
        return configured or f"ipc://{self.run_dir / name}"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        files = [p for p in (_explicit_config_file(), USER_CONFIG, SYSTEM_CONFIG) if p]
        tomls = [TomlConfigSettingsSource(settings_cls, toml_file=p) for p in files if p.is_file()]
        return (init_settings, env_settings, *tomls)


_explicit_file: Path | None = None


def _explicit_config_file() -> Path | None:
    if _explicit_file is not None:
        return _explicit_file
    env = os.environ.get("DAEMONEYE_CONFIG")
    return Path(env).expanduser() if env else None


class ConfigError(Exception):
    """An invalid setting: one line per problem, naming key, value and reason."""


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build settings from every source; CLI flags arrive as `overrides` (None = not given)."""
    global _explicit_file
    given = {k: v for k, v in overrides.items() if v is not None}
    if config_file is not None:
        config_file = Path(config_file).expanduser()
        if not config_file.is_file():
            raise ConfigError(f"config file {config_file} does not exist or is not a file")
        given["config"] = config_file
    _explicit_file = config_file
    try:
        return Settings(**given)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None
    except (OSError, ValueError) as exc:  # unreadable or malformed TOML
        raise ConfigError(f"cannot read configuration: {exc}") from None
    finally:
        _explicit_file = None


def describe_validation_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(settings)"
        value = err.get("input")
        shown = "" if isinstance(value, dict) else f" = {value!r}"
        lines.append(f"invalid setting {key}{shown}: {err['msg']}")
    return "\n".join(lines)
