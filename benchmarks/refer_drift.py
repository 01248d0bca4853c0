"""Trust benchmark, refer band and drift part (issue 11), on a fully trained PneumoniaMNIST model.

Refer band: the band the training run chose on validation (train/refer.py, target accuracy 0.95
on decided images), its coverage and accuracy on validation (where it was chosen) and on the
test split (float, from the run; int8, from the bundle on the device code path), with Wilson
95% intervals. Drift: the device's PSI (edge/drift.py, the bundle's validation reference, OOD
guard on as by default) for 300-image streams: in-distribution test windows, the PSI of windows
of 50-500 inputs drawn from the validation split itself (sampling alone) and from the test split
(a moderately shifted population), which the min_window and the 0.25 alert level rest on, and
shifted streams (brightness, contrast, 20% of another dataset mixed in, inverted, rotated,
darkened, one class only, the other MedMNIST dataset, noise).

    python benchmarks/refer_drift.py [RUN]     # RUN: a PneumoniaMNIST training run; else trains one
                                               # into benchmarks/results/run-refer-drift (kept, reused)

Prints the figures, saves benchmarks/results/refer_drift.json, refer_coverage.png (the run's
coverage/accuracy plot) and refer_drift_psi.png.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
RESULTS = Path(__file__).resolve().parent / "results"
STREAM = 300
NULL_SIZES = (50, 100, 200, 300, 500)
NULL_RESAMPLES = 200


DEFAULT_RUN = RESULTS / "run-refer-drift"  # git-ignored (benchmarks/results/run*/)


def trained_run(out: Path) -> Path:
    """The `medge train` defaults on the full bundled PneumoniaMNIST (as benchmarks/train_pneumoniamnist.py)."""
    from medge.train.config import TrainConfig
    from medge.train.pipeline import train

    return train(TrainConfig(name="pneumoniamnist", out=out, verbose=False))


def bundle_of(run: Path) -> Path:
    from medge.convert.pipeline import ConvertConfig, convert

    out = run / "bundle-refer-drift"
    convert(ConvertConfig(run=run, out=out, formats="tflite-int8", force=True, progress=False, latency_runs=3,
                          heatmap_samples=0), log=lambda *_: None)
    return out


def analyses(classifier, images) -> list:
    from medge.edge.classify import analyse
    from medge.edge.preprocess import DecodedImage

    return [analyse(classifier, lambda image=image: DecodedImage([image], "image")) for image in images]


def drift_of(classifier, outcomes: list, settings=None) -> dict:
    from medge.edge.drift import DriftMonitor, DriftSettings
    from medge.edge.worker import ActiveModel

    monitor = DriftMonitor(settings or DriftSettings(window=max(1, len(outcomes)), min_window=1), classifier.bundle)
    active = ActiveModel(classifier=classifier, bundle=classifier.bundle, info={})
    for analysis in outcomes:
        monitor.observe(None, analysis, active, [])
    return monitor.snapshot()


def device_refer(outcomes: list, labels: np.ndarray, classes: list[str], task: str) -> dict:
    """The int8 bundle's decisions on labelled images, as the device makes them."""
    from medge.train.evaluate import wilson_interval

    decided = correct = referred = refused = 0
    for analysis, label in zip(outcomes, labels):
        if analysis.not_applicable:
            refused += 1
            continue
        decision = analysis.frames[0].classification.decision
        if decision == "refer":
            referred += 1
            continue
        decided += 1
        truth = ("positive" if label == 1 else "negative") if task == "binary" else classes[int(label)]
        correct += int(decision == truth)
    classified = decided + referred
    return {"n": len(labels), "refused_ood": refused, "classified": classified, "referred": referred,
            "coverage_of_classified": decided / classified if classified else None,
            "accuracy_outside": correct / decided if decided else None,
            "accuracy_outside_ci95": wilson_interval(correct, decided)}


