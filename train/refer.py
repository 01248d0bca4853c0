"""The refer band, chosen on validation: which images the model should not decide.

Rule (binary): the band [low, high) around the operating threshold with the largest coverage
(share of validation images decided, outside the band) whose accuracy on the decided images
is >= the target (default 0.99, TrainConfig.refer_accuracy); ties go to the narrower band. With no band at all meeting the
target the band is empty (low = high = threshold: nothing is referred). When no band reaches it
(a weak model) the most accurate band deciding at least MIN_DECIDED_SHARE of the images is kept
and `target_met` is false (a warning in the run).

Multi-class: three one-parameter rules (edge/decision.py: top probability, which is also the
singleton rule of non-randomised APS; the LAC conformal set {k: p_k >= level}; the top-two
margin), each at its largest-coverage level meeting the target; the rule with the largest
coverage wins (ties: top probability, the simplest to explain). All three are reported.

The point estimate on validation is what the rule meets; the Wilson 95% interval beside it (and
the test split's figures, for the report only) show how much a few hundred images can say.
`medge convert` copies the rule into the bundle's `decision` section (the drift reference is
computed there, by the int8 model itself: convert/drift_reference.py).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from medge.edge.decision import MULTICLASS_METHODS, binary_decision, decided

from .evaluate import wilson_interval

DEFAULT_TARGET = 0.99  # see TrainConfig.refer_accuracy
MIN_DECIDED_SHARE = 0.10  # a band deciding fewer images than this is not a useful fallback
MAX_CUTS = 400  # candidate band edges per side (quantiles of the scores): keeps the search small
PLOT = "refer_coverage.png"


# --------------------------------------------------------------------------- binary


def _cuts(scores: np.ndarray) -> np.ndarray:
    """Candidate edges: midpoints between neighbouring distinct scores (at most MAX_CUTS), 0 and 1."""
    values = np.unique(scores)
    if len(values) > MAX_CUTS:
        values = np.unique(np.quantile(values, np.linspace(0, 1, MAX_CUTS)))
    mids = (values[1:] + values[:-1]) / 2.0 if len(values) > 1 else values
    return np.unique(np.concatenate([[0.0, 1.0], mids]))


def band_grid(y: np.ndarray, scores: np.ndarray, threshold: float):
    """Every candidate (low, high) with its decided count and errors: arrays (L,), (H,), (L, H)."""
    cuts = _cuts(scores)
    lows = np.unique(np.concatenate([cuts[cuts <= threshold], [threshold]]))
    highs = np.unique(np.concatenate([cuts[cuts >= threshold], [threshold]]))
    positive = y == 1
    # decided negative: score < low (an error when the truth is positive); positive: score >= high.
    n_low = (scores[None, :] < lows[:, None]).sum(1)
    e_low = ((scores[None, :] < lows[:, None]) & positive[None, :]).sum(1)
    n_high = (scores[None, :] >= highs[:, None]).sum(1)
    e_high = ((scores[None, :] >= highs[:, None]) & ~positive[None, :]).sum(1)
    decided_n = n_low[:, None] + n_high[None, :]
    errors = e_low[:, None] + e_high[None, :]
    return lows, highs, decided_n, errors


def choose_band(y, scores, threshold: float, target: float = DEFAULT_TARGET) -> dict:
    """The band rule (see the module docstring) on validation labels `y` (1 = positive class)."""
    y, scores = np.asarray(y).astype(int), np.asarray(scores, dtype=np.float64)
    lows, highs, decided_n, errors = band_grid(y, scores, threshold)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.where(decided_n > 0, 1.0 - errors / np.maximum(decided_n, 1), 0.0)
    width = highs[None, :] - lows[:, None]
    feasible = (accuracy >= target) & (decided_n > 0)
    target_met = bool(feasible.any())
    if target_met:
        # most images decided, then the narrowest band
        key = np.where(feasible, decided_n * 10.0 - width, -np.inf)
    else:
        enough = decided_n >= max(1, int(np.ceil(MIN_DECIDED_SHARE * len(y))))
        key = np.where(enough, accuracy * 1e6 + decided_n, -np.inf)
    i, j = np.unravel_index(int(np.argmax(key)), key.shape)
    rule = {"method": "band", "low": float(lows[i]), "high": float(highs[j]), "target_accuracy": float(target)}
    rule["validation"] = evaluate(rule, y, scores[:, None], ["0", "1"], "binary", threshold)
    rule["validation"]["target_met"] = target_met
    return rule


def band_frontier(y, scores, threshold: float) -> list[dict]:
    """The best accuracy reachable at each coverage on these images: the curve of the plot."""
    y, scores = np.asarray(y).astype(int), np.asarray(scores, dtype=np.float64)
    lows, highs, decided_n, errors = band_grid(y, scores, threshold)
    coverage = (decided_n / max(1, len(y))).ravel()
    accuracy = np.where(decided_n > 0, 1.0 - errors / np.maximum(decided_n, 1), np.nan).ravel()
    order = np.lexsort((-np.nan_to_num(accuracy, nan=-1), -coverage))
    points, best = [], -1.0
    for index in order:
        if np.isnan(accuracy[index]) or accuracy[index] <= best:
            continue
        best = accuracy[index]
        li, hj = np.unravel_index(index, decided_n.shape)
        points.append({"coverage": float(coverage[index]), "accuracy": float(accuracy[index]),
                       "low": float(lows[li]), "high": float(highs[hj])})
    return points


# --------------------------------------------------------------------------- multi-class


def _top_two(probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.argsort(-probabilities, axis=1, kind="stable")
    rows = np.arange(len(probabilities))
    first = probabilities[rows, order[:, 0]]
    second = probabilities[rows, order[:, 1]] if probabilities.shape[1] > 1 else np.zeros(len(probabilities))
    return order[:, 0], first, second


def _decided_mask(method: str, level: float, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    if method == "top_probability":
        return first >= level
    if method == "lac":
        return (first >= level) & (second < level)
    return first - second >= level


def _levels(method: str, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    values = {"top_probability": first, "lac": np.concatenate([first, second]), "margin": first - second}[method]
    return np.unique(np.concatenate([[0.0], _cuts(values)]))


def choose_multiclass(y, probabilities, target: float = DEFAULT_TARGET) -> dict:
    """The multi-class rule (see the module docstring); `comparison` has every method's level."""
    y, probabilities = np.asarray(y).astype(int), np.asarray(probabilities, dtype=np.float64)
    predicted, first, second = _top_two(probabilities)
    correct = predicted == y
    candidates = []
    for rank, method in enumerate(MULTICLASS_METHODS):
        best = None
        for level in _levels(method, first, second):
            mask = _decided_mask(method, level, first, second)
            n = int(mask.sum())
            if n == 0:
                continue
            accuracy = float(correct[mask].mean())
            met = accuracy >= target
            key = (met, n if met else accuracy, -rank) if met else (met, accuracy, n)
            if best is None or key > best[0]:
                best = (key, float(level), n, accuracy, met)
        if best is not None:
            candidates.append({"method": method, "level": best[1], "coverage": best[2] / len(y),
                               "accuracy_outside": best[3], "target_met": best[4], "rank": rank})
    met = [c for c in candidates if c["target_met"]]
    pool = met or candidates
    chosen = max(pool, key=lambda c: ((c["coverage"], -c["rank"]) if met else (c["accuracy_outside"], -c["rank"])))
    rule = {"method": chosen["method"], "level": chosen["level"], "target_accuracy": float(target)}
    rule["validation"] = evaluate(rule, y, probabilities, [str(k) for k in range(probabilities.shape[1])],
                                  "multiclass", None)
    rule["validation"]["target_met"] = bool(met)
    rule["comparison"] = [{k: v for k, v in c.items() if k != "rank"} for c in candidates]
    return rule


