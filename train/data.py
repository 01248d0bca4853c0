"""Datasets for training and evaluation: MedMNIST .npz, class-per-folder image trees, DICOM folders.

Every image goes through `medge.edge.preprocess` (decode -> display pixels -> model input), the
same code the device runs. Bad data stops with a one-line `InputError` naming the file and the
problem; files that are not images (README, .DS_Store, ...) are skipped but counted and reported.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medge.data import PNEUMONIAMNIST, PNEUMONIAMNIST_CLASSES
from medge.edge.errors import InputError
from medge.edge.preprocess import (
    DICOM_SUFFIXES,
    IMAGE_SUFFIXES,
    PreprocessSpec,
    decode_image,
    preprocess,
    to_display_pixels,
)

SPLITS = ("train", "val", "test")
FORMATS = ("npz", "folder", "dicom")
LABELS_CSV = "labels.csv"


@dataclass
class Split:
    x: np.ndarray  # float32 (N, H, W, C), preprocessed
    y: np.ndarray  # int64 (N,), index into Dataset.classes
    names: list[str]  # where each sample came from (relative file path, or "train[12]" for .npz)

    def __len__(self):
        return len(self.y)

    def counts(self, n_classes: int) -> list[int]:
        return np.bincount(self.y, minlength=n_classes).astype(int).tolist()

    def subset(self, indices) -> Split:
        indices = np.asarray(indices, dtype=np.int64)
        return Split(self.x[indices], self.y[indices], [self.names[i] for i in indices])


class SealedSplitError(RuntimeError):
    """Code read the images or labels of a sealed split (the test split before final evaluation):
    a bug that would let the test set leak into a choice (threshold, temperature, epochs, arch)."""


class SealedSplit:
    """The test split while training and every choice made on validation run: its size and class
    counts (for the log and metrics.json) are known, its images, labels and subsets are not.
    `Dataset.unseal` hands the real Split back, once, for the final evaluation."""

    def __init__(self, split: Split):
        self._split = split
        self._labels_seen = np.bincount(split.y) if len(split) else np.zeros(0, np.int64)
        self.names = split.names  # file names ("test[12]") say nothing about labels or pixels

    def __len__(self):
        return len(self._split)

    def counts(self, n_classes: int) -> list[int]:
        return np.pad(self._labels_seen, (0, max(0, n_classes - len(self._labels_seen)))).astype(int).tolist()

    def _refuse(self, what: str):
        raise SealedSplitError(f"the test split is sealed until the final evaluation: {what} may not be read "
                               "while the model, its epochs, temperature or threshold are being chosen")

    @property
    def x(self):
        self._refuse("its images")

    @property
    def y(self):
        self._refuse("its labels")

    def subset(self, indices):
        self._refuse("a subset of it")


@dataclass
class Dataset:
    path: Path
    format: str
    classes: list[str]
    spec: PreprocessSpec
    splits: dict[str, Split]
    val_split: float = 0.1
    test_split: float = 0.1
    seed: int = 0
    labels_csv: Path | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, why)
    train_available: int | None = None  # set by limit_train: how many training images there were
    _display: dict = field(default_factory=dict, repr=False)  # name -> how to re-read display pixels

    @property
    def task(self) -> str:
        return "binary" if len(self.classes) == 2 else "multiclass"

    def describe(self) -> str:
        lines = [f"dataset {self.path} ({self.format}), classes: {', '.join(self.classes)}, "
                 f"input {self.spec.height}x{self.spec.width}x{self.spec.channels}"]
        for name, split in self.splits.items():
            counts = ", ".join(f"{c}={n}" for c, n in zip(self.classes, split.counts(len(self.classes))))
            limited = (f" - --limit: {len(split)} of {self.train_available}"
                       if name == "train" and self.train_available not in (None, len(split)) else "")
            lines.append(f"  {name}: {len(split)} images ({counts}){limited}")
        if self.skipped:
            lines.append(f"  skipped {len(self.skipped)} non-image file(s), e.g. {self.skipped[0][0]} ({self.skipped[0][1]})")
        return "\n".join(lines)

    def seal(self, name: str = "test") -> None:
        """From now until `unseal`, reading this split's images or labels raises SealedSplitError."""
        if name in self.splits and not isinstance(self.splits[name], SealedSplit):
            self.splits[name] = SealedSplit(self.splits[name])

    def unseal(self, name: str = "test") -> Split | None:
        """The real split back, for the final evaluation only (None when there is no such split)."""
        split = self.splits.get(name)
        if isinstance(split, SealedSplit):
            split = self.splits[name] = split._split
        return split

    def limit_train(self, train: Split) -> None:
        """Train on `train` (a subset of the training split) from now on; describe() says so."""
        self.train_available = len(self.splits["train"])
        self.splits["train"] = train

    def to_dict(self) -> dict:
        """What metrics.json records so `load_dataset` rebuilds exactly these splits."""
        return {
            "path": str(self.path),
            "format": self.format,
            "classes": list(self.classes),
            "val_split": self.val_split,
            "test_split": self.test_split,
            "seed": self.seed,
            "labels_csv": str(self.labels_csv) if self.labels_csv else None,
            "counts": {name: split.counts(len(self.classes)) for name, split in self.splits.items()},
            "skipped": len(self.skipped),
            "skipped_examples": [f"{f}: {why}" for f, why in self.skipped[:10]],
        }

    def modalities(self, limit: int = 200) -> tuple[str, ...]:
        """The DICOM Modality codes of (up to `limit` of) a DICOM dataset's files, read from the
        headers only; () for .npz files and image folders, which do not say."""
        if self.format != "dicom":
            return ()
        import pydicom
        from pydicom.errors import InvalidDicomError

        codes = set()
        for source in list(self._display.values())[:limit]:
            try:
                header = pydicom.dcmread(source, stop_before_pixels=True, specific_tags=["Modality"])
            except (OSError, InvalidDicomError, ValueError):
                continue
            codes.add(str(header.get("Modality", "") or "").strip().upper())
        return tuple(sorted(code for code in codes if code))

    def display_pixels(self, name: str) -> np.ndarray:
        """The display pixels (before preprocessing) of one sample, for the sample-image plot."""
        source = self._display.get(name)
        if source is None:
            raise KeyError(name)
        if isinstance(source, np.ndarray):
            return to_display_pixels(source, name)
        return decode_image(source, name=name).pixels


