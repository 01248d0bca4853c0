"""Clinical evaluation: AUC with a bootstrap 95% interval, sensitivity, specificity, PPV, NPV, F1
with Wilson 95% intervals, confusion matrix, calibration (ECE, 15 bins; Brier score); multi-class:
per-class one-vs-rest AUC and sensitivity, macro AUC, balanced accuracy, confusion matrix;
ordinal (graded) classes: quadratic-weighted kappa and mean absolute grade error.

Pure numpy so the same numbers can be computed anywhere (the converter's accuracy gate too).
"""
from __future__ import annotations

from statistics import NormalDist

import numpy as np

# Fewer cases than this in a class and a bootstrap AUC interval is mostly resampling noise:
# it is not reported, and `auc_ci_note` says why.
MIN_CASES_FOR_AUC_CI = 10


def roc_auc(y_true: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney U with tied ranks averaged); None if one class only."""
    y_true = np.asarray(y_true).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    positives, negatives = int(y_true.sum()), int((~y_true).sum())
    if positives == 0 or negatives == 0:
        return None
    ranks = average_ranks(scores)
    return float((ranks[y_true].sum() - positives * (positives + 1) / 2.0) / (positives * negatives))


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing their average rank (scipy's rankdata, without scipy)."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    _, first, counts = np.unique(values[order], return_index=True, return_counts=True)
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)
    return ranks


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho: the Pearson correlation of the average ranks."""
    return float(np.corrcoef(average_ranks(a), average_ranks(b))[0, 1])


def roc_curve(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) at every distinct threshold, from (0,0) to (1,1)."""
    y_true = np.asarray(y_true).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    thresholds = np.unique(scores)[::-1]
    positives, negatives = max(int(y_true.sum()), 1), max(int((~y_true).sum()), 1)
    tpr = [0.0] + [float((scores[y_true] >= t).sum()) / positives for t in thresholds]
    fpr = [0.0] + [float((scores[~y_true] >= t).sum()) / negatives for t in thresholds]
    return np.asarray(fpr), np.asarray(tpr)


def bootstrap_auc_ci(y_true, scores, n: int = 1000, seed: int = 0, level: float = 0.95) -> list[float] | None:
    """Percentile bootstrap interval of the (binary or macro) AUC, resampling cases."""
    y_true, scores = np.asarray(y_true), np.asarray(scores)
    if n <= 0:
        return None
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n):
        index = rng.integers(0, len(y_true), len(y_true))
        value = _auc_any(y_true[index], scores[index])
        if value is not None:
            values.append(value)
    if len(values) < max(10, n // 10):
        return None
    tail = (1.0 - level) / 2.0 * 100.0
    return [float(np.percentile(values, tail)), float(np.percentile(values, 100.0 - tail))]


def wilson_interval(successes: int, n: int, level: float = 0.95) -> list[float] | None:
    """Wilson score interval of a rate: honest on small samples and at 0 or 1 (7 of 7 correct
    gives 0.65-1.00, not 1.00-1.00 as a normal or bootstrap interval would)."""
    if n <= 0:
        return None
    z = NormalDist().inv_cdf(0.5 + level / 2.0)
    p = successes / n
    denominator = 1.0 + z * z / n
    centre = (p + z * z / (2.0 * n)) / denominator
    half = z * np.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n)) / denominator
    return [float(max(0.0, centre - half)), float(min(1.0, centre + half))]


def auc_interval(y_true, scores, n: int = 1000, seed: int = 0) -> tuple[list[float] | None, str | None]:
    """The bootstrap AUC interval, or None and a note saying why it would mislead."""
    y_true, scores = np.asarray(y_true), np.asarray(scores)
    if n <= 0:
        return None, None
    counts = (np.bincount(y_true.astype(np.int64), minlength=2 if scores.ndim == 1 else scores.shape[1])
              if len(y_true) else np.zeros(2, dtype=np.int64))
    if counts.min() < MIN_CASES_FOR_AUC_CI:
        return None, (f"no AUC interval: only {'/'.join(str(int(c)) for c in counts)} images per class "
                      f"(a bootstrap interval needs at least {MIN_CASES_FOR_AUC_CI} of each)")
    ci = bootstrap_auc_ci(y_true, scores, n=n, seed=seed)
    if ci is None:
        return None, "no AUC interval: too few resamples held every class"
    if ci[1] - ci[0] < 1e-9:
        return ci, (f"degenerate AUC interval: every resample gave {ci[0]:.3f}; "
                    f"{len(y_true)} images cannot show the uncertainty")
    return ci, None


def expected_calibration_error(y_true, probabilities, bins: int = 15) -> float | None:
    """ECE: the mean gap between confidence and accuracy over equal-width confidence bins,
    weighted by bin size (binary: P(positive) against the positive rate; multi-class: top-class
    confidence against accuracy). One definition, in medge.train.calibration."""
    from .calibration import expected_calibration_error as ece

    return ece(y_true, probabilities, bins)


def brier_score(y_true, probabilities) -> float | None:
    """Binary: mean (P(positive) - y)^2; multi-class: mean over cases of sum_k (p_k - [y = k])^2."""
    from .calibration import brier_score as brier

    return brier(y_true, probabilities)


def quadratic_weighted_kappa(y_true, y_pred, n_classes: int) -> float | None:
    """Cohen's kappa with quadratic weights (grades k and j disagree by ((k - j) / (K - 1))^2):
    1 = perfect, 0 = chance agreement. None when every case and prediction is one grade."""
    observed = np.asarray(confusion_matrix(y_true, y_pred, n_classes), dtype=np.float64)
    total = observed.sum()
    if total == 0:
        return None
    grades = np.arange(n_classes)
    weights = (grades[:, None] - grades[None, :]) ** 2 / float((n_classes - 1) ** 2)
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / total
    denominator = (weights * expected).sum()
    return float(1.0 - (weights * observed).sum() / denominator) if denominator > 0 else None


def ordinal_metrics(y_true, probabilities) -> dict:
    """Graded classes (class order = grade order): kappa and mean absolute grade error of the
    argmax decision, and the error of the expected grade sum_k k p_k."""
    y_true = np.asarray(y_true).astype(np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    n_classes = probabilities.shape[1]
    y_pred = probabilities.argmax(axis=1)
    expected_grade = probabilities @ np.arange(n_classes)
    return {
        "quadratic_weighted_kappa": quadratic_weighted_kappa(y_true, y_pred, n_classes),
        "mean_absolute_grade_error": float(np.mean(np.abs(y_pred - y_true))) if len(y_true) else None,
        "mean_absolute_expected_grade_error": float(np.mean(np.abs(expected_grade - y_true))) if len(y_true) else None,
    }


def _auc_any(y_true, probabilities) -> float | None:
    if probabilities.ndim == 1:
        return roc_auc(y_true, probabilities)
    aucs = [roc_auc(y_true == k, probabilities[:, k]) for k in range(probabilities.shape[1])]
    aucs = [a for a in aucs if a is not None]
    return float(np.mean(aucs)) if len(aucs) == probabilities.shape[1] else None


def confusion_matrix(y_true, y_pred, n_classes: int) -> list[list[int]]:
    """Rows = true class, columns = predicted class, in class order."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return matrix.tolist()


