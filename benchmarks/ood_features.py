"""Which features, which covariance? The sweep behind convert/ood_reference.py's GRID and COMPONENTS.

On one training run's float Keras model, fits each candidate on the training split (plus one
display variant of 2000 training images, as the conversion does) and compares, with the
VALIDATION split as the in-distribution side (the test split plays no part in the choice):

- maha-penultimate: Mahalanobis on the input of the last Dense layer, class means, full
  shared covariance (the guard before this sweep),
- ppca-penultimate-K: the same vector, probabilistic PCA with K components,
- ppca-spatial-K: the last feature map pooled to at most 4 x 4 cells (the guard's features now),
  probabilistic PCA with K components.

The OOD sets are convert/ood_sets.py's, the transformed ones built from validation images; the
exact image checks (flat, noise, smooth, colour) are left out, so this ranks the distances alone.
Prints AUROC per set and the mean, saves benchmarks/results/ood_features.json.

    python benchmarks/ood_features.py RUN [RUN ...]
"""
from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
RESULTS = Path(__file__).resolve().parent / "results" / "ood_features.json"
SETS = ("modality_ct", "modality_mr", "modality_us", "modality_nm", "other_dataset", "rotated", "inverted", "cropped")
COMPONENTS = (16, 32, 64, 128)


def sweep(run_path: Path) -> dict:
    import keras

    from medge.convert.ood_check import auroc
    from medge.convert.ood_reference import display_variants, fit_reference, float_features
    from medge.convert.ood_sets import ood_sets
    from medge.data import PNEUMONIAMNIST, RETINAMNIST
    from medge.edge.ood import OodGuard
    from medge.edge.preprocess import preprocess
    from medge.train.run import load_run

    run = load_run(run_path)
    own = Path((run.metrics.get("data") or {}).get("path") or "").resolve()
    other = RETINAMNIST if own == PNEUMONIAMNIST else PNEUMONIAMNIST
    dataset, spec, model = run.load_dataset(), run.spec, run.load_model()
    train, val = dataset.splits["train"], dataset.splits["val"]

    def inputs(images):
        return np.stack([preprocess(image, spec) for image in images])

    def display(names):
        return [dataset.display_pixels(name) for name in names]

    varied = np.random.default_rng(1).permutation(len(train))[:2000]
    x_train = np.concatenate([train.x, inputs(display_variants(display([train.names[i] for i in varied]), seed=1))])
    y_train = np.concatenate([train.y, train.y[varied]])
    val_display = display(val.names)
    x_val = np.concatenate([val.x, inputs(display_variants(val_display, seed=2))])
    sample = [val_display[i] for i in np.random.default_rng(0).permutation(len(val_display))[:300]]
    sets = {name: inputs(build()) for name, build in ood_sets(sample, other, colour=spec.channels == 3).items()
            if name in SETS}
    penultimate = keras.Model(model.inputs[0], model.layers[-1].input)

    def pen(x):
        return np.concatenate([np.asarray(penultimate(x[i:i + 256], training=False)) for i in range(0, len(x), 256)])

    extractors = {"penultimate": pen, "spatial": lambda x: float_features(model, x)}
    features = {kind: {"train": f(x_train), "val": f(x_val), "val_plain": f(val.x),
                       **{name: f(x) for name, x in sets.items()}} for kind, f in extractors.items()}

    def full_covariance(train_f):
        classes = sorted(set(y_train.tolist()))
        means = np.stack([train_f[y_train == k].mean(0) for k in classes])
        centred = train_f - means[np.searchsorted(classes, y_train)]
        covariance = centred.T @ centred / len(centred)
        covariance += 1e-3 * np.trace(covariance) / len(covariance) * np.eye(len(covariance))
        return OodGuard(means, np.linalg.cholesky(np.linalg.inv(covariance)), np.inf)

    candidates = {"maha-penultimate": ("penultimate", full_covariance)}
    for k in COMPONENTS:
        for kind in ("penultimate", "spatial"):
            candidates[f"ppca-{kind}-{k}"] = (kind, lambda f, k=k: fit_reference(f, f[:10], [], 1, components=k).guard())
    out = {"run": str(run_path), "classes": run.classes,
           "feature_dim": {kind: int(f["train"].shape[1]) for kind, f in features.items()}, "auroc": {}}
    for name, (kind, fit) in candidates.items():
        f = features[kind]
        guard = fit(f["train"])
        in_scores = guard.distances(f["val_plain"])
        out["auroc"][name] = {set_name: auroc(in_scores, guard.distances(f[set_name])) for set_name in sets}
        out["auroc"][name]["mean"] = float(np.mean(list(out["auroc"][name].values())))
    return out


def main(argv: list[str]) -> int:
    warnings.simplefilter("ignore")
    if not argv:
        print(__doc__)
        return 2
    results = [sweep(Path(path)) for path in argv]
    for result in results:
        print(f"\n{result['run']}  (feature dims {result['feature_dim']})")
        columns = [*SETS, "mean"]
        print(f"{'candidate':22s}" + "".join(f"{c.replace('modality_', ''):>9.8s}" for c in columns))
        for name, row in result["auroc"].items():
            print(f"{name:22s}" + "".join(f"{row[c]:9.3f}" for c in columns))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"benchmark": "ood_features", "in_distribution": "validation split",
                                   "runs": results}, indent=2))
    print(f"saved {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
