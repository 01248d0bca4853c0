"""ONNX int8 quantization recipes side by side, over several trained runs (seeds, datasets).

    python benchmarks/onnx_int8.py --run runs/pneu-s0 --run runs/pneu-s1 --run runs/retina-s0 --tag seeds
    python benchmarks/onnx_int8.py --summarize benchmarks/results/onnx_int8-*.json

For every run: the float Keras model's probabilities on the run's test split (the gate's
reference), one float ONNX export ending at the logits (as `medge convert` exports it), then
each recipe of RECIPES quantized with onnxruntime's static quantizer on the same 300 stratified
training images `medge convert` calibrates on, run by onnxruntime and judged by the gate's own
code (medge.convert.gate: AUC drop, sensitivity/specificity change, agreement, paired tests,
default limits). Saves benchmarks/results/onnx_int8[-TAG].json; BENCHMARKS.md "ONNX int8"
summarises it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from medge.convert.gate import GateLimits, check, compare, judge, median_latency_ms  # noqa: E402
from medge.convert.onnx_export import DEFAULT_RECIPE, QuantRecipe, prepare_for_quantization, quantize_onnx  # noqa: E402
from medge.convert.pipeline import ConvertConfig, _calibration, clean_json, evaluation_data  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
RECIPES = [
    QuantRecipe("minmax-qdq-s8s8-perchannel"),  # medge <= 0.x default
    QuantRecipe("minmax-qdq-s8s8-pertensor", per_channel=False),
    QuantRecipe("percentile-qdq-s8s8-perchannel", calibration="percentile"),
    QuantRecipe("entropy-qdq-s8s8-perchannel", calibration="entropy"),
    QuantRecipe("minmax-qdq-s8s8-perchannel-floathead", float_head=True),
    QuantRecipe("minmax-qoperator-u8s8-perchannel", quant_format="qoperator", activations="uint8"),
    QuantRecipe("minmax-qdq-u8u8-perchannel", activations="uint8", weights="uint8"),
    QuantRecipe("minmax-qdq-s8s8-perchannel-7bit", reduce_range=True),
    QuantRecipe("percentile-qdq-s8s8-perchannel-7bit", calibration="percentile", reduce_range=True),
    QuantRecipe("minmax-qdq-u8s8-perchannel", activations="uint8"),
    QuantRecipe("minmax-qdq-u8u8-pertensor", activations="uint8", weights="uint8", per_channel=False),
    QuantRecipe("percentile-qdq-u8u8-perchannel", calibration="percentile", activations="uint8", weights="uint8"),
    QuantRecipe("entropy-qdq-u8u8-perchannel", calibration="entropy", activations="uint8", weights="uint8"),
    QuantRecipe("minmax-qdq-u8u8-perchannel-floathead", activations="uint8", weights="uint8", float_head=True),
]


def apply(activation: str | None, logits: np.ndarray) -> np.ndarray:
    from medge.edge.runtime import to_probabilities

    if activation == "sigmoid":
        logits = 1.0 / (1.0 + np.exp(-logits))
    elif activation == "softmax":
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        logits = shifted / shifted.sum(axis=1, keepdims=True)
    return to_probabilities(logits)


def session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def measure_run(run_path: Path, recipes: list[QuantRecipe], latency_runs: int) -> dict:
    from medge.convert.formats import ExportContext
    from medge.train.run import load_run

    run = load_run(run_path)
    dataset = run.load_dataset()
    config = ConvertConfig(run=run_path)
    x_eval, y_eval, _ = evaluation_data(run, None, lambda: dataset)
    calibration = _calibration(run, config, lambda: dataset)
    model = run.load_model()
    reference = np.concatenate([np.asarray(model(x_eval[i:i + 256], training=False))
                                for i in range(0, len(x_eval), 256)])
    from medge.edge.runtime import to_probabilities

    reference = to_probabilities(reference)
    from medge.convert.head import split_output_activation

    logits_model, activation = split_output_activation(model)
    threshold = run.threshold if run.task == "binary" else None
    limits = GateLimits()
    rows = []
    with tempfile.TemporaryDirectory(prefix="medge-onnx-int8-") as folder:
        context = ExportContext(model=logits_model, workdir=Path(folder), calibration=calibration,
                                output_activation=activation)
        prepared = prepare_for_quantization(context)
        candidates = [("onnx-f32", None, prepared)]
        for recipe in recipes:
            out = Path(folder) / f"{recipe.name}.onnx"
            started = time.perf_counter()
            quantize_onnx(prepared, out, calibration, recipe)
            candidates.append((recipe.name, recipe, out, time.perf_counter() - started))
        for name, recipe, path, *elapsed in candidates:
            runner = session(path)
            input_name = runner.get_inputs()[0].name
            logits = np.concatenate([runner.run(None, {input_name: x_eval[i:i + 64]})[0]
                                     for i in range(0, len(x_eval), 64)])
            probabilities = apply(activation, logits)
            metrics = compare(reference, probabilities, y_eval, run.classes, run.task, threshold,
                              run.positive_class, bootstrap=limits.bootstrap)
            failures = check(metrics, limits)
            tests = judge(metrics, limits)
            single = session(path, threads=1)

            def predict(batch, single=single, input_name=input_name):
                return single.run(None, {input_name: batch})

            rows.append({
                "recipe": name, "settings": recipe.to_dict() if recipe else None,
                "default": recipe == DEFAULT_RECIPE,
                "auc": metrics["auc"], "auc_drop": -metrics["auc_delta"],
                "sensitivity_delta": metrics["sensitivity_delta"], "specificity_delta": metrics["specificity_delta"],
                "agreement": metrics["agreement"], "disagreements": metrics["disagreements"],
                "max_abs_score_diff": metrics["max_abs_score_diff"],
                "mean_abs_score_diff": metrics["mean_abs_score_diff"],
                "size_bytes": path.stat().st_size,
                "latency_ms_t1": median_latency_ms(predict, x_eval[0], runs=latency_runs),
                "quantize_s": elapsed[0] if elapsed else None,
                "verdicts": {key: value["verdict"] for key, value in tests.items() if isinstance(value, dict)},
                "passed": not failures, "failures": failures,
            })
    summary = {"run": str(run_path), "data": run.metrics["data"]["path"], "task": run.task,
               "classes": run.classes, "seed": run.metrics.get("config", {}).get("seed", run.metrics["data"].get("seed")),
               "n_images": int(len(y_eval)), "reference_auc": rows[0]["auc"] + rows[0]["auc_drop"], "rows": rows}
    print_rows(summary)
    return summary


def print_rows(summary: dict) -> None:
    print(f"\n{summary['run']}  ({Path(summary['data']).name}, seed {summary['seed']}, {summary['n_images']} test "
          f"images, float AUC {summary['reference_auc']:.4f})")
    header = (f"{'recipe':<40}{'dAUC':>8}{'dsens':>8}{'dspec':>8}{'agree':>8}{'max|d|':>8}{'KiB':>7}{'ms t1':>7}"
              "  gate")
    print(header)
    for row in summary["rows"]:
        print(f"{row['recipe']:<40}{-row['auc_drop']:>+8.4f}{row['sensitivity_delta']:>+8.4f}"
              f"{row['specificity_delta']:>+8.4f}{row['agreement']:>8.2%}{row['max_abs_score_diff']:>8.4f}"
              f"{row['size_bytes'] / 1024:>7.1f}{row['latency_ms_t1']:>7.3f}  {'pass' if row['passed'] else 'FAIL'}")


def summarize(paths: list[Path]) -> dict:
    """Per recipe, over every run in the given result files: gate passes, worst and mean figures."""
    runs = [run for path in paths for run in json.loads(path.read_text())["runs"]]
    recipes = {}
    for run in runs:
        for row in run["rows"]:
            recipes.setdefault(row["recipe"], []).append(row)
    summary = {}
    for name, rows in recipes.items():
        summary[name] = {
            "runs": len(rows), "passed": sum(row["passed"] for row in rows),
            "worst_auc_drop": max(row["auc_drop"] for row in rows),
            "worst_agreement": min(row["agreement"] for row in rows),
            "mean_agreement": float(np.mean([row["agreement"] for row in rows])),
            "worst_sensitivity_delta": min(row["sensitivity_delta"] for row in rows),
            "worst_specificity_delta": min(row["specificity_delta"] for row in rows),
            "worst_max_abs_score_diff": max(row["max_abs_score_diff"] for row in rows),
            "mean_size_kib": float(np.mean([row["size_bytes"] / 1024 for row in rows])),
            "mean_latency_ms_t1": float(np.mean([row["latency_ms_t1"] for row in rows])),
        }
    print(f"\n{len(runs)} runs: " + ", ".join(f"{Path(run['run']).name}" for run in runs))
    print(f"{'recipe':<40}{'pass':>6}{'worst dAUC':>11}{'worst agr':>10}{'mean agr':>9}{'worst dsens':>12}"
          f"{'worst dspec':>12}{'worst max|d|':>13}")
    for name, row in summary.items():
        print(f"{name:<40}{row['passed']:>3}/{row['runs']:<2}{-row['worst_auc_drop']:>+11.4f}"
              f"{row['worst_agreement']:>10.2%}{row['mean_agreement']:>9.2%}{row['worst_sensitivity_delta']:>+12.4f}"
              f"{row['worst_specificity_delta']:>+12.4f}{row['worst_max_abs_score_diff']:>13.4f}")
    return {"benchmark": "onnx_int8-summary", "sources": [path.name for path in paths],
            "runs": [run["run"] for run in runs], "recipes": summary}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, action="append", help="training run (repeatable)")
    parser.add_argument("--summarize", type=Path, nargs="+", metavar="RESULT",
                        help="instead: summarise these result files per recipe (-> onnx_int8-summary.json)")
    parser.add_argument("--recipes", help="comma-separated recipe names [default: all]")
    parser.add_argument("--tag", default="")
    parser.add_argument("--latency-runs", type=int, default=100)
    args = parser.parse_args(argv)
    if args.summarize:
        path = RESULTS / "onnx_int8-summary.json"
        path.write_text(json.dumps(clean_json(summarize(args.summarize)), indent=2) + "\n")
        print(f"saved {path}", file=sys.stderr)
        return 0
    if not args.run:
        parser.error("--run RUN (at least one) or --summarize RESULT...")
    recipes = RECIPES
    if args.recipes:
        wanted = set(args.recipes.split(","))
        recipes = [recipe for recipe in RECIPES if recipe.name in wanted]
    runs = [measure_run(run, recipes, args.latency_runs) for run in args.run]
    result = {"benchmark": "onnx_int8", "limits": GateLimits().to_dict(), "default_recipe": DEFAULT_RECIPE.name,
              "runs": runs, "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                         "python": platform.python_version(), "cpu_flags": cpu_flags()}}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"onnx_int8{'-' + args.tag if args.tag else ''}.json"
    path.write_text(json.dumps(clean_json(result), indent=2) + "\n")
    print(f"saved {path}", file=sys.stderr)
    return 0


def cpu_flags() -> list[str]:
    """The int8 dot-product extensions: without VNNI, onnxruntime's u8s8 kernels can saturate."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return []
    return sorted({flag for flag in flags.split() if flag in ("avx2", "avx512f", "avx512_vnni", "avx_vnni",
                                                               "amx_int8")})


if __name__ == "__main__":
    raise SystemExit(main())
