"""The comparison figure of a conversion: float vs converted scores (scatter) and ROC curves."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from medge import DISCLAIMER


def comparison_plot(path: Path, y: np.ndarray, reference: np.ndarray, records: list[dict], run) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medge.train.evaluate import roc_curve

    classes = run.classes
    # Binary: the positive-class probability; multi-class: the probability of the first non-reference class
    # is less telling, so each image's top float probability vs the converted model's same entry.
    if run.task == "binary":
        column = classes.index(run.positive_class or classes[1])
        ref_scores = reference[:, column]
        pick = lambda probabilities: probabilities[:, column]  # noqa: E731
        truth = y == column
        score_label = f"P({classes[column]})"
    else:
        top = reference.argmax(axis=1)
        ref_scores = reference[np.arange(len(y)), top]
        pick = lambda probabilities: probabilities[np.arange(len(y)), top]  # noqa: E731
        truth = y != 0
        ref_positive = 1.0 - reference[:, 0]
        score_label = "probability of the float model's top class"

    figure, (scatter, roc) = plt.subplots(1, 2, figsize=(11, 5))
    for record in records:
        scatter.scatter(ref_scores, pick(record["probabilities"]), s=6, alpha=0.5,
                        label=f"{record['format']} (max |diff| {record['max_abs_score_diff']:.3f})")
    scatter.plot([0, 1], [0, 1], color="black", linewidth=0.8)
    if run.task == "binary":
        scatter.axvline(run.threshold, color="grey", linestyle=":", linewidth=0.8)
        scatter.axhline(run.threshold, color="grey", linestyle=":", linewidth=0.8)
    scatter.set_xlabel(f"float Keras: {score_label}")
    scatter.set_ylabel(f"converted: {score_label}")
    scatter.set_title("Scores, float vs converted")
    scatter.legend(fontsize=8, loc="upper left")

    if run.task == "binary":
        curves = [("float Keras", ref_scores)] + [(r["format"], pick(r["probabilities"])) for r in records]
        roc.set_title(f"ROC ({classes[column]} vs rest)")
    else:
        curves = [("float Keras", ref_positive)] + [(r["format"], 1.0 - r["probabilities"][:, 0]) for r in records]
        roc.set_title(f"ROC (any finding vs {classes[0]})")
    for index, (label, scores) in enumerate(curves):
        fpr, tpr = roc_curve(truth, scores)
        auc = next((r["auc"] for r in records if r["format"] == label), None)
        roc.plot(fpr, tpr, linewidth=2.0 if index == 0 else 1.2, linestyle="-" if index == 0 else "--",
                 label=label + (f" (AUC {auc:.4f})" if auc is not None and run.task == "binary" else ""))
    roc.plot([0, 1], [0, 1], color="grey", linewidth=0.6)
    roc.set_xlabel("1 - specificity")
    roc.set_ylabel("sensitivity")
    roc.legend(fontsize=8, loc="lower right")
    figure.suptitle(f"{run.path.name}: conversion check on {len(y)} images. {DISCLAIMER}", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
