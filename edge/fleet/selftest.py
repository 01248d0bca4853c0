"""The on-device self-test: the bundle's reference set run on this device's own runtime.

`medge convert` stores in the bundle (`selftest.npz`, listed in the manifest's files, so it is
signed) ~32 preprocessed validation inputs and, per model file, the calibrated probabilities
that model gave on the edge runtime at conversion. The device runs the same inputs through the
runtime it will use and refuses the bundle when any probability differs by more than the
manifest's tolerance or any decision differs: runtime, library and hardware differences that
no test on the workstation can see. Layout of the file: `inputs` (N, H, W, C) float32 and
`expected_<format>` (N, K) float32 for every model file's format.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..classify import decide
from ..errors import BundleError

SELFTEST_NAME = "selftest.npz"
DEFAULT_TOLERANCE = 0.02
BATCH = 32


def expected_key(format_name: str) -> str:
    return f"expected_{format_name}"


@dataclass(frozen=True)
class SelfTestResult:
    passed: bool
    inputs: int
    max_abs_diff: float
    tolerance: float
    disagreements: int
    runtime: str

    @property
    def reason(self) -> str:
        verdict = "passed" if self.passed else "failed"
        return (f"self-test {verdict} on {self.runtime}: {self.inputs} reference inputs, max |score diff| "
                f"{self.max_abs_diff:.4f} (tolerance {self.tolerance:g}), {self.disagreements} decision(s) differ")


def predict_all(classifier, inputs: np.ndarray) -> np.ndarray:
    return np.concatenate([classifier.predictor.predict(inputs[start:start + BATCH])
                           for start in range(0, len(inputs), BATCH)])


def decisions(probabilities: np.ndarray, bundle) -> list[str]:
    return [decide(row, bundle.classes, bundle.task, bundle.threshold, bundle.positive_class)[0]
            for row in probabilities]


def run_self_test(classifier) -> SelfTestResult | None:
    """Run a loaded Classifier's bundle self-test; None when the bundle carries none (older
    bundles). Raises BundleError when the reference file does not fit the model."""
    bundle = classifier.bundle
    section = getattr(bundle.manifest, "self_test", None)  # a dict: {file, tolerance, inputs}
    if not section:
        return None
    path = Path(bundle.path) / section["file"]
    try:
        with np.load(path, allow_pickle=False) as data:
            inputs = np.asarray(data["inputs"], dtype=np.float32)
            key = expected_key(classifier.artifact.format)
            if key not in data:
                raise BundleError(f"{path.name}: no expected scores for the {classifier.artifact.format} model")
            expected = np.asarray(data[key], dtype=np.float32)
    except (OSError, ValueError, KeyError) as error:
        raise BundleError(f"{path.name}: unreadable self-test reference set ({error})") from None
    if len(inputs) == 0 or expected.shape[0] != len(inputs):
        raise BundleError(f"{path.name}: {len(inputs)} inputs but {expected.shape[0]} expected score rows")
    got = predict_all(classifier, inputs)
    if got.shape != expected.shape:
        raise BundleError(f"{path.name}: the model gives {got.shape[1:]} scores per input, the reference "
                          f"set {expected.shape[1:]}")
    diff = float(np.max(np.abs(got - expected)))
    differ = sum(a != b for a, b in zip(decisions(got, bundle), decisions(expected, bundle)))
    tolerance = float(section["tolerance"])
    return SelfTestResult(passed=bool(diff <= tolerance and differ == 0), inputs=len(inputs), max_abs_diff=diff,
                          tolerance=tolerance, disagreements=int(differ), runtime=classifier.runtime_name)


def write_self_test(folder: Path, classifiers: list, inputs: np.ndarray, name: str = SELFTEST_NAME) -> None:
    """Write the reference set into a bundle folder being built (before its manifest is
    written, so the file is hashed and signed): `inputs` and each classifier's probabilities."""
    inputs = np.asarray(inputs, dtype=np.float32)
    arrays = {"inputs": inputs}
    for classifier in classifiers:
        arrays[expected_key(classifier.artifact.format)] = predict_all(classifier, inputs).astype(np.float32)
    with open(Path(folder) / name, "wb") as handle:
        np.savez(handle, **arrays)


def choose_inputs(probabilities: np.ndarray, bundle, count: int, tolerance: float) -> np.ndarray:
    """Indices of up to `count` inputs spread over the score range whose decision is clear of
    the threshold by more than the tolerance (else a legitimate in-tolerance difference could
    flip a decision and fail the test)."""
    if bundle.task == "binary":
        score = probabilities[:, bundle.classes.index(bundle.positive_class)]
        margin = np.abs(score - bundle.threshold)
    else:
        ordered = np.sort(probabilities, axis=1)
        score, margin = ordered[:, -1], (ordered[:, -1] - ordered[:, -2]) / 2
    clear = np.flatnonzero(margin > 2 * tolerance)
    if len(clear) == 0:
        clear = np.arange(len(probabilities))
    by_score = clear[np.argsort(score[clear], kind="stable")]
    picks = np.linspace(0, len(by_score) - 1, num=min(count, len(by_score))).round().astype(int)
    return np.unique(by_score[picks])
