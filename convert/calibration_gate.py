"""The gate's calibration check: the converted model's ECE against the float model's, same images.

Both sets of scores are calibrated (the run's temperature applied), as the device shows them.
Rule, as for the other tested metrics of medge.convert.gate:
  fail  if  ECE increase > cap (0.03, absolute: no sample size excuses it)
        or  ECE increase > tolerance (0.01)  and  a paired bootstrap says it is not chance (p < 0.05).
ECE on a few hundred images moves by ~0.01 between resamples, so a fixed 0.01 alone would judge
noise; the paired, class-stratified bootstrap (both models scored on the same resampled images)
gives the interval and the p-value of the difference. See docs/convert.md.
"""
from __future__ import annotations

import numpy as np

from .paired_stats import bootstrap_p_value, interval, stratified_resamples

BINS = 15


def _ece(y: np.ndarray, probabilities: np.ndarray, bins: int = BINS) -> float:
    """medge.train.calibration's ECE, vectorised for the bootstrap (binary: P(positive))."""
    if probabilities.shape[1] == 2:
        confidence, outcome = probabilities[:, 1], (y == 1).astype(np.float64)
    else:
        confidence, outcome = probabilities.max(axis=1), (probabilities.argmax(axis=1) == y).astype(np.float64)
    which = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    gap = np.bincount(which, weights=confidence, minlength=bins) - np.bincount(which, weights=outcome, minlength=bins)
    return float(np.abs(gap).sum() / max(len(y), 1))


def ece_comparison(reference: np.ndarray, candidate: np.ndarray, y: np.ndarray, bootstrap: int = 1000,
                   seed: int = 0) -> dict:
    """ECE of both, the increase (positive = the converted model is worse calibrated), its paired
    bootstrap 95% interval and two-sided p-value."""
    y = np.asarray(y).astype(np.int64)
    reference, candidate = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
    ece_reference, ece_candidate = _ece(y, reference), _ece(y, candidate)
    samples = []
    if bootstrap > 0 and np.all(np.isfinite(candidate)):
        samples = [_ece(y[i], candidate[i]) - _ece(y[i], reference[i]) for i in stratified_resamples(y, bootstrap, seed)]
    return {"ece": ece_candidate, "ece_reference": ece_reference, "change": ece_candidate - ece_reference,
            "ci95": interval(samples), "p_value": bootstrap_p_value(samples), "bins": BINS,
            "test": "paired stratified bootstrap of the ECE difference"}


def judge_ece(comparison: dict, limits) -> dict:
    """Adds tolerance, cap, significant, verdict ("pass" / "noise" / "fail") and failure."""
    judged = dict(comparison)
    change, tolerance = judged["change"], limits.max_ece_increase
    cap = max(limits.cap_ece_increase, tolerance)
    p_value = judged.get("p_value")
    significant = p_value is None or p_value < limits.significance
    judged.update(tolerance=tolerance, cap=cap, significant=bool(significant), failure=None)
    if not np.isfinite(change) or change <= tolerance:
        judged["verdict"] = "pass" if np.isfinite(change) else "fail"
        if not np.isfinite(change):
            judged["failure"] = "calibration error (ECE) is not finite"
        return judged
    if change > cap or significant:
        ci = judged.get("ci95")
        evidence = ", ".join(part for part in (
            f"p={p_value:.2g}" if p_value is not None else "",
            f"95% CI {ci[0]:+.4f}..{ci[1]:+.4f}" if ci else "") if part)
        text = (f"calibration error (ECE, {BINS} bins) rose by {change:.4f} ({judged['ece_reference']:.4f} -> "
                f"{judged['ece']:.4f}), over the tolerance {tolerance} by {change - tolerance:.4f}")
        judged["verdict"] = "fail"
        judged["failure"] = (f"{text} and over the absolute cap {cap}" if change > cap else f"{text}; not chance") + (
            f" ({evidence})" if evidence else "")
    else:
        judged["verdict"] = "noise"
    return judged
