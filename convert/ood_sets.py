"""The out-of-distribution sets the conversion gate, the benchmark and the tests measure the guard on.

Every set is display pixels (uint8, (H, W) or (H, W, 3)), exactly what a device decodes, built
from real data the project ships or installs, never from a model:

- other modalities: the CT, MR, ultrasound and nuclear-medicine images bundled in the pydicom
  wheel, each whole and as a few seeded crops (so a set holds enough images for an AUROC),
- another MedMNIST dataset: RetinaMNIST fundus photographs against a chest model, PneumoniaMNIST
  chest X-rays against a fundus model (`other_dataset`),
- synthetic inputs a device meets when a camera or a link misbehaves: constant, noise, gradients,
- transformed in-distribution images: rotated by 90/180/270 degrees, inverted, heavily cropped.

Nothing here imports TensorFlow: the device-side tests build the same sets.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

# pydicom test files by modality (the ones shipped inside the wheel, not downloaded on demand).
MODALITY_FILES = {
    "ct": ("CT_small.dcm", "693_J2KI.dcm", "J2K_pixelrep_mismatch.dcm"),
    "mr": ("MR_small.dcm", "examples_overlay.dcm"),
    "us": ("examples_rgb_color.dcm", "examples_palette.dcm", "examples_jpeg2k.dcm", "examples_ybr_color.dcm",
           "ExplVR_BigEnd.dcm"),
    "nm": ("JPEG2000.dcm", "JPGExtended.dcm"),
}
# DICOM Modality codes -> the set holding that modality: a model declared for it is not measured against it.
SET_OF_MODALITY = {"CT": "ct", "MR": "mr", "US": "us", "NM": "nm", "PT": "nm"}
CROPS_PER_IMAGE = 12
MAX_FRAMES_PER_FILE = 6
SYNTHETIC_COUNT = 60
SIZE = 96  # side of the synthetic images (the device resizes every input anyway)


def modality_images(modality: str, crops: int = CROPS_PER_IMAGE, seed: int = 0) -> list[np.ndarray]:
    """Every frame of the pydicom test files of one modality, whole and as `crops` seeded crops."""
    from pydicom.data import get_testdata_file

    from medge.edge.preprocess import decode_image

    rng = np.random.default_rng(seed)
    images = []
    for name in MODALITY_FILES[modality]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            path = get_testdata_file(name)
        if path is None:
            continue
        frames = decode_image(path).frames
        for frame in frames[:: max(1, len(frames) // MAX_FRAMES_PER_FILE)][:MAX_FRAMES_PER_FILE]:
            images.append(frame)
            images += random_crops(frame, crops, rng, min_fraction=0.6)
    return images


def random_crops(image: np.ndarray, count: int, rng, min_fraction: float) -> list[np.ndarray]:
    height, width = image.shape[:2]
    out = []
    for _ in range(count):
        h = int(height * rng.uniform(min_fraction, 1.0))
        w = int(width * rng.uniform(min_fraction, 1.0))
        top, left = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
        out.append(np.ascontiguousarray(image[top:top + h, left:left + w]))
    return out


def other_dataset(path: str | Path, split: str = "test", limit: int = 300, seed: int = 0) -> list[np.ndarray]:
    """Images of another MedMNIST .npz (e.g. RetinaMNIST fundus against a chest model)."""
    images = np.load(path)[f"{split}_images"]
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(len(images))[:limit]
    return [np.asarray(images[i]) for i in chosen]


def constant_images(count: int = SYNTHETIC_COUNT, seed: int = 0, colour: bool = False) -> list[np.ndarray]:
    """Flat images from black to white (a lens cap, a blank export, a saturated detector)."""
    values = np.linspace(0, 255, count).round().astype(np.uint8)
    shape = (SIZE, SIZE, 3) if colour else (SIZE, SIZE)
    return [np.full(shape, value, dtype=np.uint8) for value in values]


def noise_images(count: int = SYNTHETIC_COUNT, seed: int = 0, colour: bool = False) -> list[np.ndarray]:
    """Uniform, Gaussian and salt-and-pepper noise at several levels (a disconnected sensor)."""
    rng = np.random.default_rng(seed)
    shape = (SIZE, SIZE, 3) if colour else (SIZE, SIZE)
    out = []
    for index in range(count):
        kind = index % 3
        if kind == 0:
            image = rng.integers(0, 256, shape)
        elif kind == 1:
            image = rng.normal(rng.uniform(60, 200), rng.uniform(20, 80), shape)
        else:
            image = np.where(rng.random(shape) < rng.uniform(0.1, 0.5), 255, 0) + rng.normal(0, 5, shape)
        out.append(np.clip(image, 0, 255).astype(np.uint8))
    return out


def gradient_images(count: int = SYNTHETIC_COUNT, seed: int = 0, colour: bool = False) -> list[np.ndarray]:
    """Linear ramps at random angles and radial ramps (test patterns, uneven illumination)."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:SIZE, 0:SIZE] / (SIZE - 1)
    out = []
    for index in range(count):
        if index % 2 == 0:
            angle = rng.uniform(0, 2 * np.pi)
            ramp = np.cos(angle) * xs + np.sin(angle) * ys
        else:
            cy, cx = rng.uniform(0, 1, 2)
            ramp = np.hypot(ys - cy, xs - cx)
        ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
        low, high = sorted(rng.uniform(0, 255, 2))
        image = (low + ramp * (high - low)).astype(np.uint8)
        out.append(np.repeat(image[:, :, None], 3, axis=2) if colour else image)
    return out


