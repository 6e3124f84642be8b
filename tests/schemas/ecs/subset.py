"""Trim ECS's generated/ecs/ecs_flat.yml to the field sets DaemonEye's `ecs` format uses.

git -C ecs show v9.4.0:generated/ecs/ecs_flat.yml > ecs_flat.yml
python subset.py ecs_flat.yml > ecs_flat_subset.yml
"""

import sys
from pathlib import Path

import yaml

FIELD_SETS = ("base", "ecs", "event", "rule", "process", "host", "user", "group", "agent",
              "observer", "container", "threat", "labels")  # fmt: skip
KEEP = ("type", "level", "normalize", "allowed_values", "example")

fields = yaml.safe_load(Path(sys.argv[1]).read_text())
out = {}
for name, spec in sorted(fields.items()):
    top = name.split(".")[0]
    if "." not in name:
        top = "base"
    if top not in FIELD_SETS:
        continue
    kept = {k: spec[k] for k in KEEP if k in spec}
    if "allowed_values" in kept:
        kept["allowed_values"] = [{"name": v["name"]} for v in kept["allowed_values"]]
    kept.pop("example", None)
    out[name] = kept
print("# A subset of Elastic Common Schema 9.4.0 generated/ecs/ecs_flat.yml (Apache-2.0,")
print("# see LICENSE.txt): the field sets of DaemonEye's `ecs` alert format. subset.py made it.")
yaml.safe_dump(out, sys.stdout, sort_keys=True, width=1000)
