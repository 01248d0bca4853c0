"""The training recipe that follows the data: every `auto` setting of a TrainConfig made concrete.

`resolve(config, dataset)` runs once the data is loaded (the test split is never read here: only
the training labels and the sizes) and returns the config the run really uses, so metrics.json,
the settings line and --search all record numbers, not "auto". The rules (docs/train.md, measured
on validation in BENCHMARKS.md):

- channels: the data's own (colour data trains in colour, see `data_channels`);
- epochs: enough optimizer steps (~3000) for a small set to learn, 20..100 epochs;
- patience: a fifth of the epochs (>= 5), on a smoothed validation AUC (small validation sets are noisy);
- learning rate: linear warm-up (~200 steps, <= 10 % of the run) then cosine decay to 1 %;
- batch-norm momentum: moving statistics averaged over about one epoch (0.9..0.99), so short
  runs on small sets do not evaluate with stale statistics;
- class weights: none up to 10:1 imbalance, sqrt-inverse-frequency beyond (balanced weights move
  multi-class argmax decisions toward rare classes and cost accuracy);
- arch: see `choose_arch`.
"""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np

TARGET_STEPS = 3000
MIN_EPOCHS, MAX_EPOCHS = 20, 100
WARMUP_STEPS = 200
# --arch auto: ResNet-18 (28) needs ~15x the CNN's CPU time per image (BENCHMARKS.md: ~26 ms against
# ~1.7 ms per 28 px training image on this machine) and was not better on validation within the
# 15-minute budget on 2 cores, so auto picks it only for runs under this many image-epochs
# (training images x epochs x (input/28)^2). 0: auto is the CNN; raise it on a machine with an
# accelerator (on 2 cores 46,000 image-epochs is ~10 minutes of ResNet-18).
RESNET_BUDGET_IMAGE_EPOCHS_28 = 0
# class_weight auto: none up to this imbalance (most common / rarest class), sqrt beyond. Measured on
# RetinaMNIST (7.4:1, validation, 2 seeds): none beat sqrt by ~0.05 AUC at similar accuracy;
# balanced (inverse frequency) had the lowest accuracy.
MILD_IMBALANCE = 10.0


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    return max(1, math.ceil(n_train / batch_size))


def auto_epochs(n_train: int, batch_size: int) -> int:
    return int(min(MAX_EPOCHS, max(MIN_EPOCHS, math.ceil(TARGET_STEPS / steps_per_epoch(n_train, batch_size)))))


def auto_patience(epochs: int) -> int:
    return max(5, math.ceil(epochs / 5))


