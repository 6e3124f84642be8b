"""daemoneye.zygote: a forked `daemoneye <argv>` child, its exit code and its title."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from daemoneye import zygote

pytestmark = pytest.mark.skipif(not zygote.supported(), reason="fork start is Linux-only")


def test_a_forked_child_runs_the_command_and_exits_with_its_code(capfd) -> None:
    ok = zygote.fork_service(["--version"], ["daemoneye", "--version"], lambda: None)
    assert ok.wait(30) == 0
    assert "daemoneye" in capfd.readouterr().out
    usage = zygote.fork_service(["run", "nosuch"], ["daemoneye", "run", "nosuch"], lambda: None)
    assert usage.wait(30) == 2  # a usage error, as `daemoneye run nosuch` exits
    assert usage.poll() == 2


def test_wait_times_out_and_a_killed_child_reads_as_popen_does(tmp_path) -> None:
    # a child that blocks until killed: `in_child` never returns
    def block() -> None:
        signal.pause()

    child = zygote.fork_service(["--version"], ["daemoneye"], block)
    with pytest.raises(subprocess.TimeoutExpired):
        child.wait(0.2)
    child.kill()
    assert child.wait(30) == -signal.SIGKILL
    child.send_signal(signal.SIGTERM)  # reaped: no signal to a pid that may be reused


TITLE_PROBE = (  # the title from the environment: the original argv stays short
    "import json, os, sys\n"
    "from daemoneye.zygote import set_title\n"
    "set_title(json.loads(os.environ['TITLE']))\n"
    "sys.stdout.write(open('/proc/self/cmdline', 'rb').read().hex())\n"
)


def _python(script: str, **env: str) -> str:
    """The stdout of `script` run by a fresh interpreter (a clean process to look at)."""
    out = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def _title_of(*args: str) -> list[str]:
    out = _python(TITLE_PROBE, TITLE=json.dumps(args))
    return [a for a in bytes.fromhex(out).decode().split("\0") if a]


def test_the_title_replaces_the_command_line_whole_arguments_only() -> None:
    assert _title_of("py", "-m", "daemoneye", "run", "broker") == [
        "py",
        "-m",
        "daemoneye",
        "run",
        "broker",
    ]
    # longer than the original argv: the python path goes, `daemoneye run X` stays
    long = "/" + "x" * 300
    title = _title_of(long, "-m", "daemoneye", "run", "detector", "--data-dir", long)
    assert title[:3] == ["daemoneye", "run", "detector"]
    assert title == ["daemoneye", "run", "detector"]  # not a flag without its value


def test_the_supervisor_parses_a_service_s_arguments_and_settings(settings) -> None:
    args = zygote.prepare(["run", "detector", "--data-dir", "/tmp/de-zygote-data"])
    assert args is not None and args.service == "detector" and args.handler is not None
    assert args.settings.run_dir == settings.run_dir  # from the environment, as a child's
    assert str(args.settings.data_dir) == "/tmp/de-zygote-data"  # and the flags
    # not a service, or not parseable: left to the child, which reports it
    assert zygote.prepare(["--version"]) is None
    assert zygote.prepare(["run", "broker", "--no-such-flag"]) is None


def test_the_preload_parses_every_service_s_arguments_before_the_first_fork(settings) -> None:
    """`up` prepares each child's arguments while nothing is forked yet (a parse after a
    fork copies the pages it walks); a failed parse is None, as `prepare` says."""
    script = (
        "import json\n"
        "from daemoneye import zygote\n"
        "argvs = [['run', 'broker'], ['run', 'ledger', '--data-dir', '/tmp/de-zyg'], ['x']]\n"
        "got = zygote.preload(['broker', 'ledger'], argvs)\n"
        "print(json.dumps([None if a is None else [a.service, str(a.settings.run_dir),\n"
        "    str(a.settings.data_dir)] for a in got] + [zygote.preload(['broker'])]))\n"
    )
    broker, ledger, bad, none = json.loads(_python(script))
    assert broker[:2] == ["broker", str(settings.run_dir)]  # from the environment
    assert ledger[0] == "ledger" and ledger[2] == "/tmp/de-zyg"  # and the flags
    assert bad is None and none == []


def test_the_preload_of_every_service_leaves_out_what_only_some_paths_use() -> None:
    """What `up` imports is in every service's memory: not Rich (a human stdout sink,
    the console's verbs) nor prometheus_client (/metrics, off by default), nor what
    one service alone uses (the detector's rule engine: sqlglot), with its arguments
    parsed as `up` does."""
    script = (
        "import sys\n"
        "from daemoneye import zygote\n"
        "from daemoneye.services import available\n"
        "zygote.preload(available(), [['run', name] for name in available()])\n"
        "heavy = ('rich', 'prometheus_client', 'sqlglot', 'daemoneye.rules', 'zmq', 'rocksdict')\n"
        "print(','.join(m for m in heavy if m in sys.modules))\n"
    )
    # the preload is real: the bus is in it, and RocksDB (three services use it)
    assert _python(script).strip() == "zmq,rocksdict"
