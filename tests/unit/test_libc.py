"""The C library is loaded without starting a process: ctypes.util.find_library runs
`/sbin/ldconfig -p`, which every service would start, and the collector see, at each
import."""

from __future__ import annotations

import subprocess
import sys

from daemoneye.libc import libc

# Imports every module of the package, then loads the C library the ways the services
# do, with an audit hook that names any process started meanwhile.
_IMPORT_ALL = """
import importlib, pkgutil, sys
started = []
sys.addaudithook(
    lambda event, args: started.append(f"{event} {args}")
    if event in ("subprocess.Popen", "os.posix_spawn", "os.exec", "os.system", "os.fork")
    else None
)
import daemoneye
names = [m.name for m in pkgutil.walk_packages(daemoneye.__path__, "daemoneye.")
         if not m.name.endswith("__main__")]
for name in names:
    importlib.import_module(name)
from daemoneye import memory
from daemoneye.services.collector import privdrop
memory.heap_stats()
privdrop._libc()
print(len(names))
for line in started:
    print(line)
"""


def test_the_c_library_is_this_process_s_own() -> None:
    lib = libc()
    assert lib is not None and lib is libc()  # loaded once
    assert hasattr(lib, "prctl")


def test_no_module_starts_a_process_to_find_the_c_library() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _IMPORT_ALL], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert int(out[0]) > 50  # the walk found the package's modules
    assert out[1:] == []
