"""Settings of the collector (`[collector]`)."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, Field


class CollectorSettings(BaseModel):
    scan_interval_s: float = Field(30.0, gt=0, description="full /proc rescan interval")
    netlink: bool = Field(True, description="use the kernel process connector where it works")
    netlink_rcvbuf_bytes: int = Field(
        8 << 20, ge=4096, description="kernel buffer for process events; overruns are ENOBUFS"
    )
    scan_workers: int = Field(
        0,
        ge=0,
        le=16,
        description="processes reading /proc when a scan meets many new processes "
        "(a cold snapshot); 0: one per CPU, at most 4",
    )
    nice: int = Field(
        -10,
        ge=-20,
        le=19,
        description="niceness of the collector's threads, so a busy host does not delay "
        "its events (measured: bench/README.md, priorities); raising needs root or "
        "CAP_SYS_NICE, else it stays as started",
    )
    realtime_priority: int = Field(
        10, ge=0, le=99, description="SCHED_FIFO priority of the netlink reader; 0: normal"
    )
    reader_linger_s: float = Field(
        60.0,
        gt=0,
        description="the netlink reader outlives the main process (a crash, a restart, an "
        "upgrade) this long, spooling events for the next one, then exits",
    )
    reader_spool_bytes: int = Field(
        64 << 20,
        ge=1 << 20,
        description="events the reader keeps for a main process that is away; past this "
        "the oldest go, counted in collector.lost",
    )
    reader_hold_ms: int = Field(
        30,
        ge=0,
        le=100,
        description="events that need no /proc read wait in the kernel this long at most: "
        "forks go with the next exec's wake-up of the netlink reader, exits all together "
        "when the hold ends (one wake-up and one frame an exec, not three; one stop "
        "envelope a hold): the most a stop is delayed",
    )
    reader_send_ms: float = Field(
        0.0,
        ge=0,
        le=50,
        description="the netlink reader still reads each exec's /proc at once, but sends "
        "it to the main process up to this long later, with the execs that come meanwhile: "
        "a frame waits only while the next is expected before its time is up (gaps between "
        "frames, averaged), so a lone exec goes at once. The main, and every subscriber of "
        "its envelopes, then wakes once for a few execs instead of once each (6 ms at 200 "
        "exec/s: 0.57 instead of 0.91 start envelopes an exec, -14 % CPU in paired runs, "
        "exec -> event p99 6.1 -> 8.3 ms; not visible beyond bench/exec_cost.py's spread, "
        "and a storm's exec -> alert p99 was higher). Off (0) by default; with it on, set "
        "gather_ms 0 (two waits add up). The most an event is delayed: keep it within "
        "exec -> event p99 <= 10 ms",
    )
    autostart: bool = Field(True, description="monitor at start; else wait for begin_monitoring")
    publish_initial: bool = Field(True, description="publish a start for every process at start")
    fork_publish_delay_s: float = Field(
        0.2, ge=0, description="a forked child that has not exec'd by then is published as is"
    )
    hash_executables: bool = True
    hash_max_bytes: int = Field(64 << 20, ge=0, description="larger executables are not hashed")
    hash_cache_entries: int = Field(
        4096, ge=16, description="executable hashes kept (~400 bytes each), least recent out"
    )
    wal_dir: str = Field("", description="empty: <data_dir>/collector/<id>/wal")
    wal_segment_bytes: int = Field(16 << 20, ge=4096)
    wal_max_bytes: int = Field(256 << 20, ge=4096, description="oldest segments go past this")
    wal_max_age_s: float = Field(7 * 86400.0, gt=0)
    wal_fsync: Literal["always", "interval", "never"] = "interval"
    wal_fsync_interval_s: float = Field(1.0, gt=0)
    replay_max: int = Field(10_000, ge=1, description="most envelopes one replay answers")
    publish_batch_max: int = Field(
        64,
        ge=1,
        le=1000,
        description="events per envelope: >1 sends consecutive events of one kind as one "
        "processEventBatch (one WAL entry and one seq per envelope); 1: one processEvent each. "
        "Only events produced together share one: a lone event goes out at once",
    )
    publish_batch_ms: float = Field(
        1.0, ge=0, description="batching: the first event of a batch waits at most this long"
    )
    gather_ms: float = Field(
        5.0,
        ge=0,
        le=100,
        description="when the netlink reader's frames come faster than one per gather_ms, "
        "they are taken this often, many per wake-up, rather than each at once (a frame "
        "after a quiet spell is taken at once); 0: each at once. Under a storm it delays an "
        "event by up to this long and makes a third as many envelopes (make soak: 897 "
        "against 817 exec/s, exec -> alert p99 67 against 78 ms, exec -> event p99 16 "
        "against 13 ms); at 200 exec/s and below it rarely engages (see reader_send_ms)",
    )
    user: str = Field("", description="drop to this user after opening netlink (root only)")
    shell_parents: list[str] = Field(
        default_factory=lambda: [
            "nginx",
            "apache2",
            "httpd",
            "lighttpd",
            "caddy",
            "php-fpm",
            "php-cgi",
            "tomcat",
            "mysqld",
            "mariadbd",
            "postgres",
            "mongod",
            "redis-server",
        ],
        description="a shell spawned by one of these is suspicious",
    )
    world_writable_dirs: list[str] = Field(
        default_factory=lambda: ["/tmp", "/var/tmp", "/dev/shm"],
        description="executables under these are suspicious (plus any o+w directory)",
    )

    def read_workers(self) -> int:
        """`scan_workers` with 0 resolved to the machine's CPUs."""
        return self.scan_workers or max(1, min(os.cpu_count() or 1, 4))
