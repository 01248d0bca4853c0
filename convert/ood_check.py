"""The conversion gate's out-of-distribution check (`medge convert --ood refuse|warn|off`).

Fits the bundle's OOD reference (convert/ood_reference.py) on the device's own features (the
default model file through the device runtime: the scores the device will compute), then
measures it on the sets of convert/ood_sets.py and on real in-distribution images:

- AUROC per OOD set (in-distribution = the run's test split),
- acceptance of the test split and, for a PneumoniaMNIST model, of every bundled full-size
  chest X-ray JPEG (data/chest_xray_samples),
- rank agreement (Spearman) of every model file's OOD scores with the float Keras model's.

Under a floor (OodLimits; defaults in docs/convert.md) the gate fails (exit 3) in mode
"refuse"; "warn" records the same figures as warnings; "off" fits nothing (no guard).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from medge.edge.ood import DEFAULT_ACCEPTANCE, METHOD, MODES
from medge.edge.preprocess import decode_image, preprocess

from .ood_reference import (
    VARIANT_TRAIN_IMAGES,
    display_variants,
    feature_kind,
    fit_reference,
    float_features,
    write_reference,
)
from .ood_sets import ood_sets

TRANSFORMED = ("rotated", "inverted", "cropped")  # near-OOD: a rotated fundus is still a fundus
ID_SAMPLES = 300  # test images the transformed sets are made from
BATCH = 64


@dataclass
class OodLimits:
    mode: str = "refuse"  # refuse: fail under a floor; warn: record only; off: no guard
    acceptance: float = DEFAULT_ACCEPTANCE  # share of validation images the threshold keeps
    min_auroc: float = 0.90  # every set but the transformed ones
    min_auroc_transformed: float = 0.0  # rotated/inverted/cropped: reported, not gated by default
    min_test_acceptance: float = 0.95  # nominal 0.98 minus sampling noise on a few hundred images
    min_full_size_acceptance: float = 1.0  # every bundled full-size chest X-ray (chest models)
    min_rank_agreement: float = 0.95  # Spearman, int8 vs float OOD scores

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"--ood must be one of {', '.join(MODES)}, not {self.mode!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """P(an OOD image scores above an in-distribution one), ties counted half (Mann-Whitney)."""
    from medge.train.evaluate import roc_auc

    scores = np.concatenate([in_scores, out_scores]).astype(np.float64)
    scores = np.where(np.isfinite(scores), scores, np.finfo(np.float64).max)
    return roc_auc(np.r_[np.zeros(len(in_scores)), np.ones(len(out_scores))], scores)


def device_scores(guard, predictor, spec, images: list[np.ndarray]) -> np.ndarray:
    """Each display image's score as the device computes it: an exact check that refuses the
    image (flat, colour) ranks it above every distance (inf)."""
    scores = []
    for start in range(0, len(images), BATCH):
        chunk = images[start:start + BATCH]
        inputs = np.stack([preprocess(image, spec) for image in chunk])
        _, features = predictor.predict_with_features(inputs)
        for image, model_input, row in zip(chunk, inputs, features):
            verdict = guard.judge(row, image, model_input)
            scores.append(np.inf if verdict.out and verdict.check != "features" else verdict.score)
    return np.asarray(scores, dtype=np.float64)


def device_features(predictor, x: np.ndarray) -> np.ndarray:
    return np.concatenate([predictor.predict_with_features(x[i:i + BATCH])[1] for i in range(0, len(x), BATCH)])


def run_ood_check(run, dataset, model, staging: Path, records: list[dict], limits: OodLimits,
                  other_datasets: tuple = (), full_size: list[Path] = (),
                  own_modalities: tuple[str, ...] = ()) -> tuple[dict | None, dict, list[str]]:
    """(manifest `ood` section or None, report, failures). Writes ood.npz into `staging`.
    `own_modalities`: the model's own DICOM modalities (declared, or read from its DICOM training
    files), whose OOD set is left out."""
    from medge.edge.runtime import create_predictor

    if limits.mode == "off":
        return None, {"mode": "off"}, []
    if not records or "ood_features" not in records[0]:
        return None, {"mode": limits.mode, "skipped": "the model does not end in a Dense layer: no feature space"}, []
    spec = run.spec
    train, val, test = dataset.splits["train"], dataset.splits.get("val"), dataset.splits["test"]
    if val is None or len(val) == 0:
        val = train  # no validation split: the threshold falls back to training images (stated in the report)
    predictor = create_predictor(staging / records[0]["file"], runtime=records[0]["runtime"])
    display = _display(dataset, train.names[:500])
    # Training and validation images plus one display variant each (convert/ood_reference.py says why).
    varied = np.random.default_rng(1).permutation(len(train))[:VARIANT_TRAIN_IMAGES]
    train_variants = _inputs(display_variants(_display(dataset, [train.names[i] for i in varied]), seed=1), spec)
    val_variants = _inputs(display_variants(_display(dataset, val.names), seed=2), spec)
    reference = fit_reference(device_features(predictor, np.concatenate([train.x, train_variants])),
                              device_features(predictor, np.concatenate([val.x, val_variants])), display,
                              spec.channels, limits.acceptance, train_inputs=train.x)
    # The stated acceptance holds for the validation images and their variants; report the plain images' share.
    reference.validation_acceptance = float(np.mean(guard_distances(reference, predictor, val.x)
                                                    <= reference.threshold))
    write_reference(reference, staging)
    guard = reference.guard()

    rng = np.random.default_rng(0)
    test_names = [test.names[i] for i in rng.permutation(len(test))[:ID_SAMPLES]]
    test_display = _display(dataset, test.names)
    in_scores = device_scores(guard, predictor, spec, test_display)
    sample_display = _display(dataset, test_names)
    report = {"mode": limits.mode, "method": METHOD, "features": feature_kind(model), "limits": limits.to_dict(),
              "threshold": reference.threshold, "validation_acceptance": reference.validation_acceptance,
              "test_acceptance": float(np.mean(in_scores <= reference.threshold)), "n_test": len(in_scores),
              "auroc": {}, "n_images": {}, "acceptance": {}}
    sets = ood_sets(sample_display, None, colour=spec.channels == 3, own_modalities=own_modalities)
    if own_modalities:
        report["own_modalities"] = [m.upper() for m in own_modalities]
    for index, other in enumerate(other_datasets):
        from .ood_sets import other_dataset

        sets[f"other_dataset{'' if index == 0 else index + 1}"] = lambda other=other: other_dataset(other)
    float_pairs = []
    for name, build in sets.items():
        images = build()
        if not images:
            continue
        scores = device_scores(guard, predictor, spec, images)
        report["auroc"][name] = auroc(in_scores, scores)
        report["n_images"][name] = len(images)
        report["acceptance"][name] = float(np.mean(scores <= reference.threshold))  # OOD images let through
        float_pairs.append(images[:50])
    if full_size:
        scores = device_scores(guard, predictor, spec, [decode_image(path).pixels for path in full_size])
        report["full_size_acceptance"] = float(np.mean(scores <= reference.threshold))
        report["full_size_scores"] = [round(float(s), 3) for s in scores]
    # int8 vs float: the same reference on the float Keras features, ranked on the gate's images.
    probe = test_display[:200] + [image for images in float_pairs for image in images]
    x_probe = np.stack([preprocess(image, spec) for image in probe])
    float_scores = guard.distances(float_features(model, x_probe))
    report["rank_agreement"] = {}
    from medge.train.evaluate import rank_correlation

    for record in records:
        if "ood_features" not in record:
            continue
        other = create_predictor(staging / record["file"], runtime=record["runtime"])
        report["rank_agreement"][record["format"]] = rank_correlation(float_scores,
                                                                      guard.distances(device_features(other, x_probe)))
    failures = _floors(report, limits)
    report["failures"] = failures
    section = reference.manifest_section()
    section["features"] = report["features"]
    section["fitted_on"]["display_variants"] = True  # counts above include one variant per varied image
    section["gate"] = {key: report[key] for key in ("auroc", "test_acceptance", "rank_agreement", "n_test")
                       if key in report}
    if "full_size_acceptance" in report:
        section["gate"]["full_size_acceptance"] = report["full_size_acceptance"]
    return section, report, failures if limits.mode == "refuse" else []


def _floors(report: dict, limits: OodLimits) -> list[str]:
    failures = []
    for name, value in report["auroc"].items():
        floor = limits.min_auroc_transformed if name in TRANSFORMED else limits.min_auroc
        if value < floor:
            hint = (f" (a model built for {name.removeprefix('modality_').upper()} images: declare it with --modality)"
                    if name.startswith("modality_") else "")
            failures.append(f"ood: AUROC on {name} {value:.4f} < floor {floor}{hint}")
    if report["test_acceptance"] < limits.min_test_acceptance:
        failures.append(f"ood: test-split acceptance {report['test_acceptance']:.2%} < floor "
                        f"{limits.min_test_acceptance:.2%}")
    if "full_size_acceptance" in report and report["full_size_acceptance"] < limits.min_full_size_acceptance:
        failures.append(f"ood: full-size chest X-ray acceptance {report['full_size_acceptance']:.2%} < floor "
                        f"{limits.min_full_size_acceptance:.2%}")
    for fmt, value in report["rank_agreement"].items():
        if not value >= limits.min_rank_agreement:
            failures.append(f"ood: {fmt} OOD score rank agreement with float {value:.4f} < floor "
                            f"{limits.min_rank_agreement}")
    return failures


def guard_distances(reference, predictor, x: np.ndarray) -> np.ndarray:
    return reference.guard().distances(device_features(predictor, x))


def _inputs(images: list[np.ndarray], spec) -> np.ndarray:
    return np.stack([preprocess(image, spec) for image in images])


def _display(dataset, names) -> list[np.ndarray]:
    return [dataset.display_pixels(name) for name in names]


def default_other_datasets(run) -> tuple:
    """The bundled MedMNIST datasets other than the run's own (fundus vs chest and the reverse)."""
    from medge.data import PNEUMONIAMNIST, RETINAMNIST

    own = _run_data_path(run)
    own = Path(own).resolve() if own else None
    return {PNEUMONIAMNIST: (RETINAMNIST,), RETINAMNIST: (PNEUMONIAMNIST,)}.get(own, ())


def default_full_size(run) -> list[Path]:
    """The bundled full-size chest X-rays, for a model trained on the bundled PneumoniaMNIST."""
    from medge.data import PNEUMONIAMNIST, chest_xray_sample_files

    own = _run_data_path(run)
    return chest_xray_sample_files() if own is not None and Path(own).resolve() == PNEUMONIAMNIST else []


def _run_data_path(run):
    data = run.metrics.get("data") or {}
    return data.get("path")
