"""report.md: a short human-readable summary of a run (or a re-evaluation) with its plots."""
from __future__ import annotations

from pathlib import Path

from medge.edge.about import DISCLAIMER

from .evaluate import with_interval
from .run import REPORT_FILE


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def metrics_table(split: dict, classes: list[str]) -> list[str]:
    macro = " (macro)" if len(classes) > 2 else ""
    rows = [
        "| metric | value |", "|---|---|",
        f"| AUC{macro} | {with_interval(split, 'auc')} |",
        f"| accuracy | {with_interval(split, 'accuracy')} |",
        f"| sensitivity{macro} | {with_interval(split, 'sensitivity')} |",
        f"| specificity{macro} | {with_interval(split, 'specificity')} |",
        f"| precision (PPV) | {with_interval(split, 'precision')} |",
        f"| F1 | {_fmt(split.get('f1'))} |",
        f"| balanced accuracy | {_fmt(split.get('balanced_accuracy'))} |",
        f"| calibration error (ECE, 15 bins) | {_fmt(split.get('ece'))} |",
        f"| Brier score | {_fmt(split.get('brier'))} |",
    ]
    if split.get("quadratic_weighted_kappa") is not None or split.get("mean_absolute_grade_error") is not None:
        rows += [f"| quadratic-weighted kappa (ordinal) | {_fmt(split.get('quadratic_weighted_kappa'))} |",
                 f"| mean absolute grade error | {_fmt(split.get('mean_absolute_grade_error'))} |"]
    calibration = split.get("calibration")
    if calibration:
        rows += [f"| ECE before / after calibration | {_fmt(calibration.get('ece_before'))} / "
                 f"{_fmt(calibration.get('ece_after'))} (T = {calibration['temperature']:.3f}) |",
                 f"| Brier before / after calibration | {_fmt(calibration.get('brier_before'))} / "
                 f"{_fmt(calibration.get('brier_after'))} |"]
    rows += [f"| images | {split.get('n')} |"]
    if split.get("auc_ci_note"):
        rows += ["", f"Note: {split['auc_ci_note']}."]
    if not macro:
        rows += ["", "Intervals: AUC by case bootstrap; rates by the Wilson score method."]
    matrix = split.get("confusion_matrix")
    if matrix:
        rows += ["", "Confusion matrix (rows true, columns predicted):", "",
                 "| true \\ predicted | " + " | ".join(classes) + " |", "|---" * (len(classes) + 1) + "|"]
        rows += [f"| {name} | " + " | ".join(str(v) for v in row) + " |" for name, row in zip(classes, matrix)]
    if split.get("per_class"):
        rows += ["", "| class | AUC | sensitivity | specificity | support |", "|---|---|---|---|---|"]
        rows += [f"| {name} | {_fmt(m['auc'])} | {_fmt(m['sensitivity'])} | {_fmt(m['specificity'])} | {m['support']} |"
                 for name, m in split["per_class"].items()]
    return rows


def write_report(out: Path, metrics: dict, plots: dict[str, str], title: str | None = None,
                 file_name: str = REPORT_FILE) -> Path:
    classes = metrics["classes"]
    model = metrics.get("model", {})
    data = metrics.get("data", {})
    lines = [
        f"# {title or 'medge training report'}: {model.get('name', '')} v{model.get('version', '')}",
        "",
        f"> **{DISCLAIMER}** Research and engineering use only; this model is not a medical device.",
        "",
        f"- task: {metrics['task']}, classes: {', '.join(classes)}"
        + (f", positive class: {metrics['positive_class']}" if metrics.get("positive_class") else ""),
        f"- architecture: {model.get('arch')} ({model.get('params')} parameters"
        + (f", ensemble of {model['ensemble']}" if model.get("ensemble", 1) > 1 else "") + ")",
        f"- data: {data.get('path')} ({data.get('format')}), counts {data.get('counts')}"
        + (f", {data['skipped']} non-image file(s) skipped" if data.get("skipped") else ""),
        f"- preprocessing: {metrics['preprocessing']}",
        f"- operating threshold: {metrics['threshold']:.4f} ({metrics['threshold_policy']}, chosen on calibrated "
        "validation scores" + (f"; bootstrap 95% interval {metrics['threshold_ci95'][0]:.3f}-"
                               f"{metrics['threshold_ci95'][1]:.3f}" if metrics.get("threshold_ci95") else "") + ")",
    ]
    if metrics.get("calibration"):
        calibration = metrics["calibration"]
        lines.append(f"- calibration: temperature scaling, T = {calibration['temperature']:.3f} fitted on validation "
                     f"(divides the logits before the {'sigmoid' if len(classes) == 2 else 'softmax'}; the bundle "
                     f"and the device apply it); {calibration.get('split', 'test')} ECE "
                     f"{_fmt(calibration.get('ece_before'))} -> {_fmt(calibration.get('ece_after'))}, Brier "
                     f"{_fmt(calibration.get('brier_before'))} -> {_fmt(calibration.get('brier_after'))}"
                     + (f" ({calibration['validation']['note']})" if (calibration.get("validation") or {}).get("note")
                        else "")
                     + ("; the class weights' prior shift is undone (logits - log weight, folded into the last "
                        "layer's bias: it lowered the validation NLL)"
                        if (calibration.get("prior_correction") or {}).get("applied") else "")
                     + (f"; a logit offset of {calibration['bias_correction']['offsets'][-1]:+.3f} (Platt scaling, "
                        "folded into the last layer's bias) moves the shifted scores: it lowered the validation NLL"
                        if (calibration.get("bias_correction") or {}).get("applied") else ""))
    if metrics.get("ordinal"):
        lines.append("- ordinal task: the classes are grades in this order; kappa and grade error below")
    if metrics.get("training"):
        lines.append(f"- training time: {metrics['training']['seconds']} s on {metrics['training']['train_samples']} images")
    if metrics.get("warnings"):
        lines += ["", "## Warnings", ""] + [f"- **WARNING:** {warning}" for warning in metrics["warnings"]]
    for split in ("test", "val"):
        if split in metrics:
            lines += ["", f"## {'Test' if split == 'test' else 'Validation'} results", ""] + metrics_table(metrics[split], classes)
    from .refer import report_lines

    lines += report_lines(metrics)
    if plots:
        lines += ["", "## Plots", ""]
        for caption, name in plots.items():
            lines += [f"### {caption}", "", f"![{caption}]({name})", ""]
    lines += ["", f"*{DISCLAIMER}*", ""]
    path = out / file_name
    path.write_text("\n".join(lines))
    return path
