"""Settings of the ledger (`[ledger]`)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class LedgerSettings(BaseModel):
    checkpoint_every_entries: int = Field(10_000, gt=0)
    checkpoint_every_s: float = Field(60.0, gt=0)