def shifted_streams(test_images: list[np.ndarray], test_labels: np.ndarray, chest: bool) -> dict[str, list]:
    """Streams of STREAM images the model was not validated on: changed copies of test images,
    one class only, the other bundled MedMNIST dataset, noise."""
    from medge.data import PNEUMONIAMNIST, RETINAMNIST

    rng = np.random.default_rng(0)
    first = test_images[:STREAM]
    other = np.load(RETINAMNIST if chest else PNEUMONIAMNIST)["test_images"][:STREAM]
    if chest and other.ndim == 4:
        other = other.mean(-1).astype(np.uint8)
    first_class = [image for image, label in zip(test_images, test_labels) if label == 0][:STREAM]
    last_class = [image for image, label in zip(test_images, test_labels) if label == test_labels.max()][:STREAM]
    mixed = [first[i] if i % 5 else other[i] for i in range(min(len(first), len(other)))]
    return {
        "brightness x0.9": [(image.astype(np.float32) * 0.9).astype(np.uint8) for image in first],
        "contrast x0.8": [(128 + (image.astype(np.float32) - 128) * 0.8).astype(np.uint8) for image in first],
        "20% other dataset mixed in": mixed,
        "inverted": [255 - image for image in first],
        "rotated 90 degrees": [np.rot90(image).copy() for image in first],
        "darkened (x0.5)": [(image.astype(np.float32) * 0.5).astype(np.uint8) for image in first],
        "first class only": first_class,
        "last class only": last_class,
        ("RetinaMNIST fundus (grey)" if chest else "PneumoniaMNIST chest X-rays"): list(other),
        "uniform noise": [rng.integers(0, 256, image.shape, dtype=np.uint8) for image in first],
    }


TARGETS = (0.90, 0.95, 0.97, 0.98, 0.99)


def target_sweep(outcomes_val: list, y_val, outcomes_test: list, y_test, bundle) -> list[dict]:
    """The refer rule chosen on the int8 model's VALIDATION scores for several target accuracies,
    and what it gives on the test split (images the OOD guard refused are left out of both)."""
    from medge.train import refer

    def probabilities(outcomes, labels):
        kept = [(a.frames[0].classification, y) for a, y in zip(outcomes, labels) if not a.not_applicable]
        matrix = np.array([[c.probabilities[name] for name in bundle.classes] for c, _ in kept])
        return matrix, np.array([y for _, y in kept])

    p_val, y_val = probabilities(outcomes_val, y_val)
    p_test, y_test = probabilities(outcomes_test, y_test)
    rows = []
    for target in TARGETS:
        if bundle.task == "binary":
            rule = refer.choose_band(y_val, p_val[:, bundle.classes.index(bundle.positive_class)], bundle.threshold,
                                     target)
        else:
            rule = refer.choose_multiclass(y_val, p_val, target)
        rule = {k: v for k, v in rule.items() if k not in ("validation", "comparison")}
        row = {"target": target, "rule": rule}
        for name, (p, y) in (("val", (p_val, y_val)), ("test", (p_test, y_test))):
            row[name] = refer.evaluate(rule, y, p, list(bundle.classes), bundle.task, bundle.threshold)
        rows.append(row)
    return rows


def null_distribution(classifier, outcomes: list) -> dict:
    """PSI of windows drawn (with replacement) from one population, per window size."""
    rng = np.random.default_rng(0)
    figures = {}
    for size in NULL_SIZES:
        values = [drift_of(classifier, [outcomes[i] for i in rng.choice(len(outcomes), size, replace=True)])["psi"]
                  for _ in range(NULL_RESAMPLES)]
        figures[str(size)] = {"median": float(np.median(values)), "p95": float(np.percentile(values, 95)),
                              "p99": float(np.percentile(values, 99)), "max": float(np.max(values)),
                              "share_over_0.25": float(np.mean(np.asarray(values) > 0.25))}
    return figures


