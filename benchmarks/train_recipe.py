"""Training-recipe ablations on VALIDATION only (issue 10): which default does what.

Each variant is the `medge train` default recipe with some settings changed (`--set KEY=VALUE`,
one variant per `--variant NAME:KEY=VALUE,KEY=VALUE`). The script trains with the real training
loop (`medge.train.pipeline.fit_member`) and scores the model on the validation split only: the
test split is never predicted here, so nothing chosen from this table has seen it. It also scores
horizontal-flip test-time augmentation (mean of the image and its mirror) on the same model.

    python benchmarks/train_recipe.py data/retinamnist_28.npz --variant default: \
        --variant no-smoothing:label_smoothing=0 --threads 1 --tag retina

Prints one line per variant and saves benchmarks/results/train_recipe-<tag>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def parse_value(text: str):
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    if text.lower() in ("none", "null"):
        return None
    if "+" in text:  # tuples: augment=rotate+zoom, filters=32+64
        return tuple(parse_value(part) for part in text.split("+"))
    return text


def parse_variant(text: str) -> tuple[str, dict]:
    name, _, settings = text.partition(":")
    changes = {}
    for item in filter(None, settings.split(",")):
        key, _, value = item.partition("=")
        value = value if key in ("class_weight", "schedule", "arch") else parse_value(value)
        if key in ("augment", "filters") and not isinstance(value, tuple):
            value = () if value in (None, "none") else (value,)
        changes[key] = value
    return name, changes


def roc_auc_score(y, scores):
    """Binary AUC (Mann-Whitney, ties half), or macro one-vs-rest for (N, K) probabilities."""
    import numpy as np

    from medge.train.evaluate import roc_auc

    scores = np.asarray(scores)
    if scores.ndim == 2:
        return float(np.mean([roc_auc_score((y == k).astype(int), scores[:, k]) for k in range(scores.shape[1])
                              if 0 < np.sum(y == k) < len(y)]))
    return roc_auc(y, scores)


def val_scores(y, probabilities):
    import numpy as np

    if probabilities.shape[1] == 1:
        scores = probabilities[:, 0]
        return {"auc": float(roc_auc_score(y, scores)), "accuracy@0.5": float(np.mean((scores >= 0.5) == y))}
    auc = roc_auc_score(y, probabilities)
    predicted = probabilities.argmax(1)
    accuracy = float(np.mean(predicted == y))
    recalls = [float(np.mean(predicted[y == k] == k)) for k in np.unique(y)]
    grades = np.arange(probabilities.shape[1])
    return {"auc": auc, "accuracy": accuracy, "balanced_accuracy": float(np.mean(recalls)),
            "mae_grade": float(np.mean(np.abs(predicted - y))),
            "expected_grade_mae": float(np.mean(np.abs(probabilities @ grades - y)))}


def run_variant(data: str, name: str, changes: dict, seed: int, log) -> dict:
    import numpy as np

    from medge.edge.preprocess import PreprocessSpec
    from medge.train.config import TrainConfig
    from medge.train.data import load_dataset
    from medge.train.pipeline import fit_member, limit_split, predict
    from medge.train.recipe import resolve, resolve_channels

    config = resolve_channels(TrainConfig(data=data, verbose=False, seed=seed, **changes))
    spec = PreprocessSpec(height=config.input_size, width=config.input_size, channels=config.input_channels,
                          interpolation=config.interpolation, normalization=config.normalization)
    dataset = load_dataset(config.data, spec=spec, seed=seed)
    dataset.splits.pop("test", None)  # validation only: the test split is dropped before training
    dataset.limit_train(limit_split(dataset.splits["train"], config.limit, seed))
    config = resolve(config, dataset)
    started, cpu_started = time.perf_counter(), time.process_time()
    model, history = fit_member(config, dataset, dataset.splits["train"], seed, log)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    val = dataset.splits["val"]
    plain = predict(model, val.x)
    flipped = predict(model, val.x[:, :, ::-1, :].copy())
    row = {"variant": name, "changes": {k: list(v) if isinstance(v, tuple) else v for k, v in changes.items()},
           "seed": seed, "arch": config.arch, "channels": config.input_channels, "epochs_max": config.epochs,
           "epochs_run": len(history.get("loss", [])), "patience": config.patience,
           "best_epoch": int(np.argmax(history.get("val_auc_smoothed") or history["val_auc"])) + 1,
           "seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1), "params": int(model.count_params()),
           "val": val_scores(val.y, plain), "val_flip_tta": val_scores(val.y, (plain + flipped) / 2)}
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("--variant", action="append", default=[], help="NAME:KEY=VALUE,KEY=VALUE (empty = defaults)")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    parser.add_argument("--threads", type=int, default=0, help="TensorFlow intra-op threads (0 = all cores)")
    parser.add_argument("--tag", default="recipe")
    args = parser.parse_args(argv)
    if args.threads:
        os.environ["TF_NUM_INTRAOP_THREADS"] = str(args.threads)
        os.environ["TF_NUM_INTEROP_THREADS"] = "1"
    import tensorflow as tf

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"train_recipe-{args.tag}.json"
    rows = json.loads(out.read_text())["rows"] if out.exists() else []
    for text in args.variant or ["default:"]:
        name, changes = parse_variant(text)
        for seed in (int(s) for s in args.seeds.split(",")):
            row = run_variant(args.data, name, changes, seed, log=lambda *_: None)
            rows.append(row)
            v, t = row["val"], row["val_flip_tta"]
            extra = f" acc {v['accuracy']:.3f} bal {v['balanced_accuracy']:.3f}" if "accuracy" in v else f" acc@0.5 {v['accuracy@0.5']:.3f}"
            print(f"{Path(args.data).stem} {name} seed {seed}: val AUC {v['auc']:.4f}{extra} | flip-TTA AUC {t['auc']:.4f} "
                  f"| epochs {row['epochs_run']}/{row['epochs_max']} best {row['best_epoch']} | {row['seconds']:.0f} s "
                  f"(cpu {row['cpu_seconds']:.0f} s)", flush=True)
            out.write_text(json.dumps({"data": args.data, "machine": "2 shared CPU cores (contended)",
                                       "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
                                       "rows": rows}, indent=2))
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
