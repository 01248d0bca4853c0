"""The out-of-distribution guard on the device: is this image one the model was built for?

The bundle's `ood` section and its ood.npz (fitted by medge.convert.ood_reference on the
training split, threshold set on validation) hold the mean and a low-rank-plus-isotropic
covariance (probabilistic PCA) of the model's features, which the model file gives as a second
output: the last convolutional feature map, pooled to a small grid, so the guard sees where
things are as well as what (a rotated, cropped or other-modality image keeps a radiograph's
textures but not its layout). The score is the squared Mahalanobis distance under that
covariance; above the bundle's threshold the image is out of distribution. Exact image checks
come first: a flat image (nothing to judge), noise or an over-smooth image (neighbouring
model-input pixels differing by more, or less, than the training images ever do: a
disconnected sensor, a test pattern or gradient), and colour where the model was trained on
grey images or grey where it was trained on colour.

`mode`: "refuse" (default: not_applicable, reason out_of_distribution, never a class),
"warn" (classified, with a warning and the score) or "off" (not computed).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

from .errors import BundleError

log = logging.getLogger("medge.ood")

OOD_FILE = "ood.npz"
METHOD = "mahalanobis-lowrank"
MODES = ("refuse", "warn", "off")
DEFAULT_MODE = "refuse"
REASON = "out_of_distribution"
DEFAULT_ACCEPTANCE = 0.98
FLAT_STD = 2.0  # grey levels: below this spread an image is (near-)constant: a lens cap, a blank export
_COLOUR_SAMPLE = 256  # colourfulness is measured on at most this many rows/columns (cost bounded)


def colourfulness(pixels: np.ndarray) -> float:
    """Mean |R-G| + |G-B| over the image, 0 (grey) .. 2; a 2-D image is 0."""
    if pixels.ndim != 3 or pixels.shape[2] < 3:
        return 0.0
    step = max(1, max(pixels.shape[:2]) // _COLOUR_SAMPLE)
    red, green, blue = cv2.split(np.ascontiguousarray(pixels[::step, ::step, :3], dtype=np.uint8))
    return float((cv2.mean(cv2.absdiff(red, green))[0] + cv2.mean(cv2.absdiff(green, blue))[0]) / 255.0)


def high_frequency_ratio(model_input: np.ndarray) -> float:
    """Mean absolute difference of neighbouring model-input pixels over their spread: ~0.5 for
    a radiograph or photograph at any size (the device resizes it first), above 2 for noise,
    whose pixels stay independent however much it is averaged down."""
    height, width = model_input.shape[0], model_input.shape[1]
    if height < 2 or width < 2:
        return 0.0
    channels = model_input.size // (height * width)
    # OpenCV on a 2-D (H, W*C) view: the same figures as numpy's std/diff/mean at a fifth of the cost.
    flat = np.ascontiguousarray(model_input, dtype=np.float32).reshape(height, width * channels)
    spread = _spread(flat)
    if spread == 0.0:
        return 0.0
    across = cv2.mean(cv2.absdiff(flat[:, channels:], flat[:, :-channels]))[0]
    down = cv2.mean(cv2.absdiff(flat[1:], flat[:-1]))[0]
    return float((across + down) / spread)


def _spread(image: np.ndarray) -> float:
    """The standard deviation of every value of `image` (all channels together)."""
    flat = np.ascontiguousarray(image).reshape(image.shape[0], -1)
    return float(cv2.meanStdDev(flat)[1][0, 0])


@dataclass(frozen=True)
class OodVerdict:
    score: float  # squared Mahalanobis distance of the features to the (nearest) training mean
    threshold: float
    out: bool
    check: str = "features"  # which check said out: features, flat_image, noise, smooth or colour

    def to_dict(self) -> dict:
        data = {"score": round(float(self.score), 4), "threshold": round(float(self.threshold), 4)}
        if self.check != "features":
            data["check"] = self.check
        return data

    def warning(self) -> str:
        why = {"flat_image": "the image is flat", "noise": "the image is noise-like",
               "smooth": "the image is smoother than any training image (a gradient or test pattern)",
               "colour": "its colour does not match the training images"}
        detail = why.get(self.check, f"OOD score {self.score:.1f} > threshold {self.threshold:.1f}")
        return f"out of distribution ({detail}): classified only because ood mode is warn"


class OodGuard:
    """The bundle's reference, ready to score one image's features.

    distance(f) = sum_j weights_j ((f - mean) . basis_j)^2 + isotropic ||f - mean||^2: a
    probabilistic-PCA precision (basis = top principal directions, weights = 1/variance - 1/noise
    variance, isotropic = 1/noise variance) in one (D, k) product per input. A bundle made with
    class means and a full covariance (method mahalanobis-penultimate) is the case basis =
    whitening, weights = 1, isotropic = 0, with the nearest class mean."""

    def __init__(self, means: np.ndarray, basis: np.ndarray, threshold: float, colour_range=(0.0, 2.0),
                 noise_limit: float = float("inf"), smooth_limit: float = 0.0, weights: np.ndarray | None = None,
                 isotropic: float = 0.0):
        self.means = np.asarray(means, dtype=np.float32)
        self.basis = np.asarray(basis, dtype=np.float32)
        self.weights = (np.ones(self.basis.shape[1], dtype=np.float32) if weights is None
                        else np.asarray(weights, dtype=np.float32))
        self.isotropic = float(isotropic)
        if self.isotropic and len(self.means) > 1:
            raise ValueError("an isotropic term goes with one mean (the low-rank reference)")
        self.threshold = float(threshold)
        self.colour_range = (float(colour_range[0]), float(colour_range[1]))
        self.noise_limit = float(noise_limit)
        self.smooth_limit = float(smooth_limit)
        # (f - m) B = f B - m B: project the class means once, each input costs one (D, k) product.
        self._projected_means = self.means @ self.basis
        self._weights64 = self.weights.astype(np.float64)

    @property
    def feature_dim(self) -> int:
        return int(self.means.shape[1])

    def distances(self, features: np.ndarray) -> np.ndarray:
        """(N, D) features -> (N,) squared distance to the nearest training mean."""
        features = np.asarray(features, dtype=np.float32).reshape(len(features), -1)
        if len(self.means) == 1:  # the low-rank reference: one mean
            centred = features - self.means
            projected = (centred @ self.basis).astype(np.float64)  # float32 product, float64 sums
            centred = centred.astype(np.float64)
            return (projected ** 2) @ self._weights64 + self.isotropic * np.einsum("nd,nd->n", centred, centred)
        projected = (features @ self.basis)[:, None, :] - self._projected_means[None]  # class means, no isotropic
        return (projected.astype(np.float64) ** 2 @ self._weights64).min(axis=1)

    def judge(self, features: np.ndarray, pixels: np.ndarray | None = None,
              model_input: np.ndarray | None = None) -> OodVerdict:
        score = float(self.distances(np.asarray(features)[None])[0])
        if pixels is not None:
            step = max(1, max(pixels.shape[:2]) // _COLOUR_SAMPLE)  # a strided sample: cost bounded on any size
            if _spread(pixels[::step, ::step]) < FLAT_STD:
                return OodVerdict(score, self.threshold, True, "flat_image")
        if model_input is not None:
            ratio = high_frequency_ratio(model_input)
            if ratio > self.noise_limit:
                return OodVerdict(score, self.threshold, True, "noise")
            if ratio < self.smooth_limit:
                return OodVerdict(score, self.threshold, True, "smooth")
        if pixels is not None:
            low, high = self.colour_range
            if not low <= colourfulness(pixels) <= high:
                return OodVerdict(score, self.threshold, True, "colour")
        return OodVerdict(score, self.threshold, score > self.threshold)

    @classmethod
    def from_bundle(cls, bundle) -> OodGuard | None:
        """The bundle's guard, or None (with a warning logged) for a bundle made before the guard."""
        section = getattr(bundle.manifest, "ood", None)
        if not section:
            log.warning("%s: the bundle has no out-of-distribution reference (made before medge's OOD guard): "
                        "the guard is off, every decodable image is classified; reconvert to enable it", bundle.path)
            return None
        path = bundle.path / section.get("file", OOD_FILE)
        try:
            with np.load(path, allow_pickle=False) as arrays:
                means = arrays["means"]
                if "basis" in arrays:
                    basis, weights, isotropic = arrays["basis"], arrays["weights"], float(arrays["isotropic"])
                else:  # a full-covariance reference (bundles made before the low-rank one)
                    basis, weights, isotropic = arrays["whitening"], None, 0.0
        except (OSError, KeyError, ValueError, TypeError) as error:
            raise BundleError(f"{path}: unreadable OOD reference ({error})") from None
        if (means.ndim != 2 or basis.ndim != 2 or basis.shape[0] != means.shape[1]
                or (weights is not None and weights.shape != (basis.shape[1],))):
            raise BundleError(f"{path}: OOD reference arrays have inconsistent shapes {means.shape}, {basis.shape}")
        return cls(means, basis, section["threshold"], section.get("colour_range", (0.0, 2.0)),
                   section.get("noise_limit", float("inf")), section.get("smooth_limit", 0.0), weights, isotropic)


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"ood mode must be one of {', '.join(MODES)}, not {mode!r}")
    return mode


