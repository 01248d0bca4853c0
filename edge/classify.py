"""An input -> a decision: the one function (`analyse`) `medge predict` and the daemon both call.

Keeping the decode, the applicability check, the preprocessing, the runtime call, the
threshold rule and the choice among a multi-frame input's frames in one place is what makes
`medge predict IMAGE` and the daemon's published result identical for the same image.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from .bundle import Artifact, Bundle
from .decision import decision_for
from .errors import BundleError, InputError
from .ood import DEFAULT_MODE, OodGuard, OodVerdict, check_mode, screen
from .preprocess import DecodedImage, decoding_for, preprocess
from .runtime import Predictor, create_predictor


@dataclass
class Classification:
    label: str
    score: float  # binary: P(positive class); multi-class: probability of `label`
    threshold: float | None  # binary only
    positive: bool
    probabilities: dict[str, float]
    timing_ms: dict[str, float]  # "preprocess", "inference"
    # What the model saw, kept so an explanation (edge/explain.py) needs no second preprocessing;
    # never part of a result (to_dict, payloads).
    model_input: np.ndarray | None = field(default=None, repr=False, compare=False)
    # "positive"/"negative"/"refer" (binary) or the class name/"refer" (multi-class): the
    # bundle's refer band applied to the calibrated probabilities (edge/decision.py).
    decision: str | None = None
    # The OOD guard's verdict (edge/ood.py); None when the bundle has no reference or mode is off.
    ood: OodVerdict | None = None

    def to_dict(self) -> dict:
        return {key: value for key, value in asdict(self).items() if key != "model_input"}


def decide(probabilities: np.ndarray, classes: list[str], task: str, threshold: float | None,
           positive_class: str | None) -> tuple[str, float, bool]:
    """One image's probabilities (K,) -> (label, score, positive), by the bundle's rule.

    Binary: score = P(positive class), positive when score >= threshold. Multi-class: the
    most probable class; positive when it is not the first (reference) class.
    """
    if task == "binary":
        positive_index = classes.index(positive_class)
        negative_index = 1 - positive_index
        score = float(probabilities[positive_index])
        positive = score >= threshold
        return classes[positive_index if positive else negative_index], score, positive
    index = int(np.argmax(probabilities))
    return classes[index], float(probabilities[index]), index != 0


def abnormality(probabilities: dict[str, float], classes: list[str], task: str, positive_class: str | None) -> float:
    """How strongly one image points away from normal, by the same rule as `decide`: binary,
    P(positive class); multi-class, 1 - P(the first, reference class)."""
    if task == "binary":
        return probabilities.get(positive_class, 0.0)
    return 1.0 - probabilities.get(classes[0], 0.0)


class Classifier:
    """A loaded bundle's model, ready to classify display pixels one image at a time."""

    @classmethod
    def for_config(cls, bundle: Bundle, config) -> Classifier:
        """The daemon's classifier for `bundle`: runtime, threads and OOD mode from the edge
        config (one place, so a bundle switched in by the fleet runs exactly as the first)."""
        return cls(bundle, runtime=config.runtime.runtime, threads=config.runtime.threads,
                   ood_mode=config.ood.mode)

    def __init__(self, bundle: Bundle, runtime: str | None = None, threads: int | None = None,
                 format: str | None = None, ood_mode: str = DEFAULT_MODE):
        self.bundle = bundle
        self.artifact: Artifact = bundle.artifact(format)
        self.spec = bundle.spec
        self.predictor: Predictor = create_predictor(self.artifact, runtime=runtime, threads=threads)
        # A model whose output does not match the class list would mislabel (or crash) on every image.
        width, n_classes = int(self.predictor.output.shape[-1]), len(bundle.classes)
        if width > 0 and width != n_classes and not (width == 1 and n_classes == 2):
            raise BundleError(f"{bundle.path}: the model outputs {width} values but the bundle lists "
                              f"{n_classes} classes ({', '.join(bundle.classes)})")
        self.ood_mode = check_mode(ood_mode)
        self.ood: OodGuard | None = None if ood_mode == "off" else OodGuard.from_bundle(bundle)
        features = getattr(self.predictor, "features", None)
        if self.ood is not None and (features is None or int(features.shape[-1]) != self.ood.feature_dim):
            raise BundleError(f"{self.artifact.file.name}: the bundle has an OOD reference of "
                              f"{self.ood.feature_dim} features but the model file gives "
                              f"{'none' if features is None else int(features.shape[-1])}")

    @property
    def runtime_name(self) -> str:
        return self.predictor.runtime_name

    def classify(self, pixels: np.ndarray, name: str = "input") -> Classification:
        """One image's decision. A model answering NaN or infinity is an InputError: such a
        number must never be published (nor compared with a threshold)."""
        started = time.perf_counter()
        model_input = preprocess(pixels, self.spec)
        prepared = time.perf_counter()
        verdict = None
        if self.ood is None:
            probabilities = self.predictor.predict(model_input[np.newaxis])[0]
        else:
            probabilities, features = self.predictor.predict_with_features(model_input[np.newaxis])
            probabilities = probabilities[0]
            if np.all(np.isfinite(features)):
                verdict = self.ood.judge(features[0], pixels, model_input)
        finished = time.perf_counter()
        if not np.all(np.isfinite(probabilities)):
            bad = next(float(p) for p in probabilities if not math.isfinite(float(p)))
            raise InputError(f"{name}: the model returned a non-finite score ({bad}) for this image: "
                             "refused, no result is given for it")
        bundle = self.bundle
        label, score, positive = decide(probabilities, bundle.classes, bundle.task, bundle.threshold,
                                        bundle.positive_class)
        return Classification(
            label=label,
            score=score,
            threshold=bundle.threshold if bundle.task == "binary" else None,
            positive=bool(positive),
            probabilities={name: float(p) for name, p in zip(bundle.classes, probabilities)},
            timing_ms={"preprocess": round((prepared - started) * 1000, 3),
                       "inference": round((finished - prepared) * 1000, 3)},
            model_input=model_input,
            decision=decision_for(probabilities, bundle.classes, bundle.task, bundle.threshold, bundle.positive_class,
                                  getattr(bundle.manifest, "decision", None)),
            ood=verdict,
        )


