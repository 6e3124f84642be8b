"""Runs the atheris fuzzers for a bounded number of inputs (slow; `make fuzz` runs longer)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("atheris") is None,
        reason="atheris not installed (pip install atheris, or make fuzz)",
    ),
]
HERE = Path(__file__).parent


@pytest.mark.parametrize("fuzzer", sorted(p.name for p in HERE.glob("fuzz_*.py")))
def test_fuzzer_finds_nothing(fuzzer: str, tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(HERE / fuzzer), "-runs=100000", f"-artifact_prefix={tmp_path}/"],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert not list(tmp_path.glob("crash-*")), "a crashing input was saved"
