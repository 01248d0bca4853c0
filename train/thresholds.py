"""Operating-threshold policies, chosen on (calibrated) validation scores and then frozen for test and device.

- `youden-bootstrap` (the default): the median of the Youden thresholds of `bootstrap` class-
  stratified resamples of the validation set. Plain Youden on a nearly separable validation set
  jumps between whichever gap its few borderline cases leave (0.05 to 0.69 from run to run on
  PneumoniaMNIST); the median over resamples sits where most resamples put it.
- `youden`: maximise sensitivity + specificity - 1 (balanced errors) on the whole validation set.
- `sensitivity:0.95`: the highest threshold whose validation sensitivity is at least 0.95
  (screening: miss few positives, accept more false alarms).
- `fixed:0.5`: a given threshold.

Every policy also reports `threshold_ci95`: the 2.5 and 97.5 percentiles of the threshold the
same rule picks on the bootstrap resamples of validation (how far it would move on another
validation set of that size).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medge.edge.errors import ConfigError


@dataclass(frozen=True)
class ThresholdPolicy:
    kind: str  # youden-bootstrap | youden | sensitivity | specificity | fixed
    value: float | None = None

    def __str__(self):
        return self.kind if self.value is None else f"{self.kind}:{self.value:g}"


def parse_policy(text: str) -> ThresholdPolicy:
    name, _, value = str(text).strip().lower().partition(":")
    if name in ("youden", "youden-bootstrap") and not value:
        return ThresholdPolicy(name)
    if name in ("sensitivity", "specificity", "fixed") and value:
        try:
            number = float(value)
        except ValueError:
            number = None
        if number is not None and 0.0 <= number <= 1.0:
            return ThresholdPolicy(name, number)
    raise ConfigError(
        f"threshold_policy: {text!r} is not one of youden-bootstrap, youden, sensitivity:<0..1>, "
        "specificity:<0..1>, fixed:<0..1>")


def choose_threshold(policy: ThresholdPolicy | str, y_true: np.ndarray, scores: np.ndarray,
                     bootstrap: int = 1000, seed: int = 0) -> float:
    """Binary labels (0/1) and P(positive) on validation -> the operating threshold."""
    policy = parse_policy(policy) if isinstance(policy, str) else policy
    if policy.kind != "youden-bootstrap":
        return _choose(policy, np.asarray(y_true).astype(int), np.asarray(scores, dtype=np.float64))
    return threshold_with_interval(policy, y_true, scores, bootstrap, seed)[0]


def threshold_with_interval(policy: ThresholdPolicy | str, y_true, scores, bootstrap: int = 1000,
                            seed: int = 0) -> tuple[float, list[float] | None, list[float]]:
    """(threshold, bootstrap 95% interval of the rule's threshold, the resampled thresholds)."""
    if isinstance(policy, str):
        policy = parse_policy(policy)
    y_true = np.asarray(y_true).astype(int)
    scores = np.asarray(scores, dtype=np.float64)
    rule = ThresholdPolicy("youden") if policy.kind == "youden-bootstrap" else policy
    if rule.kind == "fixed":
        return float(rule.value), None, []
    resampled = [_choose(rule, y_true[index], scores[index]) for index in _resamples(y_true, bootstrap, seed)]
    interval = ([float(np.percentile(resampled, 2.5)), float(np.percentile(resampled, 97.5))]
                if len(resampled) >= 10 else None)
    if policy.kind == "youden-bootstrap" and resampled:
        return float(np.median(resampled)), interval, resampled
    return _choose(rule, y_true, scores), interval, resampled


def _resamples(y_true: np.ndarray, count: int, seed: int):
    """Class-stratified bootstrap index arrays (every resample keeps both classes' counts)."""
    groups = [np.flatnonzero(y_true == label) for label in (0, 1)]
    if count <= 0 or any(len(g) == 0 for g in groups):
        return
    rng = np.random.default_rng(seed)
    for _ in range(count):
        yield np.concatenate([rng.choice(g, size=len(g), replace=True) for g in groups])


def _choose(policy: ThresholdPolicy, y_true: np.ndarray, scores: np.ndarray) -> float:
    if policy.kind == "fixed":
        return float(policy.value)
    positives, negatives = int(y_true.sum()), int((1 - y_true).sum())
    if positives == 0 or negatives == 0:
        return 0.5  # one class only: no curve to choose on
    candidates, sensitivity, specificity = _rates(y_true, scores)
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


def _rates(y_true: np.ndarray, scores: np.ndarray):
    """Every distinct score as a candidate threshold (positive when score >= t), highest first,
    with the sensitivity and specificity it gives: one sort and two cumulative sums."""
    order = np.argsort(-scores, kind="mergesort")
    ordered, labels = scores[order], y_true[order]
    true_positives, false_positives = np.cumsum(labels == 1), np.cumsum(labels == 0)
    last = np.flatnonzero(np.r_[ordered[1:] != ordered[:-1], True])  # last case of each tied score
    positives, negatives = true_positives[-1], false_positives[-1]
    return ordered[last], true_positives[last] / positives, (negatives - false_positives[last]) / negatives


def _midpoint(candidates: np.ndarray, index: int) -> float:
    if index + 1 < len(candidates):
        return (candidates[index] + candidates[index + 1]) / 2.0
    return candidates[index]
