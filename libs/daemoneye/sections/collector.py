"""Settings of the collector (`[collector]`)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class CollectorSettings(BaseModel):
    scan_interval_s: float = Field(30.0, gt=0, description="full /proc rescan interval")
