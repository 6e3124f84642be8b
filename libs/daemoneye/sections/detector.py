"""Settings of the detector (`[detector]`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel


class DetectorSettings(BaseModel):
    rules_dir: Path | None = None  # None: the shipped deploy/rules
