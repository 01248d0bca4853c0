"""Deterministic UIDs for the objects medge writes back, so that a retry (the scanner resending,
the daemon restarting, a delivery repeated after a lost acknowledgement) never makes a second object.

A UID is a function of the source instance, the model's sha256 and the object kind: the same
input classified by the same model always yields the same SR and SC UIDs, another model new ones.
The form is 2.25.<UUID as integer> (PS3.5 B.2), from a name-based UUID (RFC 9562 version 5).
"""
from __future__ import annotations

import uuid

# Fixed for medge: changing it would change every UID ever written.
NAMESPACE = uuid.UUID("6f1c0e1a-6d65-6467-652d-706163730001")


def derived_uid(*parts: str) -> str:
    """2.25.N from the parts, e.g. derived_uid(source_sop_uid, model_sha256, "sr")."""
    if not parts or any(not str(part) for part in parts):
        raise ValueError("derived_uid needs non-empty parts")
    return f"2.25.{uuid.uuid5(NAMESPACE, chr(31).join(str(part) for part in parts)).int}"


def object_uids(source_sop_uid: str, source_series_uid: str, model_sha256: str, kind: str) -> tuple[str, str]:
    """(series UID, SOP Instance UID) of the `kind` ("sr", "sc") object for one source instance:
    every object of one kind and model for one source series lands in one new series."""
    return (derived_uid(source_series_uid, model_sha256, kind, "series"),
            derived_uid(source_sop_uid, model_sha256, kind, "instance"))
