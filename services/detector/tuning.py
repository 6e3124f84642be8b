"""The detector's side of exceptions (daemoneye.rules.exceptions): which rules carry
which, the global allowlist file, the counts `rules list` shows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from daemoneye.rules.engine import Engine, Firing
from daemoneye.rules.exceptions import Suppressor, allowlist_path, load_allowlist
from daemoneye.rules.model import Problem
from daemoneye.rules.tables import ALL_COLUMNS


class Tuning:
    def __init__(self) -> None:
        self.suppressor = Suppressor()
        self.allowlist_file: Path | None = None

    def install(self, engine: Engine, configured: Path | None, rules_dir: Path) -> list[Problem]:
        """Take the loaded rules' exceptions and the allowlist; its problems (a bad
        allowlist entry is left out, the others apply)."""
        path = allowlist_path(configured, rules_dir)
        self.allowlist_file = path
        entries, problems = [], []
        if path is not None:
            if not path.is_file():
                problems = [Problem(str(path), "", 0, "allowlist: file does not exist")]
            else:
                entries, problems = load_allowlist(path, set(ALL_COLUMNS))
        self.suppressor.install((a.rule for a in engine.rules.values()), entries)
        return problems

    def keep(self, firings: list[Firing]) -> list[Firing]:
        """The firings no exception suppresses (each suppression is counted)."""
        suppressor = self.suppressor
        if not suppressor.by_rule and not suppressor.allowlist:
            return firings
        return [f for f in firings if suppressor.suppressed_by(f.rule.id, f.row, f.record) is None]

    def summary(self, active: Any) -> dict[str, Any]:
        return {**active.summary(), **self.suppressor.summary(active.rule.id)}
