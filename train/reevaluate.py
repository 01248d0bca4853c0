"""`medge evaluate RUN [DATA]`: the saved model of a run, measured on any dataset."""
from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from medge.edge.about import __version__
from medge.edge.errors import InputError

from .data import Dataset, Split, load_dataset
from .evaluate import evaluate_probabilities, summary_figures
from .run import load_run

EVALUATION_FILE = "evaluation.json"


def evaluate_run(run_path, data=None, split: str | None = None, labels_csv=None, threshold: float | None = None,
                 out=None, bootstrap: int = 1000, class_map: dict | None = None, log=print) -> Path:
    run = load_run(run_path)
    if data is None:
        if class_map:
            raise InputError("--class-map applies to DATA; the run's own test split already uses its classes")
        dataset = run.load_dataset()
        split = split or "test"
    else:
        # No carving: every image of DATA belongs to the split it was given in (or to "all").
        dataset = load_dataset(data, classes=run.classes, spec=run.spec, val_split=0.0, test_split=0.0,
                               labels_csv=labels_csv, class_map=class_map)
        split = split or ("test" if "test" in dataset.splits else "all")
    chosen = pick_split(dataset, split)
    if len(chosen) == 0:
        raise InputError(f"{dataset.path}: split {split!r} has no images")
    log(dataset.describe())
    from .calibration import ScoreModel, calibration_figures

    # The run's temperature applies: its threshold is on the calibrated scores, as on the device.
    scores = ScoreModel(run.load_model()).scores(chosen.x)
    probabilities = scores.probabilities(run.temperature)
    threshold = run.threshold if threshold is None else float(threshold)
    metrics = evaluate_probabilities(chosen.y, probabilities, run.classes, threshold, bootstrap, ordinal=run.ordinal)
    metrics["calibration"] = calibration_figures(chosen.y, scores, run.temperature)
    name = dataset.path.stem if dataset.path.is_file() else dataset.path.name
    out = Path(out).expanduser().resolve() if out else run.path / "evaluations" / f"{name}-{split}"
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "medge_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "run": str(run.path),
        "classes": run.classes,
        "task": run.task,
        "positive_class": run.positive_class,
        "threshold": threshold,
        "threshold_policy": run.metrics.get("threshold_policy") if threshold == run.threshold else f"fixed:{threshold:g}",
        "preprocessing": run.spec.to_dict(),
        "model": run.metrics.get("model", {}),
        "data": {**dataset.to_dict(), "split": split},
        "test": metrics,
        "calibration": {**metrics["calibration"], "split": split, "fitted_on": "the run's validation split"},
    }
    (out / EVALUATION_FILE).write_text(json.dumps(result, indent=2))

    from .plots import plot_confusion, plot_reliability, plot_roc
    from .report import write_report

    plots = {f"ROC curve ({split})": plot_roc(out / "roc.png", chosen.y, probabilities, run.classes, metrics),
             f"Confusion matrix ({split}, threshold {threshold:.3f})":
                 plot_confusion(out / "confusion_matrix.png", metrics["confusion_matrix"], run.classes),
             f"Reliability diagram ({split}), before and after calibration":
                 plot_reliability(out / "reliability.png", chosen.y, scores.probabilities(1.0), probabilities,
                                  run.temperature, split)}
    write_report(out, result, plots, title="medge evaluation", file_name="evaluation.md")
    log(f"{split} ({len(chosen)} images): {summary_figures(metrics)}")
    if metrics.get("auc_ci_note"):
        log(f"  note: {metrics['auc_ci_note']}")
    return out


def pick_split(dataset: Dataset, split: str) -> Split:
    if split == "all":
        parts = list(dataset.splits.values())
        return Split(np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts]),
                     [n for p in parts for n in p.names])
    if split not in dataset.splits:
        raise InputError(f"{dataset.path}: has no {split!r} split (it has {', '.join(dataset.splits)}; use --split all)")
    return dataset.splits[split]
