"""Trim a compiled OCSF schema to the classes DaemonEye emits and the objects they reach.

git -C ocsf-schema archive 1.8.0 | tar -x -C ocsf-1.8.0
python -m ocsf.compile --ignore-extension linux win ocsf-1.8.0 > ocsf-1.8.0.json  # ocsf-lib
python slim.py ocsf-1.8.0.json > ocsf-1.8.0-subset.json
"""

import json
import sys
from pathlib import Path

s = json.loads(Path(sys.argv[1]).read_text())
keep = ["detection_finding", "process_activity"]
objs = s["objects"]
seen, todo = set(), []


def refs(attrs):
    return [a["type"] for a in attrs.values() if a.get("type") in objs]


for k in keep:
    todo += refs(s["classes"][k]["attributes"])
while todo:
    o = todo.pop()
    if o not in seen:
        seen.add(o)
        todo += refs(objs[o]["attributes"])


def slim(attrs):
    out = {}
    for n, a in attrs.items():
        b = {
            k: a[k]
            for k in ("type", "requirement", "is_array", "sibling", "profile")
            if a.get(k) is not None
        }
        if a.get("enum"):
            b["enum"] = {k: {"caption": v.get("caption")} for k, v in a["enum"].items()}
        out[n] = b
    return out


def cls(k):
    c = s["classes"][k]
    return {
        "uid": c["uid"],
        "name": k,
        "caption": c["caption"],
        "category": c["category"],
        "category_uid": s["categories"][c["category"]]["uid"],
        "constraints": c.get("constraints"),
        "attributes": slim(c["attributes"]),
    }


t = {
    "version": s["version"],
    "source": "github.com/ocsf/ocsf-schema tag "
    + s["version"]
    + ", compiled with ocsf-lib 0.10.4 (python -m ocsf.compile --ignore-extension linux win),"
    " trimmed by tests/schemas/ocsf/slim.py",
    "classes": {k: cls(k) for k in keep},
    "objects": {
        o: {
            "name": o,
            "constraints": objs[o].get("constraints"),
            "attributes": slim(objs[o]["attributes"]),
        }
        for o in sorted(seen)
    },
    "types": {
        k: {
            kk: v[kk]
            for kk in ("type", "regex", "max_len", "range", "values")
            if v.get(kk) is not None
        }
        for k, v in s["types"].items()
    },
}
json.dump(t, sys.stdout, sort_keys=True, indent=1)