def load_dataset(path=None, classes=None, spec: PreprocessSpec | None = None, val_split: float = 0.1,
                 test_split: float = 0.1, seed: int = 0, labels_csv=None, class_map: dict | None = None) -> Dataset:
    """Load any supported dataset; None = the bundled PneumoniaMNIST (classes normal, pneumonia).

    Folder and label names match `classes` ignoring case; `class_map` maps other names
    ({"NORMAL": "normal", "bacteria": "pneumonia", ...}) and needs `classes`.
    """
    path = Path(path if path is not None else PNEUMONIAMNIST).expanduser().resolve()
    spec = spec or PreprocessSpec()
    classes = _parse_classes(classes)
    if class_map:
        if classes is None:
            raise InputError("--class-map needs the class names (--classes, or a run to evaluate)")
        unknown = [target for target in class_map.values() if target not in classes]
        if unknown:
            raise InputError(f"--class-map: {unknown[0]!r} is not a class ({', '.join(classes)})")
    if not path.exists():
        raise InputError(f"{path}: dataset not found")
    if path.is_file():
        if path.suffix.lower() != ".npz":
            raise InputError(f"{path}: not a dataset (expected a .npz file, an image folder tree or a DICOM folder with {LABELS_CSV})")
        if classes is None and path == Path(PNEUMONIAMNIST).resolve():
            classes = list(PNEUMONIAMNIST_CLASSES)
        dataset = _load_npz(path, classes, spec, val_split, test_split, seed)
    elif labels_csv is not None or (path / LABELS_CSV).is_file():
        csv_path = Path(labels_csv).expanduser().resolve() if labels_csv else path / LABELS_CSV
        dataset = _load_dicom_folder(path, csv_path, classes, spec, val_split, test_split, seed, class_map)
    else:
        dataset = _load_folder_tree(path, classes, spec, val_split, test_split, seed, class_map)
    _check(dataset)
    return dataset