def rotated(images: list[np.ndarray]) -> list[np.ndarray]:
    """In-distribution images turned by 90, 180 or 270 degrees (a mis-oriented export)."""
    return [np.ascontiguousarray(np.rot90(image, 1 + index % 3)) for index, image in enumerate(images)]


def inverted(images: list[np.ndarray]) -> list[np.ndarray]:
    """In-distribution images with inverted grey levels (a MONOCHROME1 display mix-up)."""
    return [255 - image for image in images]


def cropped(images: list[np.ndarray], fraction: float = 0.4, seed: int = 0) -> list[np.ndarray]:
    """A random `fraction`-of-each-side crop of each in-distribution image (a zoomed-in detail)."""
    rng = np.random.default_rng(seed)
    out = []
    for image in images:
        height, width = image.shape[:2]
        h, w = max(2, int(round(height * fraction))), max(2, int(round(width * fraction)))
        top, left = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
        out.append(np.ascontiguousarray(image[top:top + h, left:left + w]))
    return out


def ood_sets(in_distribution: list[np.ndarray], other: str | Path | None, colour: bool = False,
             seed: int = 0, own_modalities: tuple[str, ...] = ()) -> dict[str, Callable[[], list[np.ndarray]]]:
    """Name -> builder of one OOD set (built lazily: the gate may be asked for only some).

    `in_distribution`: display pixels of held-out in-distribution images (the transformed sets);
    `other`: another MedMNIST .npz; `colour`: whether the model takes colour input (the
    synthetic images are then colour too, so they are not refused for being grey alone);
    `own_modalities`: DICOM Modality codes the model is declared for (`medge convert --modality`),
    whose set is left out (an ultrasound model is not out of distribution on ultrasound)."""
    own = {SET_OF_MODALITY.get(code.upper()) for code in own_modalities}
    sets = {f"modality_{name}": (lambda name=name: modality_images(name, seed=seed)) for name in MODALITY_FILES
            if name not in own}
    if other is not None:
        sets["other_dataset"] = lambda: other_dataset(other, seed=seed)
    sets.update({
        "constant": lambda: constant_images(seed=seed, colour=colour),
        "noise": lambda: noise_images(seed=seed, colour=colour),
        "gradient": lambda: gradient_images(seed=seed, colour=colour),
        "rotated": lambda: rotated(in_distribution),
        "inverted": lambda: inverted(in_distribution),
        "cropped": lambda: cropped(in_distribution, seed=seed),
    })
    return sets
