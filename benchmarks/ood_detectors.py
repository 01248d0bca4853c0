"""Which OOD detector family? The first measurement behind convert/ood_reference.py's choice
(feature distances over the energy score and image statistics); benchmarks/ood_features.py then
chose which features and which covariance.

On one training run's float Keras model (so the detectors are compared, not the quantization),
scores the run's test split against the OOD sets of convert/ood_sets.py with:

- maha_feat: Mahalanobis distance of the penultimate features (input of the last Dense layer)
  to the nearest class mean, shared covariance, fitted on the training split (the first guard),
- energy: -logsumexp of the logits (Liu et al. 2020),
- pix_maha / pix_resid: Mahalanobis in a 32-component PCA of the model input, and the PCA residual,
- image statistics: flat (-log std), saturation (share of pixels at 0/1), hf (neighbouring-pixel
  difference over spread), colour (colourfulness for a grey model, its negative for a colour one).

AUROC per set, and acceptance of the test split and of the bundled full-size chest X-rays at a
threshold keeping 98% of the validation split. Prints a table, saves
benchmarks/results/ood_detectors.json.

    python benchmarks/ood_detectors.py RUN
"""
from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
RESULTS = Path(__file__).resolve().parent / "results" / "ood_detectors.json"


def main(argv: list[str]) -> int:
    import keras

    from medge.convert.ood_check import auroc
    from medge.convert.ood_sets import ood_sets
    from medge.data import PNEUMONIAMNIST, RETINAMNIST, chest_xray_sample_files
    from medge.edge.ood import colourfulness
    from medge.edge.preprocess import decode_image, preprocess
    from medge.train.run import load_run

    warnings.simplefilter("ignore")
    run = load_run(argv[0])
    own = Path((run.metrics.get("data") or {}).get("path") or "").resolve()
    other = RETINAMNIST if own == PNEUMONIAMNIST else PNEUMONIAMNIST
    dataset, spec, model = run.load_dataset(), run.spec, run.load_model()
    last = model.layers[-1]
    extractor = keras.Model(model.inputs[0], last.input)
    weights, bias = last.get_weights()
    train, val, test = dataset.splits["train"], dataset.splits["val"], dataset.splits["test"]
    test_display = [dataset.display_pixels(name) for name in test.names]
    sets = {name: build() for name, build in ood_sets(test_display[:300], other, colour=spec.channels == 3).items()}
    sets["fullsize_xray"] = [decode_image(path).pixels for path in chest_xray_sample_files()]

    def features(x):
        return np.concatenate([np.asarray(extractor(x[i:i + 256], training=False)) for i in range(0, len(x), 256)])

    f_train = features(train.x)
    n_classes = len(run.classes)
    means = np.stack([f_train[train.y == k].mean(0) for k in range(n_classes)])
    centred = f_train - means[train.y]
    covariance = centred.T @ centred / len(centred)
    covariance += 1e-3 * np.trace(covariance) / len(covariance) * np.eye(len(covariance))
    precision = np.linalg.inv(covariance)
    flat_train = train.x.reshape(len(train.x), -1)
    mean_pixels = flat_train.mean(0)
    _, singular, components = np.linalg.svd(flat_train - mean_pixels, full_matrices=False)
    components, variances = components[:32], singular[:32] ** 2 / len(flat_train)
    residual_scale = (((flat_train - mean_pixels) - (flat_train - mean_pixels) @ components.T @ components) ** 2
                      ).sum(1).mean()

    def detectors(x, display):
        f = features(x)
        d = f[:, None, :] - means[None]
        logits = f @ weights + bias
        if logits.shape[1] == 1:
            logits = np.concatenate([np.zeros_like(logits), logits], 1)
        top = logits.max(1, keepdims=True)
        z = x.reshape(len(x), -1) - mean_pixels
        projected = z @ components.T
        x4 = x.reshape(len(x), x.shape[1], x.shape[2], -1)
        std = x4.std((1, 2, 3))
        hf = (np.abs(np.diff(x4, axis=2)).mean((1, 2, 3)) + np.abs(np.diff(x4, axis=1)).mean((1, 2, 3))) / (std + 1e-3)
        colour = np.array([colourfulness(image) for image in display])
        return {"maha_feat": np.einsum("nkd,de,nke->nk", d, precision, d).min(1),
                "energy": -(np.log(np.exp(logits - top).sum(1)) + top[:, 0]),
                "pix_maha": (projected ** 2 / variances).sum(1),
                "pix_resid": ((z - projected @ components) ** 2).sum(1) / residual_scale,
                "flat": -np.log(std + 1e-3), "saturation": ((x4 <= 0.02) | (x4 >= 0.98)).mean((1, 2, 3)), "hf": hf,
                "colour": colour if spec.channels == 1 else -colour}

    def prepared(images):
        return np.stack([preprocess(image, spec) for image in images])

    val_scores = detectors(val.x, [dataset.display_pixels(name) for name in val.names])
    test_scores = detectors(test.x, test_display)
    set_scores = {name: detectors(prepared(images), images) for name, images in sets.items()}
    table = {}
    for detector in test_scores:
        threshold = np.quantile(val_scores[detector], 0.98)
        row = {"test_acceptance": float(np.mean(test_scores[detector] <= threshold)),
               "fullsize_acceptance": float(np.mean(set_scores["fullsize_xray"][detector] <= threshold))}
        row.update({name: auroc(test_scores[detector], scores[detector])
                    for name, scores in set_scores.items() if name != "fullsize_xray"})
        table[detector] = row
    columns = list(next(iter(table.values())))
    print(f"{'detector':12}" + "".join(f"{c[-10:]:>11}" for c in columns))
    for detector, row in table.items():
        print(f"{detector:12}" + "".join(f"{row[c]:11.4f}" for c in columns))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results[Path(argv[0]).name] = {"run": argv[0], "test_auc": (run.metrics.get("test") or {}).get("auc"),
                                   "n_images": {name: len(images) for name, images in sets.items()}, "auroc": table,
                                   "machine": {"cpus": os.cpu_count(), "note": "2 shared cores, contended"}}
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"saved {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
