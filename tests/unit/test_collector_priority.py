"""The collector's scheduling boost: every thread gets the niceness (the bus's I/O
threads too), a background worker goes back to normal, and without the capability the
boost is refused with a reason instead of an error. Run in a child: it changes the
process it runs in."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

CHILD = """
import json, os, threading
from daemoneye import priority

def nice_of(tid):
    stat = open(f"/proc/self/task/{tid}/stat").read()
    return int(stat.rsplit(")", 1)[1].split()[16])

hold = threading.Event()
early = threading.Thread(target=hold.wait)  # like the bus's I/O threads: before the boost
early.start()
why = priority.boost(-3)
nices = [nice_of(tid) for tid in os.listdir("/proc/self/task")]
later = {}
def worker():
    later["inherited"] = nice_of(threading.get_native_id())
    priority.background()
    later["background"] = nice_of(threading.get_native_id())
t = threading.Thread(target=worker)
t.start(); t.join()
hold.set(); early.join()
print(json.dumps({"why": why, "nices": nices, **later}))
"""


def run_child(as_nobody: bool = False) -> dict:
    argv = [sys.executable, "-c", CHILD]
    if as_nobody:
        argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd="/")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.skipif(os.geteuid() != 0, reason="raising priority needs root")
def test_boost_reaches_every_thread_and_background_undoes_it() -> None:
    out = run_child()
    assert out["why"] == ""
    assert out["nices"] == [-3] * len(out["nices"]) and len(out["nices"]) == 2
    assert out["inherited"] == -3 and out["background"] == 0


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv"
)
def test_without_the_capability_the_boost_says_why() -> None:
    out = run_child(as_nobody=True)
    assert "CAP_SYS_NICE" in out["why"]
    assert set(out["nices"]) == {0}
