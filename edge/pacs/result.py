"""What the writers need to know about one result, read from the result payload the daemon
stored (one home for the result contract: edge/payloads.py)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Finding:
    status: str  # "classified" | "not_applicable"
    finding: str  # the condition the model looks for (the bundle's positive class), e.g. "pneumonia"
    label: str | None = None  # the predicted class
    score: float | None = None  # calibrated score of the positive class
    threshold: float | None = None
    positive: bool | None = None
    reason: str | None = None  # why not applicable
    frame_index: int | None = None  # 0-based, for multi-frame sources

    @property
    def decision(self) -> str:
        """"positive", "negative" or "not_applicable"."""
        if self.status != "classified":
            return "not_applicable"
        return "positive" if self.positive else "negative"

    def summary(self) -> str:
        """One line for the burned-in text and the SR comment."""
        if self.decision == "not_applicable":
            return f"{self.finding}: not applicable ({self.reason or 'outside the model scope'})"
        if self.threshold is None:
            return f"{self.finding}: {self.decision.upper()} ({self.label}, score {self.score:.3f})"
        relation = ">=" if self.positive else "<"
        return (f"{self.finding}: {self.decision.upper()} (score {self.score:.3f} {relation} "
                f"threshold {self.threshold:.3f})")

    @classmethod
    def from_payload(cls, payload: dict, finding: str) -> Finding:
        frame = payload.get("frame") or {}
        if payload.get("status") == "classified":
            return cls(status="classified", finding=finding, label=payload["class"], score=float(payload["score"]),
                       threshold=None if payload.get("threshold") is None else float(payload["threshold"]), positive=bool(payload["positive"]),
                       frame_index=frame.get("index"))
        return cls(status="not_applicable", finding=finding, reason=payload.get("reason"),
                   frame_index=frame.get("index"))


@dataclass(frozen=True)
class ModelIdentity:
    name: str
    version: str
    sha256: str
    format: str = ""

    @classmethod
    def from_payload(cls, model: dict) -> ModelIdentity:
        return cls(name=str(model["name"]), version=str(model["version"]), sha256=str(model["sha256"]),
                   format=str(model.get("format", "")))
