"""Every export format side by side on the trained PneumoniaMNIST model: accuracy, size, latency.

    python benchmarks/convert_formats.py                   # the TRAIN benchmark's default run, else trains one
    python benchmarks/convert_formats.py --run runs/cnn --tag mine

Converts the run to tflite-f32/f16/dynamic/int8 and onnx-f32/int8 with `medge convert`'s own
pipeline (so every figure is measured on the edge runtime, ai-edge-litert / onnxruntime, against
the float Keras model on the official test split), prints the table and saves
benchmarks/results/convert_formats[-TAG].json. Targets (issue 3): int8 TFLite AUC drop <= 0.002,
decision agreement >= 99%, int8 file <= 30% of the float32 file, int8 single-image latency on
ai-edge-litert no worse than float32.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from medge.convert.formats import FORMATS  # noqa: E402
from medge.convert.gate import GateFailed, GateLimits  # noqa: E402
from medge.convert.pipeline import ConvertConfig, clean_json, convert  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TARGETS = {"int8_auc_drop": 0.002, "int8_agreement": 0.99, "int8_size_ratio": 0.30, "int8_latency_ratio": 1.0}


def find_run() -> Path | None:
    """The run of the TRAIN benchmark with the default configuration (no overrides), if still on disk."""
    # The untagged result first: it is the latest run of the defaults.
    candidates = [RESULTS / "train_pneumoniamnist.json"] + sorted(RESULTS.glob("train_pneumoniamnist-*.json"))
    for result in filter(Path.exists, candidates):
        data = json.loads(result.read_text())
        run = Path(data.get("run", ""))
        if not data.get("overrides") and (run / "model.keras").is_file():
            return run
    return None


def train_default(out: Path) -> Path:
    from medge.train.config import TrainConfig
    from medge.train.pipeline import train

    print(f"no default-config run found: training one into {out} (several minutes)", file=sys.stderr)
    return train(TrainConfig(out=out, name="pneumoniamnist"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="training run [default: the TRAIN benchmark's default run]")
    parser.add_argument("--tag", default="", help="suffix of the results file")
    parser.add_argument("--latency-runs", type=int, default=300)
    parser.add_argument("--calibration-samples", type=int, default=300)
    args = parser.parse_args(argv)
    run = args.run or find_run() or train_default(RESULTS / "run-convert")

    with tempfile.TemporaryDirectory() as folder:
        config = ConvertConfig(run=run, out=Path(folder) / "bundle", formats=",".join(FORMATS),
                               calibration_samples=args.calibration_samples, latency_runs=args.latency_runs,
                               limits=GateLimits())
        try:
            report = convert(config, log=lambda message: print(message, file=sys.stderr)).report
        except GateFailed as failure:  # the figures are what we want; record which formats failed
            report = failure.result.report
    keras_size = (Path(run) / "model.keras").stat().st_size
    rows = side_by_side(report, keras_size)
    meets = check_targets(rows)
    print_table(rows, report)
    for name, ok in meets.items():
        print(f"  target {name}: {'met' if ok else 'NOT met'}")
    result = {
        "benchmark": "convert_formats",
        "run": str(run),
        "n_images": report["n_images"],
        "data": report["data"],
        "threshold": report["threshold"],
        "limits": report["limits"],
        "rows": rows,
        "targets": TARGETS,
        "meets": meets,
        "gate_failures": report["failures"],
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"convert_formats{'-' + args.tag if args.tag else ''}.json"
    path.write_text(json.dumps(clean_json(result), indent=2) + "\n")
    print(f"saved {path}")
    return 0


def side_by_side(report: dict, keras_size: int) -> list[dict]:
    reference = report["reference"]
    records = {record["format"]: record for record in report["artifacts"]}
    rows = [{"format": "keras-f32", "runtime": "tensorflow", "auc": reference["auc"], "auc_drop": 0.0,
             "agreement": 1.0, "accuracy": reference["accuracy"], "sensitivity": reference["sensitivity"],
             "specificity": reference["specificity"], "max_abs_score_diff": 0.0, "size_bytes": keras_size,
             "size_ratio": None, "latency_ms_t1": None, "latency_ms_t2": None,
             "latency_ms_keras": reference["latency_ms"]["default_threads"], "latency_ratio_t1": None,
             "latency_ratio_t2": None, "passed": True}]
    for name, record in records.items():
        float_name = "tflite-f32" if name.startswith("tflite") else "onnx-f32"
        base = records.get(float_name, record)
        rows.append({
            "format": name, "runtime": record["runtime"], "auc": record["auc"], "auc_drop": -record["auc_delta"],
            "agreement": record["agreement"], "accuracy": record["accuracy"], "sensitivity": record["sensitivity"],
            "specificity": record["specificity"], "max_abs_score_diff": record["max_abs_score_diff"],
            "size_bytes": record["size_bytes"], "size_ratio": record["size_bytes"] / base["size_bytes"],
            "latency_ms_t1": record["latency_ms"]["threads_1"], "latency_ms_t2": record["latency_ms"]["threads_2"],
            "latency_ratio_t1": record["latency_ms"]["threads_1"] / base["latency_ms"]["threads_1"],
            "latency_ratio_t2": record["latency_ms"]["threads_2"] / base["latency_ms"]["threads_2"],
            "conversion_s": record["conversion_s"], "passed": record["passed"],
            # The gate's paired tests: each change's p-value and verdict (pass / noise / fail).
            "gate_tests": {key: {"change": test["change"], "p_value": test.get("p_value"), "verdict": test["verdict"]}
                           for key, test in record.get("tests", {}).items() if isinstance(test, dict)},
        })
    return rows


def check_targets(rows: list[dict]) -> dict:
    int8 = next(row for row in rows if row["format"] == "tflite-int8")
    return {
        "int8_auc_drop": int8["auc_drop"] <= TARGETS["int8_auc_drop"],
        "int8_agreement": int8["agreement"] >= TARGETS["int8_agreement"],
        "int8_size_ratio": int8["size_ratio"] <= TARGETS["int8_size_ratio"],
        "int8_latency_ratio": int8["latency_ratio_t1"] <= TARGETS["int8_latency_ratio"]
        and int8["latency_ratio_t2"] <= TARGETS["int8_latency_ratio"],
    }


def print_table(rows: list[dict], report: dict) -> None:
    def f(value, spec):
        return "-" if value is None else format(value, spec)

    print(f"\n{report['n_images']} test images ({report['data']}), threshold {report['threshold']:.4f}; "
          "ratios vs the float32 file of the same runtime")
    header = (f"{'format':<15}{'runtime':<12}{'AUC':>8}{'drop':>9}{'agree':>9}{'sens':>8}{'spec':>8}{'max|d|':>8}"
              f"{'KiB':>9}{'size x':>8}{'ms t1':>8}{'ms t2':>8}{'t1 x':>7}{'t2 x':>7}  gate")
    print(header)
    print("-" * len(header))
    for row in rows:
        latency_t1 = row["latency_ms_t1"] if row["latency_ms_t1"] is not None else row.get("latency_ms_keras")
        print(f"{row['format']:<15}{row['runtime']:<12}{row['auc']:>8.4f}{row['auc_drop']:>+9.4f}"
              f"{row['agreement']:>9.2%}{row['sensitivity']:>8.4f}{row['specificity']:>8.4f}"
              f"{row['max_abs_score_diff']:>8.4f}{row['size_bytes'] / 1024:>9.1f}{f(row['size_ratio'], '.2f'):>8}"
              f"{f(latency_t1, '.3f'):>8}{f(row['latency_ms_t2'], '.3f'):>8}{f(row['latency_ratio_t1'], '.2f'):>7}"
              f"{f(row['latency_ratio_t2'], '.2f'):>7}  {'pass' if row['passed'] else 'FAIL'}")


if __name__ == "__main__":
    raise SystemExit(main())
