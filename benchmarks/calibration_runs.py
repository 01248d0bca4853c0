"""Calibration of finished training runs, redone with the current medge.train code (no retraining).

Calibration happens after training and on validation only, so a run's saved model can be
re-calibrated exactly as `medge train` would now: class-weight prior correction (kept when it
lowers the validation NLL without raising its ECE), temperature, threshold. Prints and saves
(benchmarks/results/calibration_runs.json) the validation and test ECE/Brier before and after,
the temperature, the threshold with its bootstrap interval and the test AUC/accuracy.

    python3 benchmarks/calibration_runs.py runs/pneumoniamnist runs/retinamnist
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from medge.train.config import TrainConfig
from medge.train.evaluate import evaluate_probabilities
from medge.train.recipe import class_weight_vector
from medge.train.run import load_run
from medge.train.selection import choose_on_validation, final_figures

RESULTS = Path(__file__).resolve().parent / "results" / "calibration_runs.json"


def measure(path: Path) -> dict:
    run = load_run(path)
    dataset = run.load_dataset()
    saved = run.metrics["training"]["config"]
    config = TrainConfig(threshold_policy=saved.get("threshold_policy", "youden-bootstrap"),
                         bootstrap=saved.get("bootstrap", 1000), seed=saved.get("seed", 0))
    weights = class_weight_vector(dataset.splits["train"].y, len(run.classes), saved.get("class_weight", "none"))
    model = run.load_model()  # changed in memory only: the run folder is left as it is
    chosen = choose_on_validation(model, dataset.splits["val"], run.task, config, class_weights=weights)
    test = dataset.splits["test"]
    scores = chosen.scores(test.x)
    figures = final_figures(chosen, test.y, scores, "test")
    metrics = evaluate_probabilities(test.y, scores.probabilities(chosen.temperature), run.classes, chosen.threshold, 0)
    return {"run": str(path), "calibration": figures, "threshold": chosen.threshold,
            "threshold_ci95": chosen.threshold_ci95,
            "test": {key: metrics.get(key) for key in ("auc", "accuracy", "balanced_accuracy", "ece", "brier")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    results = [measure(run) for run in args.runs]
    for r in results:
        c, v = r["calibration"], r["calibration"]["validation"]
        applied = (c.get("prior_correction") or {}).get("applied")
        print(f"{r['run']}: T {c['temperature']:.3f}, prior correction {'applied' if applied else 'not applied'}; "
              f"val ECE {v['ece_before']:.3f} -> {v['ece_after']:.3f}; test ECE {c['ece_before']:.3f} -> "
              f"{c['ece_after']:.3f}, Brier {c['brier_before']:.3f} -> {c['brier_after']:.3f}; test AUC "
              f"{r['test']['auc']:.4f}, accuracy {r['test']['accuracy']:.4f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": "2 shared CPU cores (contended)", "runs": results}, indent=2))
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
