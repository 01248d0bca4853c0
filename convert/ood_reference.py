"""The out-of-distribution reference a bundle carries (see edge/ood.py for the device side).

Chosen by measurement (BENCHMARKS.md, "Out-of-distribution guard"; the detector family in
benchmarks/ood_detectors.py, the features and covariance in benchmarks/ood_features.py): the
features are the last convolutional feature map (the input of the head's global pooling or
flatten), average-pooled to at most a GRID x GRID grid, and the distance is Mahalanobis under a
probabilistic-PCA covariance (COMPONENTS principal directions plus one noise variance, fitted on
the training split). On the default PneumoniaMNIST CNN this took the mean AUROC on the
validation-built sets from 0.896 (Mahalanobis on the penultimate vector: pooled features lose
the layout, so a rotated chest or a CT slice with chest-like texture passed) to 0.966, and on
RetinaMNIST from 0.875 to 0.951. A model whose head does not start from a feature map (a
keras.applications backbone, pooled inside) falls back to the penultimate vector with the same
low-rank fit. Image statistics add exact checks (flat, noise, over-smooth, colour for a grey
model or the reverse).

Here: `with_features` gives the exported model its features as a second output (the int8
model computes the map anyway: the cost on the device is one (D, k) product); `fit_reference`
fits the mean and covariance on the TRAINING split and sets the threshold on the VALIDATION
split for the stated acceptance, both with display variants of their images
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
)

GRID = 4  # the feature map is average-pooled to at most this many cells a side
# Principal directions kept. benchmarks/ood_features.py, mean AUROC over two runs: 16 -> 0.951, 32 -> 0.955,
# 64 -> 0.959, 128 -> 0.960; 64 costs half the product of 128.
COMPONENTS = 64
NOISE_FLOOR = 1e-6  # the noise variance's floor, relative to the mean variance (dead ReLU units)
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


_HEAD_LAYERS = ("Dense", "Dropout")  # between the feature map's pooling and the output
_POOLING_LAYERS = ("GlobalAveragePooling2D", "GlobalMaxPooling2D", "Flatten")


def feature_map(model):
    """The 4-D tensor the head's pooling (or flatten) reads, or None (see the module docstring)."""
    tensor = model.layers[-1].input
    while True:
        history = getattr(tensor, "_keras_history", None)
        layer = getattr(history, "operation", None)
        kind = type(layer).__name__
        if kind in _POOLING_LAYERS and len(layer.input.shape) == 4:
            return layer.input
        if kind not in _HEAD_LAYERS:
            return None
        tensor = layer.input


def feature_layer_output(model):
    """The features the guard reads: the feature map pooled to at most GRID x GRID cells and
    flattened, else the tensor the last Dense layer reads; None when the model does not end in a
    Dense layer (an averaging ensemble: no single feature space)."""
    import math

    import keras

    last = model.layers[-1]
    if not isinstance(last, keras.layers.Dense) or len(model.outputs) != 1:
        return None
    spatial = feature_map(model)
    if spatial is None:
        return last.input
    size = max(1, math.ceil(max(int(spatial.shape[1]), int(spatial.shape[2])) / GRID))
    if size > 1:
        spatial = keras.layers.AveragePooling2D(size, padding="same", name="ood_pool")(spatial)
    return keras.layers.Flatten(name="ood_features")(spatial)


def feature_kind(model) -> str:
    return "spatial" if feature_map(model) is not None else "penultimate"


def with_features(model):
    """The same model with the guard's features as a second output, or None (see above)."""
    import keras

    features = feature_layer_output(model)
    if features is None:
        return None
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return keras.Model(inputs, [model.outputs[0], features], name=f"{model.name}_ood")


def float_features(model, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """The guard's features from the float Keras model (the reference the int8 scores are ranked against)."""
    import keras

    features = feature_layer_output(model)
    extractor = keras.Model(model.inputs[0] if len(model.inputs) == 1 else model.inputs, features)
    return np.concatenate([np.asarray(extractor(x[i:i + batch], training=False)) for i in range(0, len(x), batch)]
                          ).astype(np.float64)


@dataclass
class Reference:
    means: np.ndarray  # (1, D) mean of the training features
    basis: np.ndarray  # (D, k) principal directions
    weights: np.ndarray  # (k,) 1/variance - 1/noise variance along each (<= 0)
    isotropic: float  # 1/noise variance
    threshold: float
    colour_range: tuple[float, float]
    noise_limit: float
    smooth_limit: float
    acceptance: float  # the stated share of validation images kept
    validation_acceptance: float  # the share actually kept
    n_train: int
    n_val: int

    def guard(self) -> OodGuard:
        return OodGuard(self.means, self.basis, self.threshold, self.colour_range, self.noise_limit,
                        self.smooth_limit, self.weights, self.isotropic)

    def manifest_section(self) -> dict:
        return {"method": METHOD, "file": OOD_FILE, "threshold": float(self.threshold),
                "acceptance": float(self.acceptance), "validation_acceptance": float(self.validation_acceptance),
                "feature_dim": int(self.means.shape[1]),
                "components": int(self.basis.shape[1]), "colour_range": [float(v) for v in self.colour_range],
                "noise_limit": float(self.noise_limit), "smooth_limit": float(self.smooth_limit),
                "fitted_on": {"train": self.n_train, "val": self.n_val}}


def fit_reference(train_features: np.ndarray, val_features: np.ndarray, train_display: list[np.ndarray],
                  channels: int, acceptance: float = DEFAULT_ACCEPTANCE,
                  train_inputs: np.ndarray | None = None, components: int = COMPONENTS) -> Reference:
    """Mean + probabilistic-PCA covariance on training features; the threshold keeps
    `acceptance` of the validation images (the test split is never looked at)."""
    if not 0.5 <= acceptance < 1.0:
        raise ValueError(f"OOD acceptance must be in [0.5, 1), not {acceptance}")
    train_features = np.asarray(train_features, dtype=np.float64)
    mean = train_features.mean(axis=0, keepdims=True)
    _, singular, directions = np.linalg.svd(train_features - mean, full_matrices=False)
    variances = singular ** 2 / max(1, len(train_features) - 1)
    dim = train_features.shape[1]
    k = max(1, min(components, len(variances) - 1, dim - 1))
    total = float(variances.sum())
    # The PPCA noise variance: what the k directions leave, spread over the other dim - k.
    noise_variance = max((total - float(variances[:k].sum())) / (dim - k), NOISE_FLOOR * total / dim, 1e-12)
    basis = directions[:k].T
    weights = 1.0 / np.maximum(variances[:k], noise_variance) - 1.0 / noise_variance  # <= 0: less than isotropic
    probe = OodGuard(mean, basis, np.inf, weights=weights, isotropic=1.0 / noise_variance)
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
    return Reference(means=mean, basis=basis, weights=weights, isotropic=1.0 / noise_variance, threshold=threshold,
                     colour_range=colour_range,
                     noise_limit=noise_limit, smooth_limit=smooth_limit,
                     acceptance=acceptance, validation_acceptance=float(np.mean(val_scores <= threshold)),
                     n_train=len(train_features), n_val=len(val_features))


def write_reference(reference: Reference, folder: Path) -> Path:
    path = Path(folder) / OOD_FILE
    np.savez(path, means=reference.means.astype(np.float32), basis=reference.basis.astype(np.float32),
             weights=reference.weights.astype(np.float32), isotropic=np.float32(reference.isotropic))
    return path
