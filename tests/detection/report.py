"""Figures of a corpus run: detected per tactic, false positives, deliveries, latency."""

from __future__ import annotations

import statistics
from typing import Any

from .harness import RunResult, at_least
from .model import TACTICS


def summarise(result: RunResult, floor: str = "medium") -> dict[str, Any]:
    behaviours = [o for o in result.outcomes if not o.item.benign]
    benign = [o for o in result.outcomes if o.item.benign]
    ran = [o for o in behaviours if not o.skipped]
    detected = [o for o in ran if o.detected(floor)]
    per_tactic: dict[str, dict[str, int]] = {}
    for tactic in TACTICS:
        mine = [o for o in ran if o.item.tactic == tactic]
        if mine:
            per_tactic[tactic] = {
                "available": len(mine),
                "detected": sum(o.detected(floor) for o in mine),
            }
    benign_ran = [o for o in benign if not o.skipped]
    fp_all = [(o.item.id, a) for o in benign_ran for a in o.alerts]
    fp_floor = [(i, a) for i, a in fp_all if at_least(a["severity"], floor)]
    latencies = sorted(
        a["latency_s"]
        for o in ran
        for a in o.alerts
        if a["latency_s"] is not None and not a["aggregate"]
    )
    deliveries = [len(o.alerts) for o in detected]
    return {
        "rules_dir": result.rules_dir,
        "rules_loaded": len(result.rules),
        "seconds": round(result.seconds, 1),
        "floor": floor,
        "behaviours": {
            "total": len(behaviours),
            "available": len(ran),
            "detected": len(detected),
            "rate": round(len(detected) / len(ran), 4) if ran else None,
            "per_tactic": per_tactic,
            "missed": [
                {"id": o.item.id, "technique": o.item.technique, "name": o.item.name}
                for o in ran
                if not o.detected(floor)
            ],
            "skipped": {o.item.id: o.skipped for o in behaviours if o.skipped},
        },
        "benign": {
            "total": len(benign),
            "available": len(benign_ran),
            "alerts_at_floor": len(fp_floor),
            "actions_at_floor": len({i for i, _ in fp_floor}),
            "alerts_all": len(fp_all),
            "actions_all": len({i for i, _ in fp_all}),
            "alerts": [dict(a, item=i) for i, a in fp_all],
            "skipped": {o.item.id: o.skipped for o in benign if o.skipped},
        },
        "deliveries_per_detected": (round(statistics.mean(deliveries), 2) if deliveries else None),
        "latency_s": {
            "count": len(latencies),
            "median": round(statistics.median(latencies), 4) if latencies else None,
            "p90": round(latencies[int(len(latencies) * 0.9)], 4) if latencies else None,
            "max": round(latencies[-1], 4) if latencies else None,
        },
        "side_alerts": [dict(a, item=o.item.id) for o in result.outcomes for a in o.side_alerts],
        "unattributed": len(result.unattributed),
        "unattributed_by_rule": _by_rule(result.unattributed),
        "unattributed_alerts": result.unattributed[:500],
        "incomplete": [
            f"{o.item.id}.{p.kind}"
            for o in result.outcomes
            for p in o.phases
            if not p.complete and not p.timed_out
        ],
        "timed_out": [
            f"{o.item.id}.{p.kind}" for o in result.outcomes for p in o.phases if p.timed_out
        ],
        "left_behind": {o.item.id: o.left_behind for o in result.outcomes if o.left_behind},
        "no_callback": [
            o.item.id
            for o in result.outcomes
            if o.item.serve and not o.skipped and not o.connections
        ],
        "items": [
            {
                "id": o.item.id,
                "benign": o.item.benign,
                "tactic": o.item.tactic,
                "technique": o.item.technique,
                "skipped": o.skipped,
                "detected": (not o.item.benign and o.detected(floor)) or None,
                "alerts": o.alerts,
                "connections": o.connections if o.item.serve else None,
                "processes": o.processes,
                "phases": [
                    {
                        "kind": p.kind,
                        "rc": p.rc,
                        "seconds": round(p.wall[1] - p.wall[0], 2),
                        "timed_out": p.timed_out,
                        "complete": p.complete,
                    }
                    for p in o.phases
                ],
            }
            for o in result.outcomes
        ],
    }


def render(s: dict[str, Any]) -> str:
    """The summary as the text `bench/detection.py` prints."""
    b, n, lat = s["behaviours"], s["benign"], s["latency_s"]
    pct = f"{100 * b['rate']:.1f} %" if b["rate"] is not None else "-"
    lines = [
        f"rules: {s['rules_dir']} ({s['rules_loaded']} rules loaded); run took {s['seconds']} s",
        f"behaviours detected at >= {s['floor']}: {b['detected']} / {b['available']} available"
        f" = {pct}  ({b['total']} in the corpus, {len(b['skipped'])} skipped)",
        "",
        f"  {'tactic':<22} {'detected':>8} {'available':>9}",
    ]
    for tactic, row in b["per_tactic"].items():
        lines.append(f"  {tactic:<22} {row['detected']:>8} {row['available']:>9}")
    lines += [
        "",
        f"benign workload ({n['available']} of {n['total']} actions ran): "
        f"{n['alerts_at_floor']} alerts at >= {s['floor']} on {n['actions_at_floor']} actions; "
        f"{n['alerts_all']} alerts of any severity on {n['actions_all']} actions",
    ]
    for a in n["alerts"]:
        lines.append(f"  {a['item']}: {a['rule']} ({a['severity']}) {a['cmdline'][:100]}")
    per = s["deliveries_per_detected"]
    lines += [
        f"alerts delivered per detected behaviour: {per if per is not None else '-'}",
        f"exec -> alert in the file sink (aggregates excluded): median "
        f"{_ms(lat['median'])}, p90 {_ms(lat['p90'])}, max {_ms(lat['max'])} "
        f"over {lat['count']} alerts",
    ]
    if b["missed"]:
        lines += ["", f"missed ({len(b['missed'])}):"]
        lines += [f"  {m['id']:<34} {m['technique']:<10} {m['name']}" for m in b["missed"]]
    if b["skipped"] or n["skipped"]:
        lines += ["", "skipped:"]
        lines += [f"  {i}: {why}" for i, why in {**b["skipped"], **n["skipped"]}.items()]
    notes = []
    if s["side_alerts"]:
        notes.append(f"{len(s['side_alerts'])} alerts on setup/cleanup phases (not scored)")
    if s["unattributed"]:
        rules = ", ".join(f"{r} x{n}" for r, n in s["unattributed_by_rule"].items())
        notes.append(
            f"{s['unattributed']} alerts on other activity of the host or with no process "
            f"to attribute (not scored): {rules}"
        )
    if s["incomplete"]:
        notes.append(f"scripts cut short (a program read stdin): {', '.join(s['incomplete'])}")
    if s["timed_out"]:
        notes.append(f"timed out: {', '.join(s['timed_out'])}")
    if s["no_callback"]:
        notes.append(f"never connected to their listener: {', '.join(s['no_callback'])}")
    if s["left_behind"]:
        notes.append(f"LEFT BEHIND after cleanup: {s['left_behind']}")
    if notes:
        lines += ["", *notes]
    return "\n".join(lines)


def _by_rule(alerts: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for a in alerts:
        key = f"{a['rule']}({a['severity']})"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f} ms"
