"""Validators of documents against the published OCSF and ECS schemas vendored beside
this file; each returns every problem found (an empty list: valid).

OCSF (ocsf/ocsf-1.8.0-subset.json: the Detection Finding and Process Activity classes
and every object they reach, compiled from github.com/ocsf/ocsf-schema at tag 1.8.0
with ocsf-lib, see ocsf/slim.py): every attribute must be defined for its class or
object, with its type (objects recursively, arrays where `is_array`, the scalar types'
base type, range, regex and length), enum values from the enum, `_id`/caption siblings
agreeing, required attributes present, `at_least_one`/`just_one` constraints met,
profile attributes only with their profile in `metadata.profiles`, and the class-level
rules: `category_uid` the class's category, `type_uid = class_uid * 100 + activity_id`.

ECS (ecs/ecs_flat_subset.yml: ECS 9.4.0's generated field list, the field sets used):
every leaf must be an ECS field (or under an `object` field such as `labels`), of the
field's type, an array exactly where ECS normalizes to one, from `allowed_values` where
ECS lists them.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
OCSF_FILE = HERE / "ocsf" / "ocsf-1.8.0-subset.json"
ECS_FILE = HERE / "ecs" / "ecs_flat_subset.yml"

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)


@cache
def ocsf_schema() -> dict[str, Any]:
    return json.loads(OCSF_FILE.read_text())


@cache
def ecs_fields() -> dict[str, Any]:
    return yaml.safe_load(ECS_FILE.read_text())


# --- OCSF -------------------------------------------------------------------------


def ocsf_problems(doc: dict[str, Any]) -> list[str]:
    schema = ocsf_schema()
    classes = {c["uid"]: c for c in schema["classes"].values()}
    cls = classes.get(doc.get("class_uid"))
    if cls is None:
        return [f"class_uid {doc.get('class_uid')!r} is not one of {sorted(classes)}"]
    problems: list[str] = []
    profiles = set((doc.get("metadata") or {}).get("profiles") or [])
    if doc.get("category_uid") != cls["category_uid"]:
        problems.append(f"category_uid {doc.get('category_uid')} != {cls['category_uid']}")
    activity = doc.get("activity_id")
    if isinstance(activity, int) and doc.get("type_uid") != cls["uid"] * 100 + activity:
        problems.append(f"type_uid {doc.get('type_uid')} != class_uid * 100 + activity_id")
    version = (doc.get("metadata") or {}).get("version")
    if version != schema["version"]:
        problems.append(f"metadata.version {version!r} is not the schema's {schema['version']}")
    _ocsf_object(doc, cls, profiles, cls["name"], problems)
    return problems


def _ocsf_object(
    value: Any, spec: dict[str, Any], profiles: set[str], path: str, problems: list[str]
) -> None:
    if not isinstance(value, dict):
        problems.append(f"{path}: expected an object, got {type(value).__name__}")
        return
    attrs = spec["attributes"]
    for name, item in value.items():
        where = f"{path}.{name}"
        attr = attrs.get(name)
        if attr is None:
            problems.append(f"{where}: not an attribute of {spec['name']}")
            continue
        if attr.get("profile") and attr["profile"] not in profiles:
            problems.append(f"{where}: belongs to profile {attr['profile']!r}, not declared")
        _ocsf_attribute(item, attr, value, attrs, profiles, where, problems)
    for name, attr in attrs.items():
        active = not attr.get("profile") or attr["profile"] in profiles
        if attr.get("requirement") == "required" and active and name not in value:
            problems.append(f"{path}: required attribute {name!r} missing")
    constraints = spec.get("constraints") or {}
    at_least = constraints.get("at_least_one")
    if at_least and not any(n in value for n in at_least):
        problems.append(f"{path}: needs at least one of {at_least}")
    just = constraints.get("just_one")
    if just and sum(n in value for n in just) != 1:
        problems.append(f"{path}: needs exactly one of {just}")


def _ocsf_attribute(
    item: Any,
    attr: dict[str, Any],
    parent: dict[str, Any],
    attrs: dict[str, Any],
    profiles: set[str],
    where: str,
    problems: list[str],
) -> None:
    if attr.get("is_array"):
        if not isinstance(item, list):
            problems.append(f"{where}: expected an array")
            return
        for i, element in enumerate(item):
            _ocsf_value(element, attr, parent, attrs, profiles, f"{where}[{i}]", problems)
    else:
        if isinstance(item, list):
            problems.append(f"{where}: not an array attribute")
            return
        _ocsf_value(item, attr, parent, attrs, profiles, where, problems)


def _ocsf_value(
    item: Any,
    attr: dict[str, Any],
    parent: dict[str, Any],
    attrs: dict[str, Any],
    profiles: set[str],
    where: str,
    problems: list[str],
) -> None:
    schema = ocsf_schema()
    kind = attr["type"]
    if kind in ("object", "json_t"):  # free-form: any object (`unmapped`), any JSON
        if kind == "object" and not isinstance(item, dict):
            problems.append(f"{where}: expected an object")
        return
    if kind in schema["objects"]:
        _ocsf_object(item, schema["objects"][kind], profiles, where, problems)
        return
    _ocsf_scalar(item, kind, where, problems)
    enum = attr.get("enum")
    if enum is not None:
        if str(item) not in enum:
            problems.append(f"{where}: {item!r} is not one of {sorted(enum, key=_num)}")
            return
        sibling = attr.get("sibling")
        caption = enum[str(item)]["caption"]
        # the caption names the value, except for Other (99), where it names what it is
        if sibling and sibling in parent and str(item) != "99" and parent[sibling] != caption:
            problems.append(
                f"{where}: {item} is {caption!r}, but {sibling} says {parent[sibling]!r}"
            )


def _num(text: str) -> int:
    return int(text) if text.lstrip("-").isdigit() else 0


def _ocsf_scalar(item: Any, kind: str, where: str, problems: list[str]) -> None:
    types = ocsf_schema()["types"]
    spec = types.get(kind)
    if spec is None:
        problems.append(f"{where}: unknown type {kind}")
        return
    base = spec.get("type") or kind  # e.g. hostname_t -> string_t; string_t is its own base
    ok = {
        "string_t": isinstance(item, str),
        "integer_t": _is_int(item) and INT32[0] <= item <= INT32[1],
        "long_t": _is_int(item) and INT64[0] <= item <= INT64[1],
        "float_t": isinstance(item, int | float) and not isinstance(item, bool),
        "boolean_t": isinstance(item, bool),
    }.get(base)
    if ok is None:
        problems.append(f"{where}: type {kind} (base {base}) not checked by this validator")
        return
    if not ok:
        problems.append(f"{where}: {item!r} is not a {kind} ({base})")
        return
    if spec.get("regex") and isinstance(item, str) and not re.search(spec["regex"], item):
        problems.append(f"{where}: {item!r} does not match the {kind} pattern")
    if spec.get("max_len") and isinstance(item, str) and len(item) > spec["max_len"]:
        problems.append(f"{where}: longer than {spec['max_len']}")
    if spec.get("range") and not spec["range"][0] <= item <= spec["range"][1]:
        problems.append(f"{where}: {item} outside {spec['range']}")
    if spec.get("values") is not None and item not in spec["values"]:
        problems.append(f"{where}: {item!r} not one of {spec['values']}")


def _is_int(item: Any) -> bool:
    return isinstance(item, int) and not isinstance(item, bool)


# --- ECS --------------------------------------------------------------------------

ECS_STRING = {"keyword", "wildcard", "text", "match_only_text", "constant_keyword", "version"}
ECS_INT = {"long", "integer", "short", "byte", "unsigned_long"}
ECS_FLOAT = {"float", "double", "half_float", "scaled_float"}
ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


def ecs_problems(doc: dict[str, Any]) -> list[str]:
    fields = ecs_fields()
    problems: list[str] = []
    for name, value in _flatten(doc, fields):
        spec = fields.get(name)
        if spec is None:
            problems.append(f"{name}: not an ECS field")
            continue
        kind = spec["type"]
        is_array = "array" in (spec.get("normalize") or [])
        if isinstance(value, list) != is_array:
            problems.append(f"{name}: {'an array' if is_array else 'a single value'} in ECS")
            continue
        for item in value if isinstance(value, list) else [value]:
            problem = _ecs_type(item, kind)
            if problem:
                problems.append(f"{name}: {item!r} {problem}")
            allowed = [v["name"] for v in spec.get("allowed_values") or []]
            if allowed and item not in allowed:
                problems.append(f"{name}: {item!r} is not one of {allowed}")
    return problems


def _flatten(doc: dict[str, Any], fields: dict[str, Any], prefix: str = "") -> list[tuple]:
    """(dotted name, value) of every leaf; an `object`-typed field (labels) is a leaf
    whose keys ECS leaves free, so its values are checked as keywords under it."""
    out: list[tuple] = []
    for key, value in doc.items():
        name = f"{prefix}{key}"
        spec = fields.get(name)
        if spec is not None and spec["type"] in ("object", "flattened"):
            if not isinstance(value, dict):
                out.append((name, value))
                continue
            for sub, v in value.items():
                if not isinstance(v, str):
                    out.append((f"{name}.{sub}", v))  # reported as not an ECS field
            continue
        if isinstance(value, dict):
            out += _flatten(value, fields, name + ".")
        else:
            out.append((name, value))
    return out


def _ecs_type(item: Any, kind: str) -> str:
    if kind in ECS_STRING:
        return "" if isinstance(item, str) else f"is not a string ({kind})"
    if kind in ECS_INT:
        return "" if _is_int(item) else f"is not an integer ({kind})"
    if kind in ECS_FLOAT:
        ok = isinstance(item, int | float) and not isinstance(item, bool)
        return "" if ok else f"is not a number ({kind})"
    if kind == "boolean":
        return "" if isinstance(item, bool) else "is not a boolean"
    if kind == "date":
        return "" if isinstance(item, str) and ISO_DATE.match(item) else "is not an ISO 8601 date"
    if kind == "ip":
        return "" if isinstance(item, str) else "is not an IP string"
    return f"has type {kind}, not checked by this validator"