def plot_psi(path: Path, streams: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(streams)
    values = [max(streams[n]["psi"], 1e-3) for n in names]
    colours = ["#5b8fc7" if n.startswith("in-distribution") else "#d14343" for n in names]
    figure, axis = plt.subplots(figsize=(8, 4.2))
    axis.barh(names, values, color=colours)
    axis.axvline(0.25, color="black", linestyle="--", label="alert level 0.25")
    axis.set_xscale("log")
    axis.set_xlim(0.02, max(values) * 1.5)
    axis.set_xlabel(f"PSI against the bundle's validation reference ({STREAM}-input window, log scale)")
    axis.invert_yaxis()
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def figures(run_path: Path, bundle_path: Path) -> dict:
    """Refer and drift figures of one run and its bundle (also called by benchmarks/trust.py)."""
    from medge.edge.bundle import load_bundle
    from medge.edge.classify import Classifier
    from medge.train.run import load_run

    run = load_run(run_path)
    metrics = run.metrics
    bundle = load_bundle(bundle_path)
    classifier = Classifier(bundle, threads=1)
    dataset = run.load_dataset()
    test = dataset.unseal("test") if hasattr(dataset, "unseal") else dataset.splits["test"]
    test_images = [dataset.display_pixels(name) for name in test.names]
    test_outcomes = analyses(classifier, test_images)
    streams = {}
    for index, start in enumerate(range(0, len(test_images) - STREAM + 1, STREAM)):
        streams[f"in-distribution test window {index + 1}"] = drift_of(classifier, test_outcomes[start:start + STREAM])
    chest = "pneumonia" in " ".join(run.classes).lower()
    for name, images in shifted_streams(test_images, np.asarray(test.y), chest).items():
        streams[name] = drift_of(classifier, analyses(classifier, images))
    val = dataset.splits["val"]
    val_outcomes = analyses(classifier, [dataset.display_pixels(name) for name in val.names])
    refer = metrics.get("refer") or {}
    return {
        "run": str(run_path), "classes": run.classes, "test_auc": (metrics.get("test") or {}).get("auc"),
        "temperature": (metrics.get("calibration") or {}).get("temperature"),
        "refer": {"rule": refer.get("rule"), "val_float": refer.get("val"), "test_float": refer.get("test"),
                  "comparison": refer.get("comparison"),
                  "test_int8_device": device_refer(test_outcomes, np.asarray(test.y), run.classes, run.task)},
        "target_sweep_int8": target_sweep(val_outcomes, np.asarray(val.y), test_outcomes, np.asarray(test.y), bundle),
        "reference": bundle.manifest.reference,
        "drift_settings": {"window": STREAM, "psi_alert": 0.25},
        "streams": streams,
        # sampling alone: windows of the validation split itself (the reference's population), and
        # windows of the test split (a moderately shifted population: accuracy 0.98 -> 0.90)
        "null_psi_by_window": {"val": null_distribution(classifier, val_outcomes),
                               "test": null_distribution(classifier, test_outcomes)},
    }


def print_figures(result: dict) -> None:
    refer = result["refer"]
    print(f"{Path(result['run']).name}: refer rule {refer['rule']}")
    for name in ("val_float", "test_float"):
        figures = refer[name] or {}
        print(f"  {name:18s} coverage {figures.get('coverage') or 0:.3f}  accuracy decided "
              f"{figures.get('accuracy_outside') or 0:.4f} {figures.get('accuracy_outside_ci95')}  "
              f"(all images {figures.get('accuracy_all') or 0:.4f})")
    device = refer["test_int8_device"]
    print(f"  test_int8_device   coverage {device['coverage_of_classified'] or 0:.3f} of {device['classified']} "
          f"classified ({device['refused_ood']} refused OOD)  accuracy decided {device['accuracy_outside'] or 0:.4f} "
          f"{device['accuracy_outside_ci95']}")
    for row in result["target_sweep_int8"]:
        val, test = row["val"], row["test"]
        print(f"  target {row['target']:.2f} (int8, chosen on val): val coverage {val['coverage']:.3f} accuracy "
              f"{val['accuracy_outside'] or 0:.4f} | test coverage {test['coverage']:.3f} accuracy "
              f"{test['accuracy_outside'] or 0:.4f} {test['accuracy_outside_ci95']}")
    print(f"  {'stream':34s} {'PSI':>8s} {'OOD':>6s} {'refer':>6s} alert")
    for name, drift in result["streams"].items():
        print(f"  {name:34s} {drift['psi']:8.3f} {drift['ood_rate']:6.1%} {drift['refer_rate']:6.1%} {drift['alert']}")
    for population, by_size in result["null_psi_by_window"].items():
        for size, figures in by_size.items():
            print(f"  {population} windows, {size:>3s} inputs: PSI median {figures['median']:.3f} p95 "
                  f"{figures['p95']:.3f} p99 {figures['p99']:.3f} max {figures['max']:.3f} "
                  f"(share > 0.25: {figures['share_over_0.25']:.1%})")


def main(argv: list[str]) -> int:
    started = time.perf_counter()
    if argv:
        run = Path(argv[0]).resolve()
    else:  # trained once, then reused (delete the folder to train again)
        run = DEFAULT_RUN if (DEFAULT_RUN / "metrics.json").is_file() else trained_run(DEFAULT_RUN)
    train_s = time.perf_counter() - started
    bundle_path = bundle_of(run)
    shutil.copy(run / "refer_coverage.png", RESULTS / "refer_coverage.png")
    result = {"benchmark": "refer_drift",
              "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores shared with other engineers' jobs "
                         "(contended): timings are not the point here",
              "train_seconds": round(train_s, 1), **figures(run, bundle_path)}
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    plot_psi(RESULTS / "refer_drift_psi.png", result["streams"])
    (RESULTS / "refer_drift.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    print_figures(result)
    print(f"saved {RESULTS / 'refer_drift.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
