"""Settings of the detector (`[detector]`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field


class DetectorSettings(BaseModel):
    rules_dir: Path | None = Field(
        None, description="rule files (unset: $DAEMONEYE_RULES_DIR, else the shipped deploy/rules)"
    )
    events_window_s: float = Field(600.0, gt=0, description="process_events keeps this long")
    events_window_rows: int = Field(100_000, ge=100, description="process_events row limit")
    rule_budget_ms: float = Field(
        200.0, gt=0, description="CPU time budget of one incremental rule run"
    )
    scheduled_budget_ms: float = Field(
        1000.0, gt=0, description="CPU time budget of one scheduled rule run"
    )
    query_budget_ms: float = Field(2000.0, gt=0, description="CPU time budget of a console query")
    schedule_interval_s: float = Field(2.0, gt=0, description="default cadence of aggregates")
    max_rows: int = Field(
        1000,
        ge=1,
        description="result rows read per scheduled rule run; an incremental run reads up "
        "to this plus its batch's changed rows",
    )
    max_batch: int = Field(2000, ge=1, description="events applied per batch at most")
    compile_timeout_s: float = Field(
        60.0,
        gt=0,
        description="a rule load's compiling child is killed after this long (the rules "
        "loaded before are kept)",
    )
    nice: int = Field(
        -10,
        ge=-20,
        le=19,
        description="niceness of the detector's threads, as the collector's: when a fork "
        "storm saturates the CPU the rules must not fall behind the storm (measured: "
        "bench/README.md, priorities); raising needs root or CAP_SYS_NICE, else it stays "
        "as started",
    )
    batch_wait_ms: float = Field(
        10.0,
        ge=0,
        description="an event waits at most this long on the bus for others to share its "
        "wake-up, its run of the rules and its history write (0: apply what each read of "
        "the bus brought at once); while events keep coming the bus is read this often, "
        "not woken by each arrival. At 200 exec/s 10 ms costs about a quarter less CPU "
        "than 5 ms and adds ~5 ms to exec -> alert (20 ms: p99 over the 50 ms budget)",
    )
    history_wait_ms: float = Field(
        250.0,
        ge=0,
        description="history rows (and the cursors written with them) wait in memory at "
        "most this long to share one RocksDB write; a batch that fires an alert is written "
        "at once, so a crash replays at most this much more from the collector's WAL, none "
        "of which had fired (0: one write per batch)",
    )
    retention_days: float = Field(7.0, gt=0, description="process history kept in RocksDB")
    persist: bool = Field(True, description="keep process history in <data_dir>/detector")
    snapshot_timeout_s: float = Field(3.0, gt=0, description="collector snapshot RPC deadline")
    history_max_pending: int = Field(
        200_000, ge=0, description="history rows held in memory while writes fail (disk full)"
    )
    store_retry_s: float = Field(
        1.0, gt=0, description="while history writes fail: how often to reopen and retry"
    )
    catch_up_new_streams: bool = Field(
        True, description="replay a collector's events from seq 1 when first seen mid-stream"
    )
    replay_routing_wait_s: float = Field(
        5.0, ge=0, description="how long a replay waits for a source to re-register"
    )
    alert_log_max: int = Field(
        100_000, ge=1, description="published alerts kept per alerts.<severity> for replay"
    )
    alert_log_days: float = Field(7.0, gt=0, description="published alerts kept this long")
    replay_max: int = Field(1000, ge=1, description="alerts one replay answer carries at most")
    ancestry_depth: int = Field(
        8,
        ge=0,
        le=32,
        description="ancestors carried by each alert (parent first), from the live table, "
        "the recent exits and the process history (0: none)",
    )
    allowlist: Path | None = Field(
        None,
        description="a global allowlist file of named exceptions (deploy/rules/README.md); "
        "unset: <rules_dir>/../allowlist.yml when it exists",
    )
