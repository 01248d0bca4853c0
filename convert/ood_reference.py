"""The out-of-distribution reference a bundle carries (see edge/ood.py for the device side).

Chosen by measurement (BENCHMARKS.md, "Out-of-distribution guard"): the Mahalanobis distance
of the model's penultimate features (the input of the last Dense layer) to the nearest class
mean, with one covariance shared by the classes, beat the energy score on the logits and
image statistics on every OOD set; image statistics only add two cheap exact checks (a
flat image, a colour image for a grey model or the reverse).

Here: `with_features` gives the exported model its features as a second output (the int8
model computes them anyway: the cost on the device is the distance, a few microseconds);
`fit_reference` fits class means and covariance on the TRAINING split and sets the threshold
on the VALIDATION split for the stated acceptance, both with display variants of their images
(`display_variants`: the window/level, gamma and brightness differences between one scanner's
export and another's, which a model trained with brightness/contrast augmentation takes in its
stride but which, unaccounted for, push real radiographs past the threshold: a 12-bit CR DICOM
of a bundled X-ray scored 1.5x the threshold on the fixture model, 0.75x with them); `write_reference` stores the arrays in
ood.npz (a bundle file, so the manifest's sha256 list and signature cover it).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medge.edge.ood import (
    DEFAULT_ACCEPTANCE,
    METHOD,
    OOD_FILE,
    OodGuard,
    colourfulness,
    high_frequency_ratio,
    whitening_matrix,
)

SHRINKAGE = 1e-3  # ridge on the covariance, relative to its mean variance: dead ReLU units make it singular
COLOUR_MARGIN = 2.0  # the accepted colourfulness range is the training range widened by this factor
GREY_COLOUR_LIMIT = 0.08  # a grey model accepts JPEG chroma noise up to this (mean |R-G|+|G-B|, 0..1)
DISPLAY_SAMPLES = 500  # training images whose display pixels set the colour range
VARIANT_TRAIN_IMAGES = 2000  # training images given one display variant each
NOISE_MARGIN = 1.5  # the noise check's limit: the training images' 99.9th percentile ratio times this
SMOOTH_MARGIN = 1.25  # the smooth check's limit: their 0.1th percentile divided by this


def display_variants(images: list[np.ndarray], seed: int = 0) -> list[np.ndarray]:
    """One seeded display variant of each image: gamma 0.6-1.6, contrast 0.6-1.6x about the mean,
    brightness +-15% (what different window/level and export settings do to the same radiograph)."""
    rng = np.random.default_rng(seed)
    out = []
    for image in images:
        x = np.asarray(image, dtype=np.float32) / 255.0
        x = x ** np.exp(rng.uniform(np.log(0.6), np.log(1.6)))
        mean = float(x.mean())
        x = (x - mean) * rng.uniform(0.6, 1.6) + mean + rng.uniform(-0.15, 0.15)
        out.append((np.clip(x, 0.0, 1.0) * 255.0).round().astype(np.uint8))
    return out


def feature_layer_output(model):
    """The tensor the last Dense layer reads (the penultimate features), or None when the model
    does not end in a Dense layer (an averaging ensemble: no single feature space)."""
    import keras

    last = model.layers[-1]
    if not isinstance(last, keras.layers.Dense) or len(model.outputs) != 1:
        return None
    return last.input


def with_features(model):
    """The same model with its penultimate features as a second output, or None (see above)."""
    import keras

    features = feature_layer_output(model)
    if features is None:
        return None
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return keras.Model(inputs, [model.outputs[0], features], name=f"{model.name}_ood")


def float_features(model, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """Penultimate features of the float Keras model (the reference the int8 scores are ranked against)."""
    import keras

    features = feature_layer_output(model)
    extractor = keras.Model(model.inputs[0] if len(model.inputs) == 1 else model.inputs, features)
    return np.concatenate([np.asarray(extractor(x[i:i + batch], training=False)) for i in range(0, len(x), batch)]
                          ).astype(np.float64)


@dataclass
class Reference:
    means: np.ndarray  # (K, D) class means of the training features
    whitening: np.ndarray  # (D, D): ||(f - mean) @ whitening||^2 is the Mahalanobis distance
    threshold: float
    colour_range: tuple[float, float]
    noise_limit: float
    smooth_limit: float
    acceptance: float  # the stated share of validation images kept
    validation_acceptance: float  # the share actually kept
    n_train: int
    n_val: int

    def guard(self) -> OodGuard:
        return OodGuard(self.means, self.whitening, self.threshold, self.colour_range, self.noise_limit,
                        self.smooth_limit)

    def manifest_section(self) -> dict:
        return {"method": METHOD, "file": OOD_FILE, "threshold": float(self.threshold),
                "acceptance": float(self.acceptance), "validation_acceptance": float(self.validation_acceptance),
                "feature_dim": int(self.means.shape[1]), "colour_range": [float(v) for v in self.colour_range],
                "noise_limit": float(self.noise_limit), "smooth_limit": float(self.smooth_limit),
                "fitted_on": {"train": self.n_train, "val": self.n_val}}


def fit_reference(train_features: np.ndarray, train_labels: np.ndarray, n_classes: int,
                  val_features: np.ndarray, train_display: list[np.ndarray], channels: int,
                  acceptance: float = DEFAULT_ACCEPTANCE, train_inputs: np.ndarray | None = None) -> Reference:
    """Class means + shared covariance on training features; the threshold keeps `acceptance`
    of the validation images (the test split is never looked at)."""
    if not 0.5 <= acceptance < 1.0:
        raise ValueError(f"OOD acceptance must be in [0.5, 1), not {acceptance}")
    train_features = np.asarray(train_features, dtype=np.float64)
    present = [k for k in range(n_classes) if np.any(train_labels == k)]
    means = np.stack([train_features[train_labels == k].mean(axis=0) for k in present])
    centred = train_features - means[np.searchsorted(present, train_labels)]
    covariance = centred.T @ centred / max(1, len(centred) - len(present))
    covariance += SHRINKAGE * max(float(np.trace(covariance)) / len(covariance), 1e-12) * np.eye(len(covariance))
    whitening = whitening_matrix(covariance)
    probe = OodGuard(means, whitening, threshold=np.inf)
    val_scores = probe.distances(val_features)
    threshold = float(np.quantile(val_scores, acceptance, method="higher"))
    colours = np.array([colourfulness(image) for image in train_display]) if train_display else np.zeros(1)
    if channels == 1:
        colour_range = (0.0, max(GREY_COLOUR_LIMIT, float(colours.max()) * COLOUR_MARGIN))
    else:
        colour_range = (float(np.quantile(colours, 0.001)) / COLOUR_MARGIN,
                        min(1.0, float(np.quantile(colours, 0.999)) * COLOUR_MARGIN))
    ratios = [high_frequency_ratio(x) for x in train_inputs] if train_inputs is not None and len(train_inputs) else []
    noise_limit = float(np.quantile(ratios, 0.999)) * NOISE_MARGIN if ratios else float("inf")
    smooth_limit = float(np.quantile(ratios, 0.001)) / SMOOTH_MARGIN if ratios else 0.0
    return Reference(means=means, whitening=whitening, threshold=threshold, colour_range=colour_range,
                     noise_limit=noise_limit, smooth_limit=smooth_limit,
                     acceptance=acceptance, validation_acceptance=float(np.mean(val_scores <= threshold)),
                     n_train=len(train_features), n_val=len(val_features))


def write_reference(reference: Reference, folder: Path) -> Path:
    path = Path(folder) / OOD_FILE
    np.savez(path, means=reference.means.astype(np.float32), whitening=reference.whitening.astype(np.float32))
    return path
