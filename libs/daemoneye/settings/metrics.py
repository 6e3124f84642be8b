"""Settings of the Prometheus endpoint (`[metrics]`), served by the broker."""

from __future__ import annotations

from pydantic import BaseModel, Field, field_validator


class MetricsSettings(BaseModel):
    listen: str = Field(
        "",
        description="HOST:PORT where the broker serves /metrics for every service on the bus "
        "(e.g. 127.0.0.1:9464; off if empty)",
    )

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        if not value:
            return value
        host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("must be HOST:PORT with a port 1-65535 (e.g. 127.0.0.1:9464)")
        if host.startswith("[") != host.endswith("]"):
            raise ValueError("an IPv6 host goes in brackets, e.g. [::1]:9464")
        return value

    def address(self) -> tuple[str, int]:
        """(host, port) to bind; an empty host means every interface."""
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]") or "0.0.0.0", int(port)
