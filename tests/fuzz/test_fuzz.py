"""Runs the atheris fuzzers: a few seconds each in the default suite, 100,000 inputs
each with `make test-slow`, and longer with `make fuzz`."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("atheris") is None,
    reason="atheris is not installed: the dev extras bring it on Linux x86_64 (make install)",
)
HERE = Path(__file__).parent
FUZZERS = sorted(p.name for p in HERE.glob("fuzz_*.py"))


def fuzz(fuzzer: str, tmp_path: Path, *limits: str) -> int:
    """Run one fuzzer within `limits`; fail on any finding. The number of inputs run."""
    out = subprocess.run(
        [sys.executable, str(HERE / fuzzer), *limits, f"-artifact_prefix={tmp_path}/"],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert not list(tmp_path.glob("crash-*")), "a crashing input was saved"
    done = re.search(r"^Done (\d+) runs", out.stderr, re.MULTILINE)
    assert done, f"the fuzzer did not say it ran:\n{out.stderr[-3000:]}"
    return int(done.group(1))


@pytest.mark.parametrize("fuzzer", FUZZERS)
def test_fuzzer_finds_nothing_in_a_few_seconds(fuzzer: str, tmp_path: Path) -> None:
    assert fuzz(fuzzer, tmp_path, "-max_total_time=5") > 0


@pytest.mark.slow
@pytest.mark.parametrize("fuzzer", FUZZERS)
def test_fuzzer_finds_nothing(fuzzer: str, tmp_path: Path) -> None:
    assert fuzz(fuzzer, tmp_path, "-runs=100000") == 100000
