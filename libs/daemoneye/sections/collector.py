"""Settings of the collector (`[collector]`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class CollectorSettings(BaseModel):
    scan_interval_s: float = Field(30.0, gt=0, description="full /proc rescan interval")
    netlink: bool = Field(True, description="use the kernel process connector where it works")
    netlink_rcvbuf_bytes: int = Field(
        8 << 20, ge=4096, description="kernel buffer for process events; overruns are ENOBUFS"
    )
    realtime_priority: int = Field(
        10, ge=0, le=99, description="SCHED_FIFO priority of the netlink reader; 0: normal"
    )
    autostart: bool = Field(True, description="monitor at start; else wait for begin_monitoring")
    publish_initial: bool = Field(True, description="publish a start for every process at start")
    fork_publish_delay_s: float = Field(
        0.2, ge=0, description="a forked child that has not exec'd by then is published as is"
    )
    hash_executables: bool = True
    hash_max_bytes: int = Field(64 << 20, ge=0, description="larger executables are not hashed")
    hash_cache_entries: int = Field(16384, ge=16)
    wal_dir: str = Field("", description="empty: <data_dir>/collector/<id>/wal")
    wal_segment_bytes: int = Field(16 << 20, ge=4096)
    wal_max_bytes: int = Field(256 << 20, ge=4096, description="oldest segments go past this")
    wal_max_age_s: float = Field(7 * 86400.0, gt=0)
    wal_fsync: Literal["always", "interval", "never"] = "interval"
    wal_fsync_interval_s: float = Field(1.0, gt=0)
    replay_max: int = Field(10_000, ge=1, description="most envelopes one replay answers")
    publish_batch_max: int = Field(
        1,
        ge=1,
        le=1000,
        description="events per envelope: >1 sends consecutive events of one kind as one "
        "processEventBatch (one WAL entry and one seq per envelope); 1: one processEvent each",
    )
    publish_batch_ms: float = Field(
        2.0, ge=0, description="batching: the first event of a batch waits at most this long"
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
