"""The detection corpus: attacker behaviours, a benign workload, and the harness that
runs both against a real `daemoneye up` (see harness.py, bench/detection.py)."""

from __future__ import annotations

from .behaviours import BEHAVIOURS
from .benign import BENIGN
from .model import TACTICS, Item

ITEMS: list[Item] = BEHAVIOURS + BENIGN

__all__ = ["BEHAVIOURS", "BENIGN", "ITEMS", "TACTICS", "Item"]
