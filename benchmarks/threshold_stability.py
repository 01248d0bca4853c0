"""How much does the binary operating threshold move with the validation set it was chosen on?

For each training run given: its calibrated validation scores (the run's own temperature) are
redrawn `--draws` times (class-stratified bootstrap: "another validation set of this size from
the same population"); on each draw both rules choose a threshold:
  youden            maximise sensitivity + specificity - 1 on that set,
  youden-bootstrap  the median of the Youden thresholds of `--inner` resamples of that set
                    (medge's default, train/thresholds.py).
Printed and saved (benchmarks/results/threshold_stability.json): each rule's median, 95% range
and interquartile range over the draws, and the thresholds each run chose on its own
validation set (runs of different seeds: the spread over seeds).

    python3 benchmarks/threshold_stability.py runs/pneumonia-seed0 runs/pneumonia-seed1 ...
"""
from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np

from medge.train.calibration import ScoreModel
from medge.train.run import load_run
from medge.train.thresholds import _resamples, choose_threshold

RESULTS = Path(__file__).resolve().parent / "results" / "threshold_stability.json"


def spread(values) -> dict:
    values = np.asarray(values, dtype=np.float64)
    return {"median": float(np.median(values)), "p2.5": float(np.percentile(values, 2.5)),
            "p97.5": float(np.percentile(values, 97.5)), "iqr": float(np.subtract(*np.percentile(values, [75, 25]))),
            "std": float(values.std())}


def measure(run_path: Path, draws: int, inner: int, seed: int) -> dict:
    run = load_run(run_path)
    if run.task != "binary":
        raise SystemExit(f"{run_path}: not a binary run")
    val = run.load_dataset().splits["val"]
    scores = ScoreModel(run.load_model()).scores(val.x).probabilities(run.temperature)[:, 1]
    y = val.y.astype(int)
    plain, robust = [], []
    for number, index in enumerate(_resamples(y, draws, seed)):
        plain.append(choose_threshold("youden", y[index], scores[index]))
        robust.append(choose_threshold("youden-bootstrap", y[index], scores[index], bootstrap=inner, seed=number))
    return {"run": str(run_path), "temperature": run.temperature, "val_images": int(len(y)),
            "own_threshold": {"youden": choose_threshold("youden", y, scores),
                              "youden-bootstrap": choose_threshold("youden-bootstrap", y, scores, bootstrap=inner)},
            "recorded": {"threshold": run.threshold, "policy": run.metrics.get("threshold_policy"),
                         "threshold_ci95": run.metrics.get("threshold_ci95")},
            "over_redrawn_validation_sets": {"youden": spread(plain), "youden-bootstrap": spread(robust)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--inner", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    results = [measure(run, args.draws, args.inner, args.seed) for run in args.runs]
    for result in results:
        print(f"{result['run']} (T = {result['temperature']:.3f}, {result['val_images']} validation images)")
        for rule, figures in result["over_redrawn_validation_sets"].items():
            print(f"  {rule:17s} own {result['own_threshold'][rule]:.3f}; over {args.draws} redrawn validation sets: "
                  f"median {figures['median']:.3f}, 95% range {figures['p2.5']:.3f}-{figures['p97.5']:.3f}, "
                  f"IQR {figures['iqr']:.3f}")
    if len(results) > 1:
        for rule in ("youden", "youden-bootstrap"):
            own = [r["own_threshold"][rule] for r in results]
            print(f"over the {len(results)} runs (seeds), {rule}: {', '.join(f'{t:.3f}' for t in own)} "
                  f"(range {max(own) - min(own):.3f})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": f"{platform.machine()}, 2 shared CPU cores (contended)",
                                    "draws": args.draws, "inner": args.inner, "runs": results}, indent=2))
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
