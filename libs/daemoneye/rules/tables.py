"""The tables rules query: names, SQLite types and meanings, and the DDL that builds them.

Column names and meanings follow osquery's tables of the same name, so osquery
queries run unchanged; columns osquery does not have are marked "(ours)".
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: str  # SQLite affinity: INTEGER, REAL, TEXT
    doc: str


@dataclass(frozen=True, slots=True)
class Table:
    name: str
    doc: str
    columns: tuple[Column, ...]
    indexes: tuple[tuple[str, ...], ...] = ()

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)


def _cols(*specs: tuple[str, str, str]) -> tuple[Column, ...]:
    return tuple(Column(*s) for s in specs)


INT, R, T = "INTEGER", "REAL", "TEXT"

ENV_DOC = (
    "(ours, osquery's process_events has it) the environment variables that matter for "
    "detection, as the process's exec got them: LD_PRELOAD, LD_LIBRARY_PATH, HISTFILE, "
    "HISTSIZE, HISTFILESIZE, as `NAME=value` separated by spaces; empty when none was set "
    "(or the collector could not read /proc/<pid>/environ)"
)

PROCESS_COLUMNS = _cols(
    ("pid", INT, "process id"),
    ("name", T, "process name (kernel comm, at most 15 bytes on Linux)"),
    ("path", T, "path of the executable"),
    ("cmdline", T, "complete argv, joined with spaces"),
    ("state", T, "kernel state letter (R running, S sleeping, D disk, Z zombie, ...)"),
    ("cwd", T, "current working directory"),
    ("root", T, "root directory (chroot)"),
    ("uid", INT, "real user id"),
    ("gid", INT, "real group id"),
    ("euid", INT, "effective user id"),
    ("egid", INT, "effective group id"),
    ("suid", INT, "saved user id"),
    ("sgid", INT, "saved group id"),
    ("on_disk", INT, "1 if the executable is on disk, 0 if not (deleted), -1 unknown"),
    ("wired_size", INT, "bytes of unpageable memory (always 0 on Linux)"),
    ("resident_size", INT, "bytes of private (resident) memory"),
    ("total_size", INT, "total virtual memory size in bytes"),
    ("user_time", INT, "CPU time in user space, milliseconds"),
    ("system_time", INT, "CPU time in kernel space, milliseconds"),
    ("disk_bytes_read", INT, "bytes read from disk"),
    ("disk_bytes_written", INT, "bytes written to disk"),
    ("start_time", INT, "process start time, seconds since the Unix epoch"),
    ("parent", INT, "parent process id"),
    ("pgroup", INT, "process group id"),
    ("threads", INT, "number of threads"),
    ("nice", INT, "scheduling priority (nice value)"),
    ("elapsed_time", INT, "seconds since the process started"),
    ("cgroup_path", T, "the full hierarchical path of the process's control group"),
    ("start_ticks", INT, "(ours) start time in clock ticks since boot; with pid, the identity"),
    ("auid", INT, "(ours) audit login uid (/proc/<pid>/loginuid); 4294967295 when unset"),
    ("username", T, "(ours) name of the real user"),
    ("sha256", T, "(ours) SHA-256 of the executable, hex; empty until hashed"),
    ("exe_deleted", INT, "(ours) 1 when the executable was deleted while running"),
    ("parent_name", T, "(ours) name of the parent process, when known"),
    ("parent_path", T, "(ours) executable path of the parent process, when known"),
    ("parent_cmdline", T, "(ours) command line of the parent process, when known"),
    ("session_id", INT, "(ours) session id"),
    ("tty", T, "(ours) controlling terminal"),
    ("container_id", T, "(ours) container id derived from the cgroup, empty on the host"),
    ("pid_namespace", INT, "(ours) inode of the pid namespace"),
    ("collector", T, "(ours) source id of the collector that reported the process"),
    ("hostname", T, "(ours) host the process runs on"),
    ("first_seen", R, "(ours) when the detector first saw the process, seconds since epoch"),
    ("last_seen", R, "(ours) when the detector last got an event for it, seconds since epoch"),
)

EVENT_COLUMNS = _cols(
    ("event", T, "(ours) start, stop, modify or suspicious"),
    ("time", INT, "when the collector observed the event, seconds since the Unix epoch"),
    ("time_ns", INT, "(ours) the same, nanoseconds"),
    ("eid", INT, "event id, increasing within this detector"),
    ("syscall", T, "execve for start, exit for stop, modify, suspicious (osquery-like)"),
    ("changed_fields", T, "(ours) modify: comma-separated record fields that changed"),
    (
        "reason",
        T,
        "(ours) suspicious: which heuristic fired; start or modify: `argv_lost: late_wake`"
        " or `argv_lost: busy` when the process was gone before its argv was read",
    ),
    ("severity", T, "(ours) suspicious: how bad (info..critical)"),
    ("source", T, "(ours) snapshot, netlink or psutil"),
    ("status", INT, "stop: exit code, when known"),
    ("runtime_ms", INT, "(ours) stop: how long the process lived, when known"),
    ("mode", T, "mode of the executable, octal text, when known"),
    ("cmdline_size", INT, "length of the command line in bytes"),
    ("env", T, ENV_DOC),
    ("env_count", INT, "number of the collected environment variables in `env`"),
    ("env_size", INT, "length of `env` in bytes"),
    ("owner_uid", INT, "owner uid of the executable, when known"),
    ("owner_gid", INT, "owner gid of the executable, when known"),
    ("atime", INT, "access time of the executable, when known"),
    ("mtime", INT, "modification time of the executable, seconds since epoch"),
    ("ctime", INT, "change time of the executable, when known"),
    ("btime", INT, "birth time of the executable (unknown: 0)"),
    ("overflows", T, "osquery audit overflow note (always empty)"),
    ("uptime", INT, "system uptime at the event, seconds, when known"),
    ("fsuid", INT, "filesystem uid (the effective uid)"),
    ("fsgid", INT, "filesystem gid (the effective gid)"),
)

PROCESSES = Table(
    "processes",
    "The live table: one row per running process, updated on every event.",
    # process_events has env among its own columns, and no `accessible`
    PROCESS_COLUMNS
    + _cols(
        (
            "accessible",
            INT,
            "(ours) 1 when the collector read the whole record; 0 when part of it could not "
            "be read, or for a process seen only through the kernel's fork and exit (a "
            "subshell that never ran a program: its name, path and argv are its parent's)",
        ),
        ("env", T, ENV_DOC),
    ),
    indexes=(("pid",), ("parent",)),
)

PROCESS_EVENTS = Table(
    "process_events",
    "A bounded recent window of every process event (time and row limits are settings).",
    PROCESS_COLUMNS + EVENT_COLUMNS,
    indexes=(("pid",), ("time",)),
)

USERS = Table(
    "users",
    "Local users from the passwd database.",
    _cols(
        ("uid", INT, "user id"),
        ("gid", INT, "primary group id"),
        ("uid_signed", INT, "user id as a signed integer"),
        ("gid_signed", INT, "group id as a signed integer"),
        ("username", T, "login name"),
        ("description", T, "GECOS field"),
        ("directory", T, "home directory"),
        ("shell", T, "login shell"),
        ("uuid", T, "user uuid (empty on Linux)"),
        ("type", T, "account type (empty on Linux)"),
    ),
    indexes=(("uid",),),
)

HASH = Table(
    "hash",
    "Hashes of every executable seen (as reported by the collector).",
    _cols(
        ("path", T, "path of the file"),
        ("directory", T, "directory of the file"),
        ("md5", T, "MD5 (not computed: empty)"),
        ("sha1", T, "SHA-1 (not computed: empty)"),
        ("sha256", T, "SHA-256, hex"),
        ("ssdeep", T, "ssdeep (not computed: empty)"),
        ("pid_with_namespace", INT, "pid whose mount namespace was used (0)"),
        ("mount_namespace_id", T, "mount namespace (empty)"),
    ),
    indexes=(("path",),),
)

FILE = Table(
    "file",
    "Metadata of every executable and working directory seen, stat()ed by the detector.",
    _cols(
        ("path", T, "absolute path"),
        ("directory", T, "directory containing it"),
        ("filename", T, "name within the directory"),
        ("inode", INT, "inode number"),
        ("uid", INT, "owning user id"),
        ("gid", INT, "owning group id"),
        ("mode", T, "permission bits, octal text (e.g. 0755)"),
        ("device", INT, "device id of a special file"),
        ("size", INT, "size in bytes"),
        ("block_size", INT, "block size of the file system"),
        ("atime", INT, "last access, seconds since epoch"),
        ("mtime", INT, "last modification, seconds since epoch"),
        ("ctime", INT, "last status change, seconds since epoch"),
        ("btime", INT, "creation time (0 when unknown)"),
        ("hard_links", INT, "number of hard links"),
        ("symlink", INT, "1 when the path is a symbolic link"),
        ("type", T, "regular, directory, symlink, character, block, fifo or socket"),
        ("attributes", T, "file attributes (empty)"),
        ("pid_with_namespace", INT, "pid whose mount namespace was used (0)"),
        ("mount_namespace_id", T, "mount namespace (empty)"),
    ),
    indexes=(("path",), ("directory",)),
)

PROCESS_OPEN_SOCKETS = Table(
    "process_open_sockets",
    "Sockets open by processes (Linux: /proc/<pid>/fd and /proc/net), refreshed on a cadence.",
    _cols(
        ("pid", INT, "process id"),
        ("fd", INT, "file descriptor number"),
        ("socket", INT, "socket inode"),
        ("family", INT, "address family (1 unix, 2 inet, 10 inet6)"),
        ("protocol", INT, "IP protocol (6 tcp, 17 udp, 1 icmp, 58 icmpv6, 255 raw); 0 for unix"),
        ("local_address", T, "local address"),
        ("remote_address", T, "remote address"),
        ("local_port", INT, "local port"),
        ("remote_port", INT, "remote port"),
        ("path", T, "path of a unix socket"),
        ("state", T, "TCP state (ESTABLISHED, LISTEN, ...)"),
        ("net_namespace", INT, "inode of the network namespace"),
    ),
    indexes=(("pid",),),
)

TABLES: dict[str, Table] = {
    t.name: t for t in (PROCESSES, PROCESS_EVENTS, USERS, HASH, FILE, PROCESS_OPEN_SOCKETS)
}
ALL_COLUMNS = frozenset(c for t in TABLES.values() for c in t.column_names) | {"rowid"}
# Tables incremental rules can follow: their rowids only grow, so "changed since"
# is a rowid range (processes: a new rowid per version of a process; events: eid).
INCREMENTAL_TABLES = ("processes", "process_events")


def ddl(table: Table) -> list[str]:
    name = table.name
    cols = ", ".join(f"{c.name} {c.type}" for c in table.columns)
    statements = [f"CREATE TABLE {name} ({cols})"]
    for index in table.indexes:
        statements.append(f"CREATE INDEX {name}_{'_'.join(index)} ON {name} ({', '.join(index)})")
    return statements


def schema_statements() -> list[str]:
    out: list[str] = []
    for table in TABLES.values():
        out += ddl(table)
    return out


def markdown() -> str:
    """Documentation of every table and column (deploy/rules/TABLES.md is generated from it)."""
    lines = [
        "# Tables available to rules",
        "",
        "Generated by `python -m daemoneye.rules.tables`. Columns marked (ours) are",
        "DaemonEye's; the rest follow osquery's tables of the same name.",
    ]
    for table in TABLES.values():
        lines += ["", f"## `{table.name}`", "", table.doc, "", "| column | type | meaning |"]
        lines.append("|---|---|---|")
        lines += [f"| `{c.name}` | {c.type} | {c.doc} |" for c in table.columns]
    from .lineage import DOC_LINES  # the ancestry functions, documented beside the tables

    return "\n".join(lines + DOC_LINES) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
