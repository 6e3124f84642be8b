"""Settings of the alerter (`[alerter]`)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class AlerterSettings(BaseModel):
    dedup_window_s: float = Field(300.0, ge=0)
