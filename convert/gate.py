"""The accuracy gate: each converted file, run by the device's runtime, against the float model.

No quantized model ships unless, on the same images, it keeps the float model's AUC,
sensitivity and decisions within the limits a careful user would accept.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from medge.edge.classify import decide
from medge.edge.errors import MedgeError


@dataclass(frozen=True)
class GateLimits:
    max_auc_drop: float = 0.005
    max_sensitivity_drop: float = 0.01
    min_agreement: float = 0.98

    def to_dict(self) -> dict:
        return asdict(self)


class GateFailed(MedgeError):
    """At least one artifact broke a limit; the message says which metric and by how much."""

    def __init__(self, message: str, result=None):
        super().__init__(message)
        self.result = result  # the ConversionResult, for the report table


@dataclass(frozen=True)
class Decisions:
    """How a set of images is classified, by the bundle's own rule (medge.edge.classify.decide)."""

    labels: np.ndarray  # int class index per image
    positive: np.ndarray  # bool per image
    scores: np.ndarray  # float per image: binary P(positive); multi-class P(predicted class)


def decisions(probabilities: np.ndarray, classes: list[str], task: str, threshold: float | None,
              positive_class: str | None) -> Decisions:
    labels, positive, scores = [], [], []
    for row in probabilities:
        label, score, is_positive = decide(row, classes, task, threshold, positive_class)
        labels.append(classes.index(label))
        positive.append(is_positive)
        scores.append(score)
    return Decisions(np.asarray(labels), np.asarray(positive, dtype=bool), np.asarray(scores, dtype=np.float64))


def classification_metrics(probabilities: np.ndarray, y: np.ndarray, classes: list[str],
                           threshold: float | None) -> dict:
    """AUC, accuracy, sensitivity, specificity at the run's threshold: training's own definitions
    (medge.train.evaluate), so the gate's reference figures match the run's report."""
    from medge.train.evaluate import evaluate_probabilities

    metrics = evaluate_probabilities(y, probabilities, classes, threshold if threshold is not None else 0.5,
                                     bootstrap=0)
    return {key: _number(metrics[key]) for key in ("auc", "accuracy", "sensitivity", "specificity")}


def _number(value) -> float:
    return float("nan") if value is None else float(value)


def compare(reference: np.ndarray, candidate: np.ndarray, y: np.ndarray, classes: list[str], task: str,
            threshold: float | None, positive_class: str | None) -> dict:
    """The gate's figures for one artifact against the float reference, on the same images."""
    ref = classification_metrics(reference, y, classes, threshold)
    got = classification_metrics(candidate, y, classes, threshold)
    ref_labels = decisions(reference, classes, task, threshold, positive_class).labels
    got_labels = decisions(candidate, classes, task, threshold, positive_class).labels
    difference = np.abs(candidate.astype(np.float64) - reference.astype(np.float64))
    return {
        **got,
        "auc_delta": got["auc"] - ref["auc"],
        "accuracy_delta": got["accuracy"] - ref["accuracy"],
        "sensitivity_delta": got["sensitivity"] - ref["sensitivity"],
        "specificity_delta": got["specificity"] - ref["specificity"],
        "agreement": float((ref_labels == got_labels).mean()),
        "disagreements": int((ref_labels != got_labels).sum()),
        "max_abs_score_diff": float(difference.max()),
        "mean_abs_score_diff": float(difference.mean()),
    }


def check(metrics: dict, limits: GateLimits) -> list[str]:
    """Every limit the metrics break, each as one line saying which metric and by how much."""
    failures = []
    # NaN scores sort and threshold as if they were numbers, so AUC and agreement alone can miss them.
    if not np.isfinite(metrics["max_abs_score_diff"]):
        failures.append("the model outputs non-finite scores (NaN or infinity) on some images")
    auc_drop = -metrics["auc_delta"]
    if not np.isnan(auc_drop) and auc_drop > limits.max_auc_drop:
        failures.append(f"AUC dropped by {auc_drop:.4f} ({metrics['auc'] - metrics['auc_delta']:.4f} -> "
                        f"{metrics['auc']:.4f}), over --max-auc-drop {limits.max_auc_drop} by {auc_drop - limits.max_auc_drop:.4f}")
    sensitivity_drop = -metrics["sensitivity_delta"]
    if not np.isnan(sensitivity_drop) and sensitivity_drop > limits.max_sensitivity_drop:
        failures.append(f"sensitivity dropped by {sensitivity_drop:.4f}, over --max-sensitivity-drop "
                        f"{limits.max_sensitivity_drop} by {sensitivity_drop - limits.max_sensitivity_drop:.4f}")
    if metrics["agreement"] < limits.min_agreement:
        failures.append(f"decision agreement {metrics['agreement']:.4f} ({metrics['disagreements']} images changed class) "
                        f"is under --min-agreement {limits.min_agreement} by {limits.min_agreement - metrics['agreement']:.4f}")
    return failures


def median_latency_ms(predict, sample: np.ndarray, runs: int = 50, warmup: int = 5) -> float:
    """Median wall time of one single-image call, after warm-up (first calls allocate and plan)."""
    import time

    batch = sample[None] if sample.ndim == 3 else sample[:1]
    for _ in range(warmup):
        predict(batch)
    timings = []
    for _ in range(max(1, runs)):
        started = time.perf_counter()
        predict(batch)
        timings.append((time.perf_counter() - started) * 1000.0)
    return float(np.median(timings))
