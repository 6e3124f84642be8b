"""Settings of the ledger (`[ledger]`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field


class LedgerSettings(BaseModel):
    checkpoint_every_entries: int = Field(
        10_000, gt=0, description="sign a checkpoint every N entries"
    )
    checkpoint_every_s: float = Field(
        60.0, gt=0, description="and every S seconds while the ledger grows"
    )
    path: Path | None = Field(None, description="RocksDB directory (<data_dir>/ledger/db)")
    key_path: Path | None = Field(
        None,
        description="Ed25519 signing key, created 0600 on first start "
        "(<data_dir>/ledger/ed25519.key)",
    )
    origin: str = Field("", description="checkpoint origin line (<hostname>/daemoneye/ledger)")
    batch_max_entries: int = Field(5000, gt=0, description="entries per durable write at most")
    sync: bool = Field(True, description="fsync each batch before it counts as appended")
    commit_interval_ms: float = Field(
        100.0,
        ge=0,
        description="group commit: entries wait at most this long for others to share their "
        "durable write (0 commits after every read of the bus; at most read_interval_ms "
        "commits at the end of each read, as nothing joins before the next); collector "
        "events and alerts that a crash catches uncommitted are replayed from their source, "
        "the rest show as a gap on restart",
    )
    read_interval_ms: float = Field(
        250.0,
        ge=0,
        le=1000,
        description="once the bus is read dry, wait this long before reading it again, so a "
        "trickle is read (and recorded) in batches, not a wake-up per message; the bus queues "
        "what arrives meanwhile, so an entry is durable up to this long plus the commit "
        "interval after its message was sent (0 reads each message as it arrives)",
    )
    payload_retention_days: float = Field(
        0.0, ge=0, description="drop payloads (never entries) older than this; 0 keeps all"
    )
    retention_interval_s: float = Field(600.0, gt=0, description="how often retention runs")

    def db_path(self, data_dir: Path) -> Path:
        return self.path or Path(data_dir) / "ledger" / "db"

    def signing_key_path(self, data_dir: Path) -> Path:
        return self.key_path or Path(data_dir) / "ledger" / "ed25519.key"

    def origin_for(self, hostname: str) -> str:
        return self.origin or f"{hostname}/daemoneye/ledger"
