"""The refer band: one image's calibrated probabilities -> "positive", "negative", "refer" (binary)
or a class name or "refer" (multi-class), by the rule the bundle's `decision` section stores.

The rule is chosen on validation by the training run (train/refer.py) so that the images it
does decide meet a stated accuracy; the rest are `refer`: a clinician should look, the model
is not sure enough. The device only applies it. A bundle without a `decision` section (made
before the refer band existed) never refers: binary by the threshold, multi-class by argmax.

Rules (`method`):
- "band" (binary): score = P(positive class); negative below `low`, positive at or above `high`,
  refer in between. low <= threshold <= high, so a decided image agrees with `positive`.
- "top_probability" (multi-class): refer when the top probability is below `level` (this is
  also the non-randomised APS rule: the APS set is one class exactly when p_top >= level).
- "lac" (multi-class): the LAC conformal prediction set {k : p_k >= level}; refer unless it
  holds exactly one class.
- "margin" (multi-class): refer when p_top - p_second is below `level`.
"""
from __future__ import annotations

import numpy as np

REFER = "refer"
POSITIVE = "positive"
NEGATIVE = "negative"
BINARY_METHODS = ("band",)
MULTICLASS_METHODS = ("top_probability", "lac", "margin")


def binary_decision(score: float, threshold: float, rule: dict | None) -> str:
    """"positive" / "negative" / "refer" for P(positive class) = `score`."""
    if rule is None or rule.get("method") != "band":
        return POSITIVE if score >= threshold else NEGATIVE
    if score >= float(rule["high"]):
        return POSITIVE
    if score < float(rule["low"]):
        return NEGATIVE
    return REFER


def multiclass_decision(probabilities: np.ndarray, classes: list[str], rule: dict | None) -> str:
    """The class name, or "refer", for one image's probabilities (K,) in class order."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    order = np.argsort(-probabilities, kind="stable")
    top = classes[int(order[0])]
    if rule is None:
        return top
    first = float(probabilities[order[0]])
    second = float(probabilities[order[1]]) if len(order) > 1 else 0.0
    return top if decided(rule, first, second) else REFER


def decided(rule: dict, first: float, second: float) -> bool:
    """Whether a multi-class rule decides an image whose two largest probabilities are given."""
    method, level = rule.get("method"), float(rule.get("level", 0.0))
    if method == "top_probability":
        return first >= level
    if method == "lac":
        return first >= level > second
    if method == "margin":
        return first - second >= level
    return True  # an unknown method (a newer bundle): decide by argmax rather than refuse


def decision_for(probabilities, classes: list[str], task: str, threshold: float | None,
                 positive_class: str | None, rule: dict | None) -> str:
    """The decision for one image, as `Classifier.classify` records it."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if task == "binary":
        return binary_decision(float(probabilities[classes.index(positive_class)]), float(threshold), rule)
    return multiclass_decision(probabilities, classes, rule)


def describe(rule: dict | None, task: str) -> str:
    """One line for `medge predict`/logs: what makes an image `refer` under this bundle."""
    if rule is None:
        return "no refer band (bundle made before it existed): every image is decided"
    method = rule.get("method")
    if method == "band":
        return f"refer when {rule['low']:.3f} <= score < {rule['high']:.3f}"
    return {"top_probability": f"refer when the top probability < {rule.get('level', 0):.3f}",
            "lac": f"refer unless exactly one class has probability >= {rule.get('level', 0):.3f}",
            "margin": f"refer when top - second probability < {rule.get('level', 0):.3f}"}.get(
        method, f"unknown refer rule {method!r}: decided by argmax")
