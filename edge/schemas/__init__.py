"""JSON Schemas of what medge writes: the bundle manifest and the MQTT payloads.

`payload_problem` is the one place a payload is judged against its schema; it also rejects
non-finite numbers, which JSON Schema cannot see (`"type": "number"` accepts a NaN that a
lenient parser produced). Payloads should be parsed with `medge.edge.payloads.decode`, which
refuses NaN/Infinity already; this check covers payloads that were built in memory.
"""
import json
import math
from functools import cache
from pathlib import Path

SCHEMA_DIR = Path(__file__).resolve().parent


@cache
def load_schema(name: str) -> dict:
    """`load_schema("result")` -> the parsed result.schema.json."""
    return json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text())


@cache
def _validator(name: str):
    from jsonschema import Draft202012Validator  # lazily: the device never validates

    return Draft202012Validator(load_schema(name))


def non_finite(value, path: str = "payload") -> str | None:
    """The path of the first NaN/Infinity in a parsed JSON value, else None."""
    if isinstance(value, float) and not math.isfinite(value):
        return path
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, inner in items:
        found = non_finite(inner, f"{path}/{key}")
        if found:
            return found
    return None


def payload_problem(name: str, payload) -> str | None:
    """None when `payload` is a valid `name` payload (result, status, ...), else why not: one
    line naming the first offending field."""
    schema_id = load_schema(name)["properties"]["schema"]["const"]
    where = non_finite(payload)
    if where:
        return f"{name} payload does not match {schema_id}: {where}: not a finite number"
    error = next(iter(sorted(_validator(name).iter_errors(payload), key=lambda e: list(map(str, e.path)))), None)
    if error is None:
        return None
    where = "/".join(str(part) for part in error.absolute_path) or "payload"
    # {"not": {}} is how the schemas forbid a field in one case (e.g. a score on not_applicable)
    message = "not allowed here" if error.validator == "not" and error.validator_value == {} else error.message
    return f"{name} payload does not match {schema_id}: {where}: {message}"[:300]
