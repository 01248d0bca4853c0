"""The run's PNG plots: training curves, ROC, confusion matrix, sample images before/after preprocessing."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .evaluate import roc_curve

CURVES = "training_curves.png"
ROC = "roc.png"
CONFUSION = "confusion_matrix.png"
SAMPLES = "samples.png"
RELIABILITY = "reliability.png"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_plots(out: Path, histories: list[dict], dataset, metrics: dict, test_probabilities,
                reliability: dict | None = None) -> dict[str, str]:
    """Writes every plot that the data allows; returns {title: file name}. `reliability`: y, before,
    after (probabilities at T = 1 and at the fitted temperature), temperature, split."""
    written = {"Training and validation loss / AUC": plot_curves(out / CURVES, histories)}
    if reliability is not None:
        written[f"Reliability diagram ({reliability['split']}), before and after calibration"] = plot_reliability(
            out / RELIABILITY, **reliability)
    split_name = "test" if "test" in metrics else "val"
    split = dataset.splits[split_name]
    probabilities = test_probabilities
    if probabilities is None:
        probabilities = None  # no test split: ROC/confusion come from validation metrics only
    if probabilities is not None:
        written[f"ROC curve ({split_name})"] = plot_roc(out / ROC, split.y, probabilities, dataset.classes,
                                                         metrics[split_name])
    written[f"Confusion matrix ({split_name}, threshold {metrics['threshold']:.3f})"] = plot_confusion(
        out / CONFUSION, metrics[split_name]["confusion_matrix"], dataset.classes)
    written["Sample images before and after preprocessing"] = plot_samples(out / SAMPLES, dataset)
    return {title: name for title, name in written.items() if name}


def plot_curves(path: Path, histories: list[dict]) -> str:
    plt = _pyplot()
    figure, (loss_axis, auc_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for index, history in enumerate(histories):
        suffix = f" (member {index})" if len(histories) > 1 else ""
        epochs = np.arange(1, len(history.get("loss", [])) + 1)
        for key, axis in (("loss", loss_axis), ("auc", auc_axis)):
            if key in history:
                axis.plot(epochs, history[key], label=f"train{suffix}")
            if f"val_{key}" in history:
                axis.plot(epochs, history[f"val_{key}"], "--", label=f"validation{suffix}")
    loss_axis.set(title="Loss", xlabel="epoch", ylabel="loss")
    auc_axis.set(title="AUC", xlabel="epoch", ylabel="AUC")
    for axis in (loss_axis, auc_axis):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path.name


def plot_roc(path: Path, y_true, probabilities, classes, metrics: dict) -> str:
    plt = _pyplot()
    probabilities = np.asarray(probabilities)
    figure, axis = plt.subplots(figsize=(5, 5))
    if len(classes) == 2:
        fpr, tpr = roc_curve(y_true, probabilities.reshape(len(y_true), -1)[:, -1])
        ci = metrics.get("auc_ci95")
        label = f"{classes[1]} vs {classes[0]}: AUC {metrics['auc']:.3f}" if metrics.get("auc") is not None else classes[1]
        if ci:
            label += f" ({ci[0]:.3f}-{ci[1]:.3f})"
        axis.plot(fpr, tpr, label=label)
        if metrics.get("sensitivity") is not None and metrics.get("specificity") is not None:
            axis.plot(1 - metrics["specificity"], metrics["sensitivity"], "o", color="red",
                      label=f"operating point (threshold {metrics['threshold']:.3f})")
    else:
        for k, name in enumerate(classes):
            if len(np.unique(np.asarray(y_true) == k)) < 2:
                continue
            fpr, tpr = roc_curve(np.asarray(y_true) == k, probabilities[:, k])
            auc = metrics["per_class"][name]["auc"]
            axis.plot(fpr, tpr, label=f"{name}: AUC {auc:.3f}")
    axis.plot([0, 1], [0, 1], ":", color="grey")
    axis.set(xlabel="1 - specificity (false positive rate)", ylabel="sensitivity (true positive rate)",
             title="ROC", xlim=(0, 1), ylim=(0, 1.01))
    axis.legend(fontsize=8, loc="lower right")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path.name


def plot_reliability(path: Path, y, before, after, temperature: float, split: str) -> str:
    """Two panels, before (T = 1) and after temperature scaling: per 15 equal-width bins the
    observed rate against the mean confidence (binary: P(positive) and the positive rate;
    multi-class: top-class confidence and accuracy), bar width = the bin, the count on top."""
    from .calibration import ECE_BINS, expected_calibration_error, reliability_bins

    plt = _pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(10, 4.8), sharey=True)
    binary = np.asarray(before).shape[1] == 2
    for axis, probabilities, title in ((axes[0], before, "before calibration (T = 1)"),
                                       (axes[1], after, f"after temperature scaling (T = {temperature:.3f})")):
        rows = reliability_bins(y, probabilities, ECE_BINS)
        filled = [r for r in rows if r["count"]]
        axis.bar([r["low"] for r in filled], [r["observed"] for r in filled], width=1.0 / ECE_BINS, align="edge",
                 alpha=0.7, edgecolor="black", label="observed rate")
        axis.plot([r["confidence"] for r in filled], [r["observed"] for r in filled], "o", color="darkred",
                  markersize=4, label="mean confidence per bin")
        for r in filled:
            axis.text(r["low"] + 0.5 / ECE_BINS, min(1.0, r["observed"]) + 0.02, str(r["count"]), ha="center",
                      fontsize=6)
        axis.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
        ece = expected_calibration_error(y, probabilities)
        axis.set(title=f"{title}\nECE {ece:.3f} ({split}, {len(y)} images)", xlim=(0, 1), ylim=(0, 1.08),
                 xlabel="P(positive class)" if binary else "top-class confidence")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("observed positive rate" if binary else "accuracy")
    axes[0].legend(fontsize=7, loc="upper left")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path.name


def plot_confusion(path: Path, matrix, classes) -> str:
    plt = _pyplot()
    matrix = np.asarray(matrix)
    figure, axis = plt.subplots(figsize=(1.2 * len(classes) + 3, 1.2 * len(classes) + 2.5))
    axis.imshow(matrix, cmap="Blues")
    for (row, column), value in np.ndenumerate(matrix):
        axis.text(column, row, str(value), ha="center", va="center",
                  color="white" if value > matrix.max() / 2 else "black")
    axis.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
    axis.set_yticks(range(len(classes)), classes)
    axis.set(xlabel="predicted", ylabel="true", title="Confusion matrix")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path.name


def plot_samples(path: Path, dataset, per_class: int = 2) -> str | None:
    """Each row: the image as decoded (display pixels) and as the model sees it after preprocessing."""
    plt = _pyplot()
    split = dataset.splits["train"]
    picks = []
    for k in range(len(dataset.classes)):
        picks += [int(i) for i in np.flatnonzero(split.y == k)[:per_class]]
    if not picks:
        return None
    figure, axes = plt.subplots(len(picks), 2, figsize=(5, 2.2 * len(picks)), squeeze=False)
    for row, index in enumerate(picks):
        name = split.names[index]
        before = dataset.display_pixels(name)
        after = split.x[index]
        axes[row, 0].imshow(before, cmap="gray" if before.ndim == 2 else None)
        axes[row, 0].set_title(f"{dataset.classes[split.y[index]]}: {Path(name).name} {before.shape[1]}x{before.shape[0]}",
                               fontsize=7)
        shown = after[:, :, 0] if after.shape[2] == 1 else (after - after.min()) / max(float(np.ptp(after)), 1e-6)
        axes[row, 1].imshow(shown, cmap="gray" if after.shape[2] == 1 else None)
        axes[row, 1].set_title(f"model input {after.shape[1]}x{after.shape[0]}x{after.shape[2]} "
                               f"[{after.min():.2f}, {after.max():.2f}]", fontsize=7)
        for axis in axes[row]:
            axis.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path.name