# --------------------------------------------------------------------------- formats


def _load_npz(path, classes, spec, val_split, test_split, seed) -> Dataset:
    try:
        archive = np.load(path, allow_pickle=False)
        arrays = {key: archive[key] for key in archive.files}
    except Exception as error:
        raise InputError(f"{path}: not a readable .npz file ({type(error).__name__}: {error})") from None
    if "train_images" not in arrays or "train_labels" not in arrays:
        raise InputError(f"{path}: .npz needs train_images and train_labels (MedMNIST layout), found {', '.join(sorted(arrays)) or 'nothing'}")
    raw = {}
    for split in SPLITS:
        images, labels = arrays.get(f"{split}_images"), arrays.get(f"{split}_labels")
        if images is None and labels is None:
            continue
        if images is None or labels is None:
            raise InputError(f"{path}: has {split}_{'labels' if images is None else 'images'} but not {split}_{'images' if images is None else 'labels'}")
        labels = np.asarray(labels).reshape(len(labels), -1)
        if labels.shape[1] != 1:
            raise InputError(f"{path}: {split}_labels has shape {labels.shape}; expected one label per image (multi-label data is not supported)")
        labels = labels[:, 0]
        if len(images) != len(labels):
            raise InputError(f"{path}: mismatched shapes: {split}_images has {len(images)} images but {split}_labels has {len(labels)} labels")
        if images.ndim not in (3, 4):
            raise InputError(f"{path}: {split}_images has shape {images.shape}; expected (N, H, W) or (N, H, W, C)")
        raw[split] = (images, labels)
    shapes = {split: images.shape[1:] for split, (images, _) in raw.items()}
    if len(set(shapes.values())) > 1:
        detail = ", ".join(f"{s} {shape}" for s, shape in shapes.items())
        raise InputError(f"{path}: mismatched shapes between splits ({detail})")
    if not np.issubdtype(raw["train"][1].dtype, np.integer):
        raise InputError(f"{path}: labels must be integers, not {raw['train'][1].dtype}")
    n_labels = int(max(labels.max() for _, labels in raw.values() if len(labels))) + 1
    if classes is None:
        classes = [f"class{i}" for i in range(max(n_labels, 2))]
    for split, (_, labels) in raw.items():
        bad = np.flatnonzero((labels < 0) | (labels >= len(classes)))
        if len(bad):
            raise InputError(f"{path}: {split}[{bad[0]}] has label {labels[bad[0]]}, not in classes "
                             f"0..{len(classes) - 1} ({', '.join(classes)})")
    display = {}
    samples = {}
    for split, (images, labels) in raw.items():
        names = [f"{split}[{i}]" for i in range(len(labels))]
        samples[split] = (list(images), labels.astype(np.int64), names)
        display.update(zip(names, images))
    splits = _complete_splits(samples, spec, val_split, test_split, seed)
    return Dataset(path, "npz", list(classes), spec, splits, val_split, test_split, seed, _display=display)


