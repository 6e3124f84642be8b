"""Whether the install built an optional C extension wherever it could."""

from __future__ import annotations

import shutil
import sys
import sysconfig
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest


def assert_built(
    implementation: str, extension: str, twin: str, little_endian: bool = False
) -> None:
    """Fail unless `extension` (daemoneye._x) is in use (`implementation` "c") where a C
    compiler and Python's headers are (and a little-endian machine, when the extension
    needs one); skip, naming the Python `twin` that runs, where they are not."""
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if shutil.which(compiler) is None or not headers.exists():
        pytest.skip(f"no C compiler ({compiler}) or no {headers}: {twin} runs")
    if little_endian and sys.byteorder != "little":
        pytest.skip(f"not a little-endian machine: {twin} runs")
    assert implementation == "c", (
        f"setup.py's optional extension {extension} was not built or not found: "
        "see the output of the install (pip install -v -e .)"
    )


def heap_kept(step: Callable[[], None], times: int) -> int:
    """Bytes still allocated (tracemalloc: Python's and PyMem's) after `times` calls of
    `step`, warmed up first: what a missed free or DECREF in an extension keeps."""
    for _ in range(200):
        step()
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        for _ in range(times):
            step()
        return tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