# --------------------------------------------------------------------------- one whole input

FRAME_POLICIES = ("first", "all", "max")
MIN_SIDE = 8  # below this many pixels on a side an image carries too little to classify


@dataclass
class FrameResult:
    index: int
    classification: Classification
    preprocess_ms: float  # summed over every frame looked at, for policy "max"
    inference_ms: float


@dataclass
class Analysis:
    """One input's outcome: not applicable (with a reason), or the classified frame(s)."""

    decoded: DecodedImage
    decode_ms: float
    policy: str  # the frame policy applied; "first" for a single-frame input
    frames: list[FrameResult] = field(default_factory=list)
    not_applicable: str | None = None
    warnings: list[str] = field(default_factory=list)  # degenerate input: classified, but say so
    ood: dict | None = None  # not_applicable / out_of_distribution: the refused frame's {score, threshold}

    @property
    def frame_count(self) -> int:
        return len(self.decoded.frames)


def analyse(classifier: Classifier, load: Callable[[], DecodedImage], frames: str = "first",
            name: str = "input", peek: Callable[[], DecodedImage | None] | None = None) -> Analysis:
    """Decode (`load`), check the bundle's scope, classify the frames the policy names and keep
    the one(s) it selects. Raises MedgeError for a bad input, naming it `name`.

    `peek` (optional) returns the input's header facts without pixels: an input outside the
    model's scope is then answered not_applicable without being decoded at all."""
    if frames not in FRAME_POLICIES:
        raise ValueError(f"unknown frame policy {frames!r}")
    bundle = classifier.bundle
    started = time.perf_counter()
    header = peek() if peek is not None else None
    if header is not None:
        reason = bundle.not_applicable_reason(header.modality, header.body_part)
        if reason is not None:
            return Analysis(decoded=header, decode_ms=(time.perf_counter() - started) * 1000.0,
                            policy="first", not_applicable=reason)
    with decoding_for(bundle.spec):  # a source's decoder decodes for this model (reduced JPEG)
        decoded = load()
    analysis = Analysis(decoded=decoded, decode_ms=(time.perf_counter() - started) * 1000.0,
                        policy=frames if len(decoded.frames) > 1 else "first")
    analysis.not_applicable = bundle.not_applicable_reason(decoded.modality, decoded.body_part)
    if analysis.not_applicable is not None:
        return analysis
    indices = [0] if analysis.policy == "first" else range(len(decoded.frames))
    classified = [(index, classifier.classify(decoded.frames[index], name=name)) for index in indices]
    classified, ood_warnings, analysis.ood = screen(classified, getattr(classifier, "ood_mode", DEFAULT_MODE))
    if not classified:  # every frame out of distribution: never a class for it
        analysis.not_applicable = "out_of_distribution"
        return analysis
    analysis.frames = select_frames(classified, analysis.policy, bundle)
    analysis.warnings = degenerate_image_warnings(decoded.frames[analysis.frames[0].index]) + ood_warnings
    return analysis


def select_frames(classified: list[tuple[int, Classification]], policy: str, bundle: Bundle) -> list[FrameResult]:
    """The frame(s) a policy reports: "first"/"all" each one classified; "max" the single most
    abnormal frame by the decision rule (`abnormality`), with the time spent on every frame."""
    results = [FrameResult(index, c, c.timing_ms.get("preprocess", 0.0), c.timing_ms.get("inference", 0.0))
               for index, c in classified]
    if policy != "max":
        return results
    best = max(results, key=lambda r: abnormality(r.classification.probabilities, bundle.classes, bundle.task,
                                                  bundle.positive_class))
    return [FrameResult(best.index, best.classification, sum(r.preprocess_ms for r in results),
                        sum(r.inference_ms for r in results))]


def degenerate_image_warnings(pixels: np.ndarray) -> list[str]:
    """Why an image that decoded fine is still no picture to judge (a 1x1 image, a flat one)."""
    warnings = []
    height, width = pixels.shape[:2]
    if min(height, width) < MIN_SIDE:
        warnings.append(f"image is only {width}x{height} pixels: too small to classify meaningfully")
    low, high = int(pixels.min()), int(pixels.max())
    if low == high:
        warnings.append(f"image is flat (every pixel has the value {low}): there is nothing to classify")
    return warnings
