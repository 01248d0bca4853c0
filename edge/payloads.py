"""Builders of the MQTT payloads, one per schema in edge/schemas (result, status, heartbeat,
error). They take only non-identifying values: the input is named by its pseudonymous
reference, DICOM contributes modality and body part, and no pixel ever leaves the device.
"""
from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

from medge.edge.about import DISCLAIMER, __version__
from medge.edge.comms.topics import KINDS

# The ids live in the schema files (edge/comms/topics.py reads them from there).
RESULT_SCHEMA = KINDS["result"].schema_id
STATUS_SCHEMA = KINDS["status"].schema_id
HEARTBEAT_SCHEMA = KINDS["heartbeat"].schema_id
ERROR_SCHEMA = KINDS["error"].schema_id


def new_id() -> str:
    return uuid.uuid4().hex


def utc_now(timespec: str = "milliseconds") -> str:
    """UTC time as ISO 8601 with a Z, the form every medge payload and manifest uses."""
    return datetime.now(UTC).isoformat(timespec=timespec).replace("+00:00", "Z")


def encode(payload: dict) -> bytes:
    # allow_nan=False: NaN/Infinity are not JSON; a non-finite number must never reach the wire
    # (it raises here, and the worker turns the input into an error event instead).
    return json.dumps(payload, separators=(",", ":"), sort_keys=False, allow_nan=False).encode("utf-8")


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):  # e.g. 1e999: valid JSON text, not a finite number
        raise ValueError(f"{text[:20]} does not fit a finite float")
    return value


def decode(raw: bytes | str):
    """Parse a payload strictly: Python's json accepts NaN, Infinity and 1e999 (-> inf), which
    are not JSON numbers and which JSON Schema cannot see once parsed; they raise ValueError."""
    return json.loads(raw, parse_constant=_refuse_constant, parse_float=_finite_float)


def _round(value: float, digits: int = 6) -> float:
    return round(float(value), digits)


def result_payload(*, site: str, device: str, source: str, input_ref: str, model: dict,
                   classification=None, not_applicable_reason: str | None = None,
                   timing_ms: dict, frame: dict | None = None, modality: str | None = None,
                   body_part: str | None = None, is_dicom: bool = False, warnings: list[str] | None = None,
                   ood: dict | None = None) -> dict:
    """A medge.result/1 payload: a classification, or status not_applicable with a reason.
    `warnings`: why a classified input is still doubtful (a 1x1 or flat image). `ood`: the OOD
    guard's {score, threshold} (edge/ood.py); a classification carries its own."""
    payload = {
        "schema": RESULT_SCHEMA,
        "id": new_id(),
        "ts": utc_now(),
        "site": site,
        "device": device,
        "source": source,
        "input_ref": input_ref,
        "model": model,
    }
    if classification is None:
        payload["status"] = "not_applicable"
        payload["reason"] = not_applicable_reason or "outside the model's declared applicability"
    else:
        payload["status"] = "classified"
        payload["class"] = str(classification.label)
        payload["score"] = _round(classification.score)
        payload["threshold"] = _round(classification.threshold)
        payload["positive"] = bool(classification.positive)
        if getattr(classification, "decision", None) is not None:
            payload["decision"] = str(classification.decision)
        payload["probabilities"] = {str(name): _round(min(max(p, 0.0), 1.0))
                                    for name, p in classification.probabilities.items()}
    verdict = getattr(classification, "ood", None)
    ood = ood if ood is not None else (verdict.to_dict() if verdict is not None else None)
    if ood is not None:
        payload["ood"] = dict(ood)
    payload["timing_ms"] = {key: round(float(value), 3) for key, value in timing_ms.items()}
    if frame is not None:
        payload["frame"] = frame
    if is_dicom:
        payload["dicom"] = {"modality": modality, "body_part": body_part}
    if warnings:
        payload["warnings"] = [str(warning) for warning in warnings]
    payload["disclaimer"] = DISCLAIMER
    return payload


def status_payload(*, state: str, site: str, device: str, model: dict | None = None,
                   sources: list[str] | None = None, reason: str | None = None,
                   signed_by: str | None = None) -> dict:
    payload = {"schema": STATUS_SCHEMA, "state": state, "ts": utc_now(), "site": site, "device": device,
               "medge_version": __version__}
    if reason:
        payload["reason"] = reason
    if signed_by:
        payload["signed_by"] = signed_by
    if model is not None:
        payload["model"] = model
    if sources is not None:
        payload["sources"] = list(sources)
    return payload


def last_will_payload(status: dict) -> dict:
    """The `offline` status registered as the MQTT last will. The broker sends it at an unknown
    later time, so it carries no `ts` (which would be the connect time, older than the `online`
    that follows it); `will_set_at` says when the device registered it. Order status messages
    by arrival, never by time stamps: the will is sent after everything the connection sent."""
    will = {key: value for key, value in status.items() if key != "ts"}
    will.update(last_will=True, will_set_at=utc_now())
    return will


def heartbeat_payload(*, site: str, device: str, uptime_s: float, counters: dict, latency_ms: dict,
                      sources: dict | None = None, model: dict | None = None,
                      rss_mb: float | None = None, health: dict | None = None, drift: dict | None = None,
                      fleet: dict | None = None) -> dict:
    payload = {"schema": HEARTBEAT_SCHEMA, "ts": utc_now(), "site": site, "device": device,
               "uptime_s": round(max(uptime_s, 0.0), 3),
               "counters": {key: int(value) for key, value in counters.items()},
               "latency_ms": latency_ms}
    if sources is not None:
        payload["sources"] = sources
    if model is not None:
        payload["model"] = model
    if rss_mb is not None:
        payload["rss_mb"] = round(rss_mb, 1)
    if health is not None:
        payload["health"] = health
    if drift is not None:  # edge/drift.py: counts and PSI over the recent window, never pixels
        payload["drift"] = drift
    if fleet is not None:  # edge/fleet: the model rollout state (the retained `fleet` message has it all)
        payload["fleet"] = fleet
    return payload


def error_payload(*, site: str, device: str, kind: str, message: str, level: str = "error",
                  source: str | None = None, input_ref: str | None = None) -> dict:
    payload = {"schema": ERROR_SCHEMA, "id": new_id(), "ts": utc_now(), "site": site, "device": device,
               "level": level, "kind": kind, "message": message}
    if source:
        payload["source"] = source
    if input_ref:
        payload["input_ref"] = input_ref
    return payload
