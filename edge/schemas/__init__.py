"""JSON Schemas of what medge writes: the bundle manifest and the MQTT payloads."""
import json
from functools import cache
from pathlib import Path

SCHEMA_DIR = Path(__file__).resolve().parent


@cache
def load_schema(name: str) -> dict:
    """`load_schema("result")` -> the parsed result.schema.json."""
    return json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text())
