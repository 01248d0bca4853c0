"""The accuracy gate: each converted file, run by the device's runtime, against the float model.

No quantized model ships unless, on the same images, it keeps the float model's AUC,
sensitivity, specificity and decisions within the limits a careful user would accept.

The rule, per tested metric (AUC drop, sensitivity drop, specificity drop, disagreement):
  fail  if  change > cap
        or  change > tolerance  and  the paired test is significant (p < significance).
"Significant" means the float and converted model differ systematically on these images, not
by which few images happened to sit at the threshold: exact McNemar on the flipped decisions
(sensitivity, specificity), a paired bootstrap of the AUC difference, and for agreement an
exact binomial test that the disagreement rate is above the tolerated one (every disagreement
is a real difference, so "no difference" is no useful null there). The tolerance is the
"clinically negligible" line, the cap the line no sample size excuses. Why not fail only when
the interval's lower bound clears the tolerance: on a few hundred images that bound reaches
the tolerance only for changes far beyond it, so the tolerance would mean nothing and the cap
would decide alone. See docs/convert.md.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from medge.edge.classify import decide
from medge.edge.errors import MedgeError

from .paired_stats import binomial_upper_tail, bootstrap_p_value, interval, mcnemar_exact, stratified_resamples


@dataclass(frozen=True)
class GateLimits:
    """Tolerances, absolute caps and the significance level of the accuracy gate.

    A change beyond its tolerance fails only when the paired test says it is real (p below
    `significance`); a change beyond its cap fails whatever the test says. A cap looser than
    its tolerance is tightened to it (see `cap`), so loosening a tolerance loosens the cap too.
    """

    max_auc_drop: float = 0.005
    max_sensitivity_drop: float = 0.01
    min_agreement: float = 0.98
    max_specificity_drop: float = 0.02
    cap_auc_drop: float = 0.02
    cap_sensitivity_drop: float = 0.03
    cap_specificity_drop: float = 0.05
    cap_agreement: float = 0.95  # a floor: agreement under it always fails
    # Calibration (convert/calibration_gate.py): int8 ECE minus float ECE, both calibrated.
    max_ece_increase: float = 0.01
    cap_ece_increase: float = 0.03
    significance: float = 0.05
    bootstrap: int = 1000  # paired resamples for the AUC interval (0 = no test: tolerances are strict)

    def to_dict(self) -> dict:
        return asdict(self)

    def cap(self, metric: str) -> float:
        """The effective absolute limit of one tested metric, as a largest allowed drop / share."""
        if metric == "disagreement":
            return 1.0 - min(self.cap_agreement, self.min_agreement)
        return max(getattr(self, f"cap_{metric}"), self.tolerance(metric))

    def tolerance(self, metric: str) -> float:
        if metric == "disagreement":
            return 1.0 - self.min_agreement
        return getattr(self, f"max_{metric}")


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
            threshold: float | None, positive_class: str | None, bootstrap: int = 1000, seed: int = 0) -> dict:
    """The gate's figures for one artifact against the float reference, on the same images."""
    ref = classification_metrics(reference, y, classes, threshold)
    got = classification_metrics(candidate, y, classes, threshold)
    ref_labels = decisions(reference, classes, task, threshold, positive_class).labels
    got_labels = decisions(candidate, classes, task, threshold, positive_class).labels
    difference = np.abs(candidate.astype(np.float64) - reference.astype(np.float64))
    metrics = {
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
    metrics["tests"] = paired_tests(reference, candidate, np.asarray(y).astype(np.int64), ref_labels, got_labels,
                                    metrics, len(classes), bootstrap, seed)
    return metrics


TESTED = ("auc_drop", "sensitivity_drop", "specificity_drop", "disagreement")
LABELS = {"auc_drop": "AUC drop", "sensitivity_drop": "sensitivity drop", "specificity_drop": "specificity drop",
          "disagreement": "disagreement"}


def paired_tests(reference, candidate, y, ref_labels, got_labels, metrics: dict, n_classes: int, bootstrap: int,
                 seed: int) -> dict:
    """Per tested metric: the observed change (a drop or a share: positive = worse), its paired
    bootstrap 95% interval, and the counts and p-value of its exact test where one applies."""
    binary = n_classes == 2
    if binary:
        # Sensitivity: flips among the positive images; specificity: among the negative ones.
        positives, negatives = y == 1, y == 0
        sensitivity_flips = _flips(ref_labels[positives] == 1, got_labels[positives] == 1)
        specificity_flips = _flips(ref_labels[negatives] == 0, got_labels[negatives] == 0)
        rate_test = "exact McNemar on the flipped decisions of this class"
    else:
        # Macro averages have no single table of pairs: test the images whose correctness flipped.
        sensitivity_flips = specificity_flips = _flips(ref_labels == y, got_labels == y)
        rate_test = "exact McNemar on the images whose correctness flipped"
    tests = {
        "auc_drop": {"change": -metrics["auc_delta"], "test": "paired stratified bootstrap"},
        "sensitivity_drop": {"change": -metrics["sensitivity_delta"], "test": rate_test, **sensitivity_flips,
                             "p_value": mcnemar_exact(sensitivity_flips["lost"], sensitivity_flips["gained"])},
        "specificity_drop": {"change": -metrics["specificity_delta"], "test": rate_test, **specificity_flips,
                             "p_value": mcnemar_exact(specificity_flips["lost"], specificity_flips["gained"])},
        "disagreement": {"change": 1.0 - metrics["agreement"], "count": metrics["disagreements"], "n": int(len(y)),
                         "test": "exact binomial: disagreement rate above the tolerated rate"},
    }
    samples = {name: [] for name in TESTED}
    if bootstrap > 0 and np.all(np.isfinite(candidate)):
        for index in stratified_resamples(y, bootstrap, seed):
            yy, ref_pred, got_pred = y[index], ref_labels[index], got_labels[index]
            ref_auc, got_auc = _auc(yy, reference[index], n_classes), _auc(yy, candidate[index], n_classes)
            samples["auc_drop"].append(None if ref_auc is None or got_auc is None else ref_auc - got_auc)
            (ref_sens, ref_spec), (got_sens, got_spec) = _rates(yy, ref_pred, n_classes), _rates(yy, got_pred, n_classes)
            samples["sensitivity_drop"].append(ref_sens - got_sens)
            samples["specificity_drop"].append(ref_spec - got_spec)
            samples["disagreement"].append(float((ref_pred != got_pred).mean()))
    for name in TESTED:
        tests[name]["ci95"] = interval(samples[name])
    tests["auc_drop"]["p_value"] = bootstrap_p_value(samples["auc_drop"])
    tests["bootstrap"] = int(bootstrap)
    return tests


def _flips(ref_ok: np.ndarray, got_ok: np.ndarray) -> dict:
    return {"lost": int((ref_ok & ~got_ok).sum()), "gained": int((~ref_ok & got_ok).sum()), "n": int(len(ref_ok))}


def _auc(y: np.ndarray, probabilities: np.ndarray, n_classes: int) -> float | None:
    """Training's AUC (binary: P(classes[1]); multi-class: macro one-vs-rest)."""
    from medge.train.evaluate import roc_auc

    if n_classes == 2:
        return roc_auc(y == 1, probabilities[:, -1])
    aucs = [roc_auc(y == k, probabilities[:, k]) for k in range(n_classes)]
    return None if any(a is None for a in aucs) else float(np.mean(aucs))


def _rates(y: np.ndarray, predicted: np.ndarray, n_classes: int) -> tuple[float, float]:
    """(sensitivity, specificity) by training's definitions: binary for classes[1], else macro."""
    if n_classes == 2:
        return float((predicted[y == 1] == 1).mean()), float((predicted[y == 0] == 0).mean())
    recalls, specificities = [], []
    for k in range(n_classes):
        actual, called = y == k, predicted == k
        if actual.any():
            recalls.append((called[actual]).mean())
        if (~actual).any():
            specificities.append((~called[~actual]).mean())
    return float(np.mean(recalls)), float(np.mean(specificities))


def judge(metrics: dict, limits: GateLimits) -> dict:
    """Each tested metric's verdict: "pass" (within tolerance), "noise" (beyond tolerance, but the
    paired test cannot tell it from chance, and within the cap) or "fail", with the reason."""
    judged = {}
    for name in TESTED:
        test = dict(metrics["tests"][name])
        change, tolerance, cap = test["change"], limits.tolerance(name), limits.cap(name)
        if name == "disagreement":
            test["p_value"] = binomial_upper_tail(test["count"], test["n"], tolerance)
        p_value = test.get("p_value")
        # No test result (no resamples, undefined AUC): the tolerance is strict.
        significant = p_value is None or p_value < limits.significance
        test.update(tolerance=tolerance, cap=cap, significant=bool(significant))
        if change is None or np.isnan(change) or change <= tolerance:
            test["verdict"], test["failure"] = "pass", None
        elif change > cap or significant:
            test["verdict"], test["failure"] = "fail", _failure(name, change, test, metrics, limits, change > cap)
        else:
            test["verdict"], test["failure"] = "noise", None
        judged[name] = test
    judged["bootstrap"] = metrics["tests"]["bootstrap"]
    return judged


def _failure(name: str, change: float, test: dict, metrics: dict, limits: GateLimits, over_cap: bool) -> str:
    evidence = _evidence(test)
    if name == "disagreement":
        text = (f"decision agreement {metrics['agreement']:.4f} ({metrics['disagreements']} images changed class) "
                f"is under --min-agreement {limits.min_agreement} by {limits.min_agreement - metrics['agreement']:.4f}")
        cap_text = f"under the floor --cap-agreement {min(limits.cap_agreement, limits.min_agreement)}"
    else:
        metric = name.removesuffix("_drop")
        before = metrics[metric] - metrics[f"{metric}_delta"]
        shown = "AUC" if metric == "auc" else metric
        text = (f"{shown} dropped by {change:.4f} ({before:.4f} -> {metrics[metric]:.4f}), over "
                f"--max-{metric.replace('_', '-')}-drop {test['tolerance']} by {change - test['tolerance']:.4f}")
        cap_text = f"over the absolute cap --cap-{metric}-drop {test['cap']}"
    if over_cap:
        return f"{text} and {cap_text}" + (f" ({evidence})" if evidence else "")
    return f"{text}; not chance ({evidence})" if evidence else text


def _evidence(test: dict) -> str:
    parts = []
    if "lost" in test:
        parts.append(f"{test['lost']} lost / {test['gained']} gained of {test['n']}")
    if test.get("p_value") is not None:
        parts.append(f"p={test['p_value']:.2g}")
    if test.get("ci95"):
        parts.append(f"95% CI {test['ci95'][0]:+.4f}..{test['ci95'][1]:+.4f}")
    return ", ".join(parts)


def check(metrics: dict, limits: GateLimits) -> list[str]:
    """Every limit the metrics break, each as one line saying which metric and by how much."""
    failures = []
    # NaN scores sort and threshold as if they were numbers, so AUC and agreement alone can miss them.
    if not np.isfinite(metrics["max_abs_score_diff"]):
        failures.append("the model outputs non-finite scores (NaN or infinity) on some images")
    judged = judge(metrics, limits)
    failures += [judged[name]["failure"] for name in TESTED if judged[name]["failure"]]
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
