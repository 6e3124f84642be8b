"""The runner alone (no monitor): phases, timeouts, cleanup, what is left behind."""

from __future__ import annotations

import os
from pathlib import Path

from tests.conftest import wait_for
from tests.detection.harness import Runner
from tests.detection.model import Item


def _runner(tmp_path: Path) -> Runner:
    tmp_path.mkdir(exist_ok=True)
    return Runner(tmp_path, "t3st00")


def test_a_phase_runs_in_a_session_of_its_own(tmp_path: Path) -> None:
    runner = _runner(tmp_path)
    try:
        item = Item("a", "a", "ps -o sid= -p $$\nfalse\n", "execution", "T1059.004", source="t")
        outcome = runner.run(item)
    finally:
        runner.close()
    (run,) = outcome.phases
    assert run.complete and not run.timed_out
    assert run.rc == 1  # the script's last command, not the harness's marker
    assert int(run.output.split()[0]) == run.sid != os.getsid(0)


def test_a_timeout_kills_the_session_and_cleanup_still_runs(tmp_path: Path) -> None:
    runner = _runner(tmp_path)
    marker = tmp_path / "cleaned"
    try:
        item = Item(
            "slow",
            "slow",
            "sleep 30 &\nsleep 30\n",
            "execution",
            "T1059.004",
            cleanup=f"touch {marker}\n",
            gone=("@WORK@/left",),
            setup="touch @WORK@/left\n",
            source="t",
            timeout_s=0.5,
        )
        outcome = runner.run(item)
    finally:
        runner.close()
    _, run, cleanup = outcome.phases
    assert run.timed_out and not run.complete and run.rc is None
    assert cleanup.complete and marker.exists()
    assert outcome.left_behind == [str(tmp_path / "items" / "slow" / "work" / "left")]
    # nothing of the timed-out session lives on (killed ones may linger as zombies
    # until PID 1 reaps them)
    wait_for(lambda: not _alive(run.sid), 10, f"the processes of session {run.sid} to die")


def _alive(sid: int) -> list[int]:
    alive = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        if int(fields[3]) == sid and fields[0] not in (b"Z", b"X"):
            alive.append(int(pid))
    return alive


def test_a_program_eating_the_script_is_reported(tmp_path: Path) -> None:
    runner = _runner(tmp_path)
    try:
        item = Item("eat", "eat", "cat > /dev/null\necho never\n", "execution", "T1059", source="t")
        outcome = runner.run(item)
    finally:
        runner.close()
    (run,) = outcome.phases
    assert not run.complete and "never" not in run.output


def test_job_control_gives_each_pipeline_its_process_group(tmp_path: Path) -> None:
    script = "ps -o pgid= -p $$\nsh -c 'ps -o pgid= -p $$'\n"
    groups = {}
    for job_control in (False, True):
        (tmp_path / str(job_control)).mkdir()
        runner = Runner(tmp_path / str(job_control), "t3st00", job_control)
        try:
            item = Item("g", "g", script, "execution", "T1059.004", source="t")
            (run,) = runner.run(item).phases
        finally:
            runner.close()
        groups[job_control] = [int(g) for g in run.output.split()]
    assert groups[False][0] == groups[False][1]  # one group: the session's
    assert groups[True][0] != groups[True][1]  # the pipeline has its own
