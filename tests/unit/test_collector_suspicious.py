"""Each suspicious heuristic on its own: when it fires and when it must not."""

from __future__ import annotations

from pathlib import Path

from daemoneye import procfs
from daemoneye.services.collector import suspicious

PLACES = ("/tmp", "/var/tmp", "/dev/shm")
SERVICES = ("nginx", "httpd", "postgres", "php-fpm")


def rec(**fields: object) -> dict:
    r = procfs.empty_record(100)
    r.update(name="sleep", exePath="/usr/bin/sleep", state="S", euid=1000, uid=1000)
    r.update(fields)
    return r


def reasons(r: dict, previous: dict | None = None, parent: dict | None = None) -> set[str]:
    return {hid for hid, _, _ in suspicious.check(r, previous, parent, PLACES, SERVICES)}


def test_plain_process_is_not_suspicious() -> None:
    assert reasons(rec(), rec(), rec(name="bash", exePath="/usr/bin/bash")) == set()


def test_exe_deleted() -> None:
    assert "exe_deleted" in reasons(rec(exeDeleted=True))
    hid, severity, msg = suspicious.check(rec(exeDeleted=True), None, None, PLACES, SERVICES)[0]
    assert (hid, severity) == ("exe_deleted", "high") and "/usr/bin/sleep" in msg


def test_fileless_memfd() -> None:
    memfd = rec(exePath="/memfd:payload", exeDeleted=True)
    assert reasons(memfd) >= {"exe_memfd"} and "exe_deleted" not in reasons(memfd)


def test_exe_in_world_writable_places(tmp_path: Path) -> None:
    assert "exe_world_writable" in reasons(rec(exePath="/dev/shm/x/sleep"))
    assert "exe_world_writable" in reasons(rec(exePath="/var/tmp/sleep"))
    assert "exe_world_writable" not in reasons(rec(exePath="/tmpfoo/sleep"))
    open_dir = tmp_path / "o+w"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    # any directory others may write to, not only the listed places
    assert suspicious.exe_in_writable_dir(rec(exePath=f"{open_dir}/sleep"), ()) is not None
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o755)
    assert suspicious.exe_in_writable_dir(rec(exePath=f"{closed}/sleep"), ()) is None


def test_a_directory_made_world_writable_later_is_seen(tmp_path: Path, monkeypatch) -> None:
    """The mode is cached for a storm of execs, but not for ever."""
    later = tmp_path / "later"
    later.mkdir(mode=0o755)
    exe = rec(exePath=f"{later}/sleep")
    assert suspicious.exe_in_writable_dir(exe, ()) is None
    later.chmod(0o777)
    assert suspicious.exe_in_writable_dir(exe, ()) is None  # within the TTL: cached
    later_clock = suspicious._clock() + suspicious.DIR_MODE_TTL_S + 1
    monkeypatch.setattr(suspicious, "_clock", lambda: later_clock)
    assert suspicious.exe_in_writable_dir(exe, ()) is not None  # after it: looked at again


def test_masquerade() -> None:
    assert "masquerade" in reasons(rec(name="kworker"))
    assert "masquerade" not in reasons(rec(name="sleep"))
    # the kernel truncates comm to 15 bytes
    long = rec(name="systemd-journal", exePath="/usr/lib/systemd/systemd-journald")
    assert "masquerade" not in reasons(long)
    # a script's comm is its own name while exe is the interpreter
    assert "masquerade" not in reasons(rec(name="backup.sh", exePath="/usr/bin/bash"))
    assert "masquerade" not in reasons(rec(name="tool", exePath="/usr/bin/python3.11"))
    assert "masquerade" not in reasons(rec(name="x", exePath="/usr/bin/sleep", state="Z"))


def test_uid_raised_to_root() -> None:
    now = rec(euid=0)
    assert "uid_raised_to_root" in reasons(now, rec(euid=1000))
    assert "uid_raised_to_root" not in reasons(now, None)  # a new root process is not a raise
    assert "uid_raised_to_root" not in reasons(now, rec(euid=0))
    assert "uid_raised_to_root" not in reasons(rec(euid=1000), rec(euid=0))  # a drop is fine
    hits = suspicious.check(now, rec(euid=1000), None, PLACES, SERVICES)
    assert hits[0][1] == "critical"


def test_shell_from_service() -> None:
    nginx = rec(name="nginx", exePath="/usr/sbin/nginx")
    assert "shell_from_service" in reasons(rec(name="sh", exePath="/usr/bin/dash"), None, nginx)
    assert "shell_from_service" in reasons(
        rec(name="bash", exePath="/usr/bin/bash"),
        None,
        rec(name="postgres", exePath="/usr/lib/pg/postgres"),
    )
    assert "shell_from_service" not in reasons(rec(name="ls", exePath="/usr/bin/ls"), None, nginx)
    sshd = rec(name="sshd", exePath="/usr/sbin/sshd")
    assert "shell_from_service" not in reasons(
        rec(name="bash", exePath="/usr/bin/bash"), None, sshd
    )
