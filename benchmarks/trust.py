"""Trust benchmark, OOD part: does the device know when not to answer?

For each training run given (default: a PneumoniaMNIST and a RetinaMNIST run), convert it to a
tflite-int8 bundle through `medge convert` with the OOD guard in mode warn (figures recorded,
never failing), then report from the conversion's own OOD check: AUROC per OOD set, acceptance
of the test split and of the bundled full-size chest X-rays, int8/float rank agreement; and
measure, side by side in one process, the device's classify() latency with the guard on and off
(the cost ratio). Prints a table, saves benchmarks/results/trust.json.

    python benchmarks/trust.py RUN_PNEUMONIA RUN_RETINA
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
RESULTS = Path(__file__).resolve().parent / "results" / "trust.json"
# The accuracy gate is not what this measures: limits that only catch a broken conversion.
LENIENT = dict(max_auc_drop=0.2, max_sensitivity_drop=0.5, max_specificity_drop=0.5, min_agreement=0.5)


def cost_ratio(bundle: Path, images: list[np.ndarray], repeats: int = 3) -> dict:
    """Median classify() time with the guard on vs off, interleaved so contention hits both alike."""
    from medge.edge.bundle import load_bundle
    from medge.edge.classify import Classifier

    loaded = load_bundle(bundle)
    on, off = Classifier(loaded, threads=1), Classifier(loaded, threads=1, ood_mode="off")
    times = {"on": [], "off": []}
    for _ in range(repeats):
        for image in images:
            for name, classifier in (("off", off), ("on", on)):
                started = time.perf_counter()
                classifier.classify(image)
                times[name].append(time.perf_counter() - started)
    median = {name: float(np.median(values)) * 1000 for name, values in times.items()}
    return {"classify_ms_guard_off": median["off"], "classify_ms_guard_on": median["on"],
            "ratio": median["on"] / median["off"], "images": len(images), "repeats": repeats}


def refer_drift_figures(run_path: Path, bundle: Path) -> dict:
    """benchmarks/refer_drift.py's figures (refer band coverage/accuracy, drift PSI per stream)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from refer_drift import figures

    return figures(run_path, bundle)


def convert_one(run_path: Path, out: Path, fmt: str) -> tuple[dict, Path | None, list[str]]:
    """(conversion report, bundle or None when another check of the gate rejected it, those failures)."""
    from medge.convert.gate import GateFailed, GateLimits
    from medge.convert.ood_check import OodLimits
    from medge.convert.pipeline import ConvertConfig, convert

    config = ConvertConfig(run=run_path, out=out, formats=fmt, latency_runs=3, heatmap_samples=0, progress=False,
                           limits=GateLimits(**LENIENT), ood=OodLimits(mode="warn"))
    try:
        result = convert(config, log=lambda message: None)
    except GateFailed as failure:  # e.g. the reduced-JPEG decode check: the OOD figures are in the report
        return failure.result.report, None, failure.result.failures
    return result.report, result.path, []


def bench(run_path: Path, workdir: Path) -> dict:
    from medge.data import chest_xray_sample_files
    from medge.edge.preprocess import decode_image
    from medge.train.run import load_run

    reports, bundles, other_failures = {}, {}, {}
    for fmt in ("tflite-int8", "onnx-int8"):
        reports[fmt], bundles[fmt], other_failures[fmt] = convert_one(run_path, workdir / f"{run_path.name}-{fmt}", fmt)
    ood = reports["tflite-int8"]["ood"]  # the device default's reference and figures
    run = load_run(run_path)
    dataset = run.load_dataset()
    test = dataset.splits["test"]
    images = [dataset.display_pixels(name) for name in test.names[:100]]
    full_size = [decode_image(path).pixels for path in chest_xray_sample_files()]
    costs = {}
    for fmt, bundle in bundles.items():
        if bundle is not None:
            costs[fmt] = {"28px": cost_ratio(bundle, images), "full_size_xray": cost_ratio(bundle, full_size, repeats=10)}
    return {"run": str(run_path), "classes": run.classes, "data": (run.metrics.get("data") or {}).get("path"),
            "test_auc": (run.metrics.get("test") or {}).get("auc"),
            "threshold": ood["threshold"], "auroc": ood["auroc"], "n_images": ood["n_images"],
            "ood_let_through": ood["acceptance"], "validation_acceptance": ood["validation_acceptance"],
            "test_acceptance": ood["test_acceptance"], "n_test": ood["n_test"],
            "full_size_acceptance": ood.get("full_size_acceptance"), "full_size_scores": ood.get("full_size_scores"),
            "rank_agreement": {fmt: r["ood"]["rank_agreement"].get(fmt) for fmt, r in reports.items()},
            "auroc_onnx": reports["onnx-int8"]["ood"]["auroc"], "cost": costs,
            "gate_failures_at_default_floors": ood["failures"], "other_gate_failures": other_failures}


def main(argv: list[str]) -> int:
    runs = [Path(a) for a in argv] or [Path("runs/pneumonia"), Path("runs/retina")]
    with tempfile.TemporaryDirectory(prefix="medge-trust-") as workdir:
        results = [bench(run, Path(workdir)) for run in runs]
    sets = sorted({name for r in results for name in r["auroc"]})
    print(f"{'set':18}" + "".join(f"{Path(r['run']).name:>16}" for r in results))
    for name in sets:
        print(f"{'AUROC ' + name:18}"[:18] + "".join(f"{r['auroc'].get(name, float('nan')):16.4f}" for r in results))
    rows = [("test acceptance", lambda r: r["test_acceptance"]),
            ("full-size kept", lambda r: r["full_size_acceptance"] if r["full_size_acceptance"] is not None else np.nan),
            ("rank int8 tflite", lambda r: r["rank_agreement"].get("tflite-int8", np.nan)),
            ("rank int8 onnx", lambda r: r["rank_agreement"].get("onnx-int8", np.nan)),
            ("cost ratio 28px", lambda r: r["cost"]["tflite-int8"]["28px"]["ratio"]),
            ("cost ratio full", lambda r: r["cost"]["tflite-int8"]["full_size_xray"]["ratio"])]
    for label, get in rows:
        print(f"{label:18}" + "".join(f"{get(r):16.4f}" for r in results))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    machine = {"cpus": os.cpu_count(), "note": "2 shared cores, contended by other engineers' jobs"}
    RESULTS.write_text(json.dumps({"machine": machine, "ood": results}, indent=2) + "\n")
    print(f"saved {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