def auto_warmup_epochs(n_train: int, batch_size: int, epochs: int) -> int:
    wanted = math.ceil(WARMUP_STEPS / steps_per_epoch(n_train, batch_size))
    return int(max(1, min(wanted, epochs // 10)))


def auto_bn_momentum(n_train: int, batch_size: int) -> float:
    # Keras' 0.99 averages the batch statistics over ~100 steps: 6 epochs of a 1,000-image set.
    return float(round(min(0.99, max(0.9, 1.0 - 1.0 / steps_per_epoch(n_train, batch_size))), 3))


def bn_momentum(config) -> float:
    value = getattr(config, "bn_momentum", None)
    return 0.99 if value is None else float(value)


def auto_class_weight(y: np.ndarray, n_classes: int) -> str:
    """none for mild imbalance (<= MILD_IMBALANCE : 1), else sqrt-inverse-frequency."""
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=n_classes)
    counts = counts[counts > 0]
    if len(counts) < 2:
        return "none"
    return "none" if counts.max() / counts.min() <= MILD_IMBALANCE else "sqrt"


def class_weight_vector(y: np.ndarray, n_classes: int, mode: str) -> np.ndarray:
    """Per-class weights, mean 1 over the training samples: balanced (n / (K * count)), sqrt of that, or none."""
    counts = np.maximum(np.bincount(y, minlength=n_classes).astype(np.float64), 1)
    if mode == "none":
        return np.ones(n_classes, np.float64)
    per_class = len(y) / (n_classes * counts)
    if mode == "sqrt":
        per_class = np.sqrt(per_class)
    per_class /= float(np.mean(per_class[y])) if len(y) else 1.0
    return per_class


def data_channels(path) -> int:
    """3 when the training images are colour (R, G, B that differ), else 1; read before loading.

    Looks at up to 32 images: a .npz's train_images, else the first image files of the folder
    (grey scans saved as RGB JPEGs have equal channels and count as grey).
    """
    from medge.edge.preprocess import DICOM_SUFFIXES, IMAGE_SUFFIXES, decode_image

    path = Path(path).expanduser()
    samples = []
    try:
        if path.is_file() and path.suffix.lower() == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                if "train_images" in archive.files:
                    samples = list(archive["train_images"][:32])
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES + DICOM_SUFFIXES
                           and not p.name.startswith("."))
            step = max(1, len(files) // 32)  # spread over the classes, not the first folder only
            for file in files[::step][:32]:
                try:
                    samples.append(decode_image(file).pixels)
                except Exception:  # noqa: BLE001 - the loader reports unreadable files itself
                    continue
    except Exception:  # noqa: BLE001 - a file the loader will reject with its own clear error
        return 1
    colour = sum(1 for pixels in samples if _is_colour(np.asarray(pixels)))
    return 3 if samples and colour * 2 >= len(samples) else 1


def _is_colour(pixels: np.ndarray) -> bool:
    if pixels.ndim != 3 or pixels.shape[-1] < 3:
        return False
    rgb = pixels[..., :3].astype(np.int64)
    tolerance = 8 if pixels.dtype == np.uint8 else 8 * 257
    return bool(np.abs(rgb[..., 0] - rgb[..., 1]).max() > tolerance or np.abs(rgb[..., 1] - rgb[..., 2]).max() > tolerance)


def choose_arch(n_train: int, epochs: int, input_size: int) -> str:
    """--arch auto: resnet18 when its compute fits the budget (see RESNET_BUDGET_...), else cnn."""
    image_epochs_28 = n_train * epochs * (input_size / 28) ** 2
    return "resnet18" if image_epochs_28 <= RESNET_BUDGET_IMAGE_EPOCHS_28 else "cnn"


def resolve_channels(config):
    """channels None -> the data's (1 or 3); backbones keep their row's default (3, as pretrained)."""
    if config.channels is not None or config.architecture.pretrained:
        return config
    from .data import PNEUMONIAMNIST

    return replace(config, channels=data_channels(config.data if config.data is not None else PNEUMONIAMNIST))


def resolve(config, dataset):
    """The config with every auto setting made concrete from the training split (size, labels)."""
    n_train = len(dataset.splits["train"])
    changes = {}
    epochs = config.epochs or auto_epochs(n_train, config.batch_size)
    changes["epochs"] = epochs
    if config.arch == "auto":
        changes["arch"] = choose_arch(n_train, epochs, config.input_size)
    if config.patience is None:
        changes["patience"] = auto_patience(epochs)
    if config.warmup_epochs is None:
        changes["warmup_epochs"] = auto_warmup_epochs(n_train, config.batch_size, epochs)
    if config.bn_momentum is None:
        changes["bn_momentum"] = auto_bn_momentum(n_train, config.batch_size)
    if config.class_weight == "auto":
        changes["class_weight"] = auto_class_weight(dataset.splits["train"].y, len(dataset.classes))
    return replace(config, **changes)


def member_config(config, member: int):
    """Ensemble member `member`'s config: --ensemble-archs cycles the architectures."""
    if not config.ensemble_archs:
        return config
    return replace(config, arch=config.ensemble_archs[member % len(config.ensemble_archs)], ensemble_archs=None)