def _ratio(numerator, denominator) -> float | None:
    return float(numerator) / float(denominator) if denominator else None


def binary_metrics(y_true, p_positive, threshold: float, bootstrap: int = 1000, seed: int = 0) -> dict:
    """Clinical figures for P(classes[1]) at the frozen operating threshold."""
    y_true = np.asarray(y_true).astype(np.int64)
    p_positive = np.asarray(p_positive, dtype=np.float64).reshape(-1)
    y_pred = (p_positive >= threshold).astype(np.int64)
    tp = int(((y_pred == 1) & (y_true == 1)).sum())
    tn = int(((y_pred == 0) & (y_true == 0)).sum())
    fp = int(((y_pred == 1) & (y_true == 0)).sum())
    fn = int(((y_pred == 0) & (y_true == 1)).sum())
    sensitivity, precision = _ratio(tp, tp + fn), _ratio(tp, tp + fp)
    f1 = (2 * precision * sensitivity / (precision + sensitivity)
          if precision is not None and sensitivity is not None and precision + sensitivity > 0 else None)
    auc_ci, auc_note = auc_interval(y_true, p_positive, n=bootstrap, seed=seed)
    return {
        "n": int(len(y_true)),
        "auc": roc_auc(y_true, p_positive),
        "auc_ci95": auc_ci,
        "auc_ci_note": auc_note,
        "accuracy": _ratio(tp + tn, len(y_true)),
        "accuracy_ci95": wilson_interval(tp + tn, len(y_true)),
        "sensitivity": sensitivity,
        "sensitivity_ci95": wilson_interval(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "specificity_ci95": wilson_interval(tn, tn + fp),
        "precision": precision,  # = PPV
        "precision_ci95": wilson_interval(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "npv_ci95": wilson_interval(tn, tn + fn),
        "f1": f1,
        "balanced_accuracy": (sensitivity + _ratio(tn, tn + fp)) / 2.0
        if sensitivity is not None and tn + fp else None,
        "ece": expected_calibration_error(y_true, p_positive),
        "brier": brier_score(y_true, p_positive),
        "threshold": float(threshold),
        "tp": tp, "tn": tn, "fp": fp, "fn": fn,
        "confusion_matrix": confusion_matrix(y_true, y_pred, 2),
    }


def multiclass_metrics(y_true, probabilities, classes: list[str], bootstrap: int = 1000, seed: int = 0,
                       ordinal: bool = False) -> dict:
    """Argmax decisions; per-class one-vs-rest AUC, sensitivity, specificity; macro AUC with CI."""
    y_true = np.asarray(y_true).astype(np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    y_pred = probabilities.argmax(axis=1)
    per_class = {}
    for k, name in enumerate(classes):
        actual, predicted = y_true == k, y_pred == k
        tp, fp = int((actual & predicted).sum()), int((~actual & predicted).sum())
        fn, tn = int((actual & ~predicted).sum()), int((~actual & ~predicted).sum())
        sensitivity, precision = _ratio(tp, tp + fn), _ratio(tp, tp + fp)
        per_class[name] = {
            "auc": roc_auc(actual, probabilities[:, k]),
            "sensitivity": sensitivity,
            "specificity": _ratio(tn, tn + fp),
            "precision": precision,
            "f1": (2 * precision * sensitivity / (precision + sensitivity)
                   if precision and sensitivity else (0.0 if precision is not None and sensitivity is not None else None)),
            "support": int(actual.sum()),
        }
    aucs = [m["auc"] for m in per_class.values()]
    macro = float(np.mean(aucs)) if all(a is not None for a in aucs) else None
    defined = lambda key: [m[key] for m in per_class.values() if m[key] is not None]  # noqa: E731
    mean = lambda values: float(np.mean(values)) if values else None  # noqa: E731
    auc_ci, auc_note = auc_interval(y_true, probabilities, n=bootstrap, seed=seed)
    correct = int((y_pred == y_true).sum())
    result = {
        "n": int(len(y_true)),
        "auc": macro,  # macro one-vs-rest AUC
        "auc_ci95": auc_ci,
        "auc_ci_note": auc_note,
        "accuracy": _ratio(correct, len(y_true)),
        "accuracy_ci95": wilson_interval(correct, len(y_true)),
        "ece": expected_calibration_error(y_true, probabilities),
        "brier": brier_score(y_true, probabilities),
        # The mean per-class sensitivity (recall): accuracy that every class counts in equally.
        "balanced_accuracy": mean(defined("sensitivity")),
        "sensitivity_per_class": {name: m["sensitivity"] for name, m in per_class.items()},
        # Macro averages, so the same keys exist for binary and multi-class runs.
        "sensitivity": mean(defined("sensitivity")),
        "specificity": mean(defined("specificity")),
        "precision": mean(defined("precision")),
        "f1": mean(defined("f1")),
        "per_class": per_class,
        "confusion_matrix": confusion_matrix(y_true, y_pred, len(classes)),
    }
    if ordinal:
        result.update(ordinal_metrics(y_true, probabilities))
    return result


def evaluate_probabilities(y_true, probabilities, classes: list[str], threshold: float,
                           bootstrap: int = 1000, seed: int = 0, ordinal: bool = False) -> dict:
    """Model outputs (binary: (N,) or (N,1) P(classes[1]); multi-class: (N,K)) -> metrics dict."""
    probabilities = np.asarray(probabilities)
    if len(classes) == 2:
        return binary_metrics(y_true, probabilities.reshape(len(probabilities), -1)[:, -1], threshold, bootstrap, seed)
    return multiclass_metrics(y_true, probabilities, classes, bootstrap, seed, ordinal=ordinal)


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def with_interval(metrics: dict, key: str) -> str:
    """"0.912 (95% CI 0.880-0.936)": a figure with its interval, as the terminal and reports show it."""
    ci = metrics.get(f"{key}_ci95")
    return _fmt(metrics.get(key)) + (f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else "")


def summary_figures(metrics: dict) -> str:
    """One line of the headline figures with their intervals."""
    return ", ".join(f"{label} {with_interval(metrics, key)}" for label, key in
                     (("AUC", "auc"), ("accuracy", "accuracy"), ("sensitivity", "sensitivity"),
                      ("specificity", "specificity")))
