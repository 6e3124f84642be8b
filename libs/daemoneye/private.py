"""Private data: what a service writes is for its own user (and group) only.

Alerts, the WAL and the history hold every recorded command line, which the kernel
may hide from other users (`hidepid`). Rather than a mode at each of the places that
create a file or a directory (RocksDB alone creates dozens, with 0644), every service
sets its umask to 027 before it opens anything: directories come out 0750 and files
0640 (keys stay 0600: they are created so). `data_dir` itself is made 0750 too when an
earlier version left it open (and it holds only DaemonEye's data): nothing under it can
then be reached by other users.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

UMASK = 0o027  # no write for the group, nothing for others
DATA_DIR_MODE = 0o750
# What DaemonEye keeps in data_dir: a directory holding anything else (data_dir = /var/lib
# or a home, by mistake) is not ours to chmod.
OURS = ("collector", "detector", "alerter", "ledger", "keys", "broker-uplink", "alerts.jsonl")


def protect(data_dir: Path) -> str:
    """Set the umask and create (or tighten) `data_dir`; a note when it cannot."""
    os.umask(UMASK)
    path = Path(data_dir)
    try:
        path.mkdir(mode=DATA_DIR_MODE, parents=True, exist_ok=True)
        info = path.stat()
    except OSError as exc:  # the stores that need it say so, with their own path
        return f"data dir {path}: {exc.strerror}"
    mode = stat.S_IMODE(info.st_mode)
    if not mode & ~DATA_DIR_MODE:
        return ""
    foreign = [n for n in os.listdir(path) if not n.startswith(OURS)]
    if info.st_uid != os.geteuid() or mode & stat.S_ISVTX or foreign:
        return (
            f"data dir {path} is open to other users (mode {mode:o}) and holds more than "
            f"DaemonEye's data ({', '.join(sorted(foreign)[:3]) or 'sticky or not ours'}): "
            "left as it is; give DaemonEye a directory of its own"
        )
    os.chmod(path, DATA_DIR_MODE)
    return ""