def _load_folder_tree(path, classes, spec, val_split, test_split, seed, class_map=None) -> Dataset:
    skipped: list[tuple[str, str]] = []
    subdirs = {p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")}
    has_splits = "train" in subdirs or bool(subdirs) and subdirs <= set(SPLITS)
    if has_splits:
        unexpected = sorted(subdirs - set(SPLITS))
        if unexpected:
            raise InputError(f"{path / unexpected[0]}: unexpected folder beside train/ (a split tree holds only train, val, test)")
        roots = {split: path / split for split in SPLITS if split in subdirs}
    else:
        roots = {"train": path}
    found_classes = sorted({p.name for root in roots.values() for p in root.iterdir()
                            if p.is_dir() and not p.name.startswith(".")})
    if not found_classes:
        raise InputError(f"{path}: no class folders found (expected {path}/<class>/*.png or {path}/train/<class>/*.png)")
    if classes is None:
        classes = found_classes
    folders_by_root = {split: {} for split in roots}  # split -> class index -> [folders]
    for split, root in roots.items():
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            index = label_index(folder.name, classes, class_map, folder)
            folders_by_root[split].setdefault(index, []).append(folder)
    for folder in {path, *roots.values()}:
        skipped += [(str(f.relative_to(path)), "not in a class folder") for f in sorted(folder.iterdir()) if f.is_file()]
    samples = {}
    for split, root in roots.items():
        files, labels = [], []
        for index, name in enumerate(classes):
            folders = folders_by_root[split].get(index)
            if not folders:
                if split == "train":
                    raise InputError(f"{root / name}: empty class {name!r} (folder missing)")
                continue
            class_files = []
            for folder in folders:
                for file in sorted(folder.rglob("*")):
                    if file.is_dir():
                        continue
                    if file.name.startswith(".") or file.suffix.lower() not in IMAGE_SUFFIXES + DICOM_SUFFIXES:
                        skipped.append((str(file.relative_to(path)), "not an image file"))
                        continue
                    class_files.append(file)
            if not class_files and split == "train":
                raise InputError(f"{folders[0]}: empty class {name!r} (no images)")
            files += class_files
            labels += [index] * len(class_files)
        samples[split] = (files, np.asarray(labels, dtype=np.int64), [str(f.relative_to(path)) for f in files])
    display = {name: file for files, _, names in samples.values() for file, name in zip(files, names)}
    splits = _complete_splits(samples, spec, val_split, test_split, seed)
    return Dataset(path, "folder", list(classes), spec, splits, val_split, test_split, seed,
                   skipped=skipped, _display=display)


def _load_dicom_folder(path, csv_path, classes, spec, val_split, test_split, seed, class_map=None) -> Dataset:
    if not csv_path.is_file():
        raise InputError(f"{csv_path}: labels file not found")
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
            header = [h.strip().lower() for h in (rows[0].keys() if rows else [])]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise InputError(f"{csv_path}: cannot read labels ({error})") from None
    if not rows:
        raise InputError(f"{csv_path}: no rows (expected a header 'file,label' and one row per image)")
    if "file" not in header or "label" not in header:
        raise InputError(f"{csv_path}: header must have columns file,label (found {','.join(header)})")
    rows = [{k.strip().lower(): (v or "").strip() for k, v in row.items() if k} for row in rows]
    labels_seen = sorted({row["label"] for row in rows})
    if classes is None:
        classes = labels_seen
    by_split: dict[str, list] = {}
    listed = set()
    for line, row in enumerate(rows, start=2):
        file = (path / row["file"]).resolve() if not Path(row["file"]).is_absolute() else Path(row["file"])
        if not row["file"]:
            raise InputError(f"{csv_path}:{line}: empty file name")
        label = label_index(row["label"], classes, class_map, f"{csv_path}:{line}: {row['file']}")
        if not file.is_file():
            raise InputError(f"{csv_path}:{line}: {row['file']}: file not found")
        split = row.get("split") or "train"
        if split not in SPLITS:
            raise InputError(f"{csv_path}:{line}: split {split!r} must be one of {', '.join(SPLITS)}")
        by_split.setdefault(split, []).append((file, label, row["file"]))
        listed.add(file)
    for name in classes:
        if not any(label == classes.index(name) for entries in by_split.values() for _, label, _ in entries):
            raise InputError(f"{csv_path}: empty class {name!r} (no rows with this label)")
    for file in sorted(path.rglob("*")):
        if file.is_file() and file.resolve() not in listed and file.resolve() != csv_path:
            skipped_reason = "not listed in labels.csv"
            by_split.setdefault("_skipped", []).append((str(file.relative_to(path)), skipped_reason))
    skipped = by_split.pop("_skipped", [])
    samples = {split: ([e[0] for e in entries], np.asarray([e[1] for e in entries], dtype=np.int64),
                       [e[2] for e in entries]) for split, entries in by_split.items()}
    display = {name: file for files, _, names in samples.values() for file, name in zip(files, names)}
    splits = _complete_splits(samples, spec, val_split, test_split, seed)
    return Dataset(path, "dicom", list(classes), spec, splits, val_split, test_split, seed,
                   labels_csv=csv_path, skipped=skipped, _display=display)


# --------------------------------------------------------------------------- helpers


def _complete_splits(samples: dict, spec, val_split, test_split, seed) -> dict[str, Split]:
    """Preprocess every split; carve missing val/test splits out of train, stratified, seeded."""
    if "train" not in samples:  # evaluation-only data (e.g. a tree with just test/)
        return {name: Split(_preprocess_all(items, names, spec), np.asarray(labels, dtype=np.int64), list(names))
                for name, (items, labels, names) in samples.items()}
    train_items, train_labels, train_names = samples["train"]
    rng = np.random.default_rng(seed)
    carve = {name: fraction for name, fraction in (("test", test_split), ("val", val_split))
             if name not in samples and fraction > 0}
    assignment = np.zeros(len(train_labels), dtype=np.int8)  # 0 train, 1 val, 2 test
    for label in np.unique(train_labels):
        members = rng.permutation(np.flatnonzero(train_labels == label))
        start = 0
        for code, name in ((2, "test"), (1, "val")):
            if name in carve:
                count = int(round(carve[name] * len(members)))
                assignment[members[start:start + count]] = code
                start += count
    out = {}
    for code, name in ((0, "train"), (1, "val"), (2, "test")):
        if name in samples and name != "train":
            items, labels, names = samples[name]
        elif name == "train" or name in carve:
            chosen = np.flatnonzero(assignment == code)
            items = [train_items[i] for i in chosen]
            labels, names = train_labels[chosen], [train_names[i] for i in chosen]
        else:
            continue
        out[name] = Split(_preprocess_all(items, names, spec), np.asarray(labels, dtype=np.int64), list(names))
    return out


def label_index(label: str, classes: list[str], class_map: dict | None, where) -> int:
    """The class index of a folder or label name: exact, then --class-map, then ignoring case
    (the Kermany chest X-ray folders are NORMAL/PNEUMONIA, PneumoniaMNIST's classes lower case)."""
    name = (class_map or {}).get(label, label)
    if name in classes:
        return classes.index(name)
    matches = [index for index, known in enumerate(classes) if known.casefold() == name.casefold()]
    if len(matches) == 1:
        return matches[0]
    raise InputError(f"{where}: label {label!r} not in classes ({', '.join(classes)}); "
                     f"map it with --class-map {label}=CLASS")


def _preprocess_all(items, names, spec: PreprocessSpec) -> np.ndarray:
    x = np.empty((len(items),) + spec.input_shape, dtype=np.float32)
    for index, (item, name) in enumerate(zip(items, names)):
        # spec: a JPEG decodes reduced exactly as on the device (PreprocessSpec.jpeg_reduction)
        pixels = (decode_image(item, name=str(item), spec=spec).pixels if isinstance(item, Path)
                  else to_display_pixels(item, name))
        x[index] = preprocess(pixels, spec)
    return x


def _check(dataset: Dataset) -> None:
    if len(dataset.classes) < 2:
        raise InputError(f"{dataset.path}: need at least 2 classes, found {len(dataset.classes)} ({', '.join(dataset.classes)})")
    if len(set(dataset.classes)) != len(dataset.classes):
        raise InputError(f"{dataset.path}: duplicate class names in {', '.join(dataset.classes)}")
    if "train" not in dataset.splits:
        return
    counts = dataset.splits["train"].counts(len(dataset.classes))
    for name, count in zip(dataset.classes, counts):
        if count == 0:
            raise InputError(f"{dataset.path}: empty class {name!r} (no training images)")


def _parse_classes(classes) -> list[str] | None:
    if classes is None:
        return None
    if isinstance(classes, str):
        classes = classes.split(",")
    names = [str(c).strip() for c in classes if str(c).strip()]
    return names or None