def screen(classified: list, mode: str) -> tuple[list, list[str], dict | None]:
    """Apply the guard to one input's classified frames [(index, Classification), ...].

    Returns (the frames still reported, warnings, the `ood` record when every frame was refused:
    the input is then not_applicable / out_of_distribution). "refuse" drops each frame out of
    distribution (so policy "max" never picks a refused frame as the most abnormal); "warn"
    keeps them with a warning; "off" (or a bundle without a reference) changes nothing."""
    if mode == "off":
        return classified, [], None
    out = [(index, c) for index, c in classified if c.ood is not None and c.ood.out]
    if not out:
        return classified, [], None
    if mode == "warn":
        return classified, [out[0][1].ood.warning()], None
    kept = [(index, c) for index, c in classified if c.ood is None or not c.ood.out]
    if not kept:
        return [], [], out[0][1].ood.to_dict()
    return kept, [f"{len(out)} of {len(classified)} frames refused as out of distribution"], None


@dataclass
class OodSettings:
    """[ood] in the edge config (MEDGE_OOD_MODE, --ood): what the daemon does with an image the
    bundle's OOD reference says the model was not built for."""

    mode: str = DEFAULT_MODE  # refuse | warn | off


def validate_ood(settings: OodSettings) -> None:
    from .errors import ConfigError

    if settings.mode not in MODES:
        raise ConfigError(f"ood.mode: {settings.mode!r} must be one of {', '.join(MODES)}")
