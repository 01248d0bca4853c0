"""Operating-threshold policies, chosen on validation data and then frozen for test and device.

- `youden`: maximise sensitivity + specificity - 1 (balanced errors).
- `sensitivity:0.95`: the highest threshold whose validation sensitivity is at least 0.95
  (screening: miss few positives, accept more false alarms).
- `fixed:0.5`: a given threshold.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medge.edge.errors import ConfigError


@dataclass(frozen=True)
class ThresholdPolicy:
    kind: str  # youden | sensitivity | specificity | fixed
    value: float | None = None

    def __str__(self):
        return self.kind if self.value is None else f"{self.kind}:{self.value:g}"


def parse_policy(text: str) -> ThresholdPolicy:
    name, _, value = str(text).strip().lower().partition(":")
    if name == "youden" and not value:
        return ThresholdPolicy("youden")
    if name in ("sensitivity", "specificity", "fixed") and value:
        try:
            number = float(value)
        except ValueError:
            number = None
        if number is not None and 0.0 <= number <= 1.0:
            return ThresholdPolicy(name, number)
    raise ConfigError(
        f"threshold_policy: {text!r} is not one of youden, sensitivity:<0..1>, specificity:<0..1>, fixed:<0..1>")


def choose_threshold(policy: ThresholdPolicy | str, y_true: np.ndarray, scores: np.ndarray) -> float:
    """Binary labels (0/1) and P(positive) on validation -> the operating threshold."""
    if isinstance(policy, str):
        policy = parse_policy(policy)
    if policy.kind == "fixed":
        return float(policy.value)
    y_true = np.asarray(y_true).astype(int)
    scores = np.asarray(scores, dtype=np.float64)
    positives, negatives = int(y_true.sum()), int((1 - y_true).sum())
    if positives == 0 or negatives == 0:
        return 0.5  # one class only: no curve to choose on
    # Candidate thresholds: every distinct score (predict positive when score >= t).
    candidates = np.unique(scores)[::-1]
    sensitivity = np.array([(scores[y_true == 1] >= t).mean() for t in candidates])
    specificity = np.array([(scores[y_true == 0] < t).mean() for t in candidates])
    if policy.kind == "youden":
        best = int(np.argmax(sensitivity + specificity - 1.0))
        # Midpoint to the next lower score keeps the same validation result but is less
        # brittle than sitting exactly on one sample's score.
        return float(_midpoint(candidates, best))
    if policy.kind == "sensitivity":
        ok = np.flatnonzero(sensitivity >= policy.value)
        return float(_midpoint(candidates, int(ok[0]))) if len(ok) else float(candidates[-1])
    ok = np.flatnonzero(specificity >= policy.value)  # specificity: lowest threshold reaching it
    return float(_midpoint(candidates, int(ok[-1]))) if len(ok) else float(candidates[0])


def _midpoint(candidates: np.ndarray, index: int) -> float:
    if index + 1 < len(candidates):
        return (candidates[index] + candidates[index + 1]) / 2.0
    return candidates[index]
