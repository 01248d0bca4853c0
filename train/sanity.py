"""Did the run learn? Plain-language warnings for runs that finish but should not be trusted.

A run that never left chance, whose operating threshold sits at an extreme of the score range,
or whose scores are far from calibrated still writes a model; these warnings go to the terminal,
metrics.json ("warnings") and report.md so nobody converts and deploys it by mistake.
"""
from __future__ import annotations

# Validation AUC under this (or an interval reaching 0.5) is indistinguishable from guessing.
CHANCE_AUC = 0.6
# Thresholds this close to 0 or 1 mean the scores are saturated: one side of the decision is
# decided by rounding, and a converted (int8) model will flip many of them.
EXTREME_THRESHOLD = 0.01
# Expected calibration error on validation above this: scores do not read as probabilities.
# Balanced class weights already shift calibration by the class imbalance, so this is loose.
POOR_ECE = 0.2


def learning_warnings(metrics: dict, histories: list[dict]) -> list[str]:
    val = metrics.get("val") or {}
    warnings = []
    auc, ci = val.get("auc"), val.get("auc_ci95")
    best = max((max(h["val_auc"]) for h in histories if h.get("val_auc")), default=None)
    if auc is not None and (auc < CHANCE_AUC or (ci is not None and ci[0] <= 0.5)):
        interval = f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else ""
        during = f", best during training {best:.3f}" if best is not None else ""
        warnings.append(f"the model did not learn: validation AUC {auc:.3f}{interval}{during} is no better than "
                        "chance; check the labels and data, or train longer / with another learning rate")
    threshold = metrics.get("threshold")
    if (metrics.get("task") == "binary" and threshold is not None and not str(metrics.get("threshold_policy")).startswith("fixed")
            and not EXTREME_THRESHOLD < threshold < 1 - EXTREME_THRESHOLD):
        warnings.append(f"the operating threshold {threshold:.3f} sits at an extreme of the score range: the scores "
                        "are saturated (too few epochs or too high a learning rate?); decisions near it are fragile")
    ece = val.get("ece")
    if ece is not None and ece > POOR_ECE:
        warnings.append(f"poorly calibrated: validation expected calibration error {ece:.3f} (> {POOR_ECE}); "
                        "scores do not read as probabilities")
    return warnings
