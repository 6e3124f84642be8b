"""Long operations draw a progress bar on a real terminal (a pty), and never into a pipe
or with --json."""

from __future__ import annotations

import json
import os
import select
import subprocess
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from daemoneye.config import Settings
from daemoneye.ledger.note import Signer
from daemoneye.ledger.store import LedgerStore, LedgerWriter, open_store
from tests.conftest import DAEMONEYE, corpus, daemoneye, needs_corpus

SIGMA = corpus("sigma-linux-process-creation")
ENTRIES = 40_000  # a few progress callbacks (every 16384 entries)


def on_pty(env: dict[str, str], *args: str, timeout: float = 60) -> tuple[int, str]:
    """Run daemoneye with stdout and stderr on a pty, as in a terminal: (exit, screen)."""
    master, slave = os.openpty()
    proc = subprocess.Popen(
        [*DAEMONEYE, *args],
        env={**env, "TERM": "xterm-256color", "COLUMNS": "100", "LINES": "30"},
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    return code, b"".join(chunks).decode(errors="replace")


def piped(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """As on a terminal (TERM set), but into a pipe."""
    return daemoneye(*args, env=env, TERM="xterm-256color")


@pytest.fixture
def big_ledger(settings: Settings) -> str:
    """A ledger of ENTRIES entries with a signed checkpoint: its verifier key."""
    signer = Signer("test/ledger", Ed25519PrivateKey.generate())
    store = LedgerStore(open_store(settings.ledger.db_path(settings.data_dir)))
    writer = LedgerWriter(store, sync=False)
    for i in range(ENTRIES):
        writer.append("tester", "audit.test", b"payload %d" % i, time_ns=i)
        if i % 5000 == 4999:
            writer.commit()
    writer.sign_checkpoint(signer, "test/ledger")
    writer.commit()
    store.close()
    return signer.verifier.vkey()


def test_ledger_verify_shows_progress_on_a_terminal_only(run_env, big_ledger: str) -> None:
    code, screen = on_pty(run_env, "ledger", "verify", "--key", big_ledger)
    assert code == 0, screen
    assert "verifying ledger" in screen, screen  # the bar, with its description
    assert f"/{ENTRIES}" in screen  # fed by the verifier: "done/total"
    assert "ledger intact" in screen

    out = piped(run_env, "ledger", "verify", "--key", big_ledger)
    assert out.returncode == 0, out.stderr
    assert "verifying ledger" not in out.stderr + out.stdout
    assert "\x1b[" not in out.stderr + out.stdout

    code, screen = on_pty(run_env, "ledger", "verify", "--key", big_ledger, "--json")
    assert code == 0
    assert "verifying ledger" not in screen
    assert json.loads(screen)["size"] == ENTRIES


@needs_corpus("sigma-linux-process-creation")
def test_sigma_import_shows_progress_on_a_terminal_only(run_env, tmp_path: Path) -> None:
    files = len(list(SIGMA.glob("*.yml")))
    code, screen = on_pty(run_env, "rules", "import-sigma", str(SIGMA), "--output", str(tmp_path))
    assert code in (0, 1), screen  # 1 when some rule cannot be converted
    assert "converting Sigma rules" in screen, screen
    assert f"/{files}" in screen
    assert "converted" in screen

    out = piped(run_env, "rules", "import-sigma", str(SIGMA), "--output", str(tmp_path / "p"))
    assert "converting Sigma rules" not in out.stderr and "\x1b[" not in out.stderr
    assert len(list((tmp_path / "p").glob("*.yml"))) == len(list(tmp_path.glob("*.yml")))