def multiclass_frontier(y, probabilities, method: str) -> list[dict]:
    y, probabilities = np.asarray(y).astype(int), np.asarray(probabilities, dtype=np.float64)
    predicted, first, second = _top_two(probabilities)
    correct = predicted == y
    points = []
    for level in _levels(method, first, second):
        mask = _decided_mask(method, level, first, second)
        if mask.any():
            points.append({"coverage": float(mask.mean()), "accuracy": float(correct[mask].mean()), "level": float(level)})
    return sorted(points, key=lambda p: -p["coverage"])


# --------------------------------------------------------------------------- both


def decisions(rule: dict, probabilities, classes: list[str], task: str, threshold: float | None) -> np.ndarray:
    """Each image's decision under `rule`, as the device makes it (edge/decision.py)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if task == "binary":
        return np.array([binary_decision(float(s), float(threshold), rule) for s in probabilities[:, -1]])
    predicted, first, second = _top_two(probabilities)
    return np.array([classes[p] if decided(rule, f, s) else "refer" for p, f, s in zip(predicted, first, second)])


def evaluate(rule: dict, y, probabilities, classes: list[str], task: str, threshold: float | None) -> dict:
    """Coverage and accuracy outside the band (with its Wilson 95% interval) on labelled images."""
    y = np.asarray(y).astype(int)
    made = decisions(rule, probabilities, classes, task, threshold)
    mask = made != "refer"
    if task == "binary":
        truth = np.where(y == 1, "positive", "negative")
    else:
        truth = np.array([classes[k] for k in y])
    n, correct = int(mask.sum()), int((made[mask] == truth[mask]).sum())
    return {"n": int(len(y)), "decided": n, "referred": int(len(y) - n),
            "coverage": n / len(y) if len(y) else None, "refer_rate": (len(y) - n) / len(y) if len(y) else None,
            "accuracy_outside": correct / n if n else None, "accuracy_outside_ci95": wilson_interval(correct, n),
            "accuracy_all": _accuracy_all(y, probabilities, task, threshold)}


def _accuracy_all(y, probabilities, task, threshold) -> float | None:
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if not len(y):
        return None
    if task == "binary":
        return float(((probabilities[:, -1] >= threshold).astype(int) == y).mean())
    return float((probabilities.argmax(1) == y).mean())


def refer_metrics(task: str, classes: list[str], threshold: float | None, val_y, val_probabilities,
                  test_y=None, test_probabilities=None, target: float = DEFAULT_TARGET) -> dict:
    """metrics.json's `refer` section: the rule (copied into the bundle), its figures on
    validation (where it was chosen) and test (report only)."""
    val_probabilities = np.asarray(val_probabilities, dtype=np.float64)
    if task == "binary":
        rule = choose_band(val_y, val_probabilities[:, -1], threshold, target)
        curve = band_frontier(val_y, val_probabilities[:, -1], threshold)
    else:
        rule = choose_multiclass(val_y, val_probabilities, target)
        curve = multiclass_frontier(val_y, val_probabilities, rule["method"])
    section = {"rule": {k: v for k, v in rule.items() if k not in ("validation", "comparison")},
               "val": rule["validation"], "val_curve": _thin(curve)}
    if "comparison" in rule:
        section["comparison"] = rule["comparison"]
    if test_y is not None and test_probabilities is not None:
        add_test(section, test_y, test_probabilities, classes, task, threshold)
    return section


def add_test(section: dict, test_y, test_probabilities, classes: list[str], task: str, threshold: float | None) -> dict:
    """The chosen rule (and the validation curve's rules) on the test split: reported only."""
    if not len(test_y):
        return section
    rule = section["rule"]
    section["test"] = evaluate(rule, test_y, test_probabilities, classes, task, threshold)
    section["test_curve"] = _thin(_apply_curve(section["val_curve"], test_y, test_probabilities, classes, task,
                                               threshold, rule["method"]))
    return section


def _apply_curve(curve, y, probabilities, classes, task, threshold, method) -> list[dict]:
    """The validation curve's rules applied to other images (how the chosen trade-off carries over)."""
    points = []
    for point in curve:
        rule = ({"method": "band", "low": point["low"], "high": point["high"]} if task == "binary"
                else {"method": method, "level": point["level"]})
        figures = evaluate(rule, y, probabilities, classes, task, threshold)
        if figures["decided"]:
            points.append({"coverage": figures["coverage"], "accuracy": figures["accuracy_outside"]})
    return points


def _thin(points: list[dict], keep: int = 60) -> list[dict]:
    if len(points) <= keep:
        return points
    index = np.unique(np.linspace(0, len(points) - 1, keep).round().astype(int))
    return [points[i] for i in index]


def warnings_for(section: dict) -> list[str]:
    val = section["val"]
    if val.get("target_met"):
        return []
    return [f"refer band: no band reaches accuracy {section['rule']['target_accuracy']:.2f} on validation; "
            f"kept the most accurate one deciding {val['coverage']:.0%} of images (accuracy "
            f"{val['accuracy_outside']:.3f})"]


# --------------------------------------------------------------------------- report


def plot(path: Path, section: dict) -> str:
    """Coverage (share decided) against accuracy on the decided images, validation and test."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4.2))
    for name, style in (("val", "-"), ("test", "--")):
        curve = section.get(f"{name}_curve") or []
        if curve:
            axis.plot([p["coverage"] for p in curve], [p["accuracy"] for p in curve], style,
                      label=f"{'validation' if name == 'val' else 'test'}: best band per coverage"
                      if name == "val" else "test: the same bands")
        figures = section.get(name)
        if figures and figures.get("accuracy_outside") is not None:
            axis.plot([figures["coverage"]], [figures["accuracy_outside"]], "o" if name == "val" else "s",
                      label=f"chosen rule on {name}: coverage {figures['coverage']:.2f}, "
                            f"accuracy {figures['accuracy_outside']:.3f}")
    target = section["rule"]["target_accuracy"]
    axis.axhline(target, color="grey", linestyle=":", label=f"target accuracy {target:.2f}")
    axis.set_xlabel("coverage (share of images decided, not referred)")
    axis.set_ylabel("accuracy on decided images")
    axis.set_title(f"Refer rule: {describe_rule(section['rule'])}", fontsize=9)
    axis.set_xlim(0, 1.02)
    axis.legend(fontsize=7, loc="lower left")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path.name


def describe_rule(rule: dict) -> str:
    from medge.edge.decision import describe

    return describe(rule, "binary" if rule["method"] == "band" else "multiclass")


def report_lines(metrics: dict) -> list[str]:
    """report.md's refer-band section."""
    section = metrics.get("refer")
    if not section:
        return []
    lines = ["", "## Refer band (chosen on validation)", "",
             f"- rule: {describe_rule(section['rule'])}; target accuracy on decided images "
             f"{section['rule']['target_accuracy']:.2f}", "",
             "| split | images | decided (coverage) | accuracy decided [95% CI] | accuracy of all |",
             "|---|---|---|---|---|"]
    for name in ("val", "test"):
        figures = section.get(name)
        if not figures:
            continue
        ci = figures.get("accuracy_outside_ci95")
        accuracy = "-" if figures["accuracy_outside"] is None else f"{figures['accuracy_outside']:.3f}"
        lines.append(f"| {name} | {figures['n']} | {figures['decided']} ({figures['coverage']:.1%}) | {accuracy}"
                     + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "") + f" | {figures['accuracy_all']:.3f} |")
    for item in section.get("comparison") or []:
        lines.append(f"- {item['method']}: level {item['level']:.3f}, coverage {item['coverage']:.1%}, accuracy "
                     f"{item['accuracy_outside']:.3f}" + ("" if item["target_met"] else " (target not met)"))
    return lines
