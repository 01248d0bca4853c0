"""What is chosen after training, on validation only, and the final evaluation that follows it.

Order matters and is enforced: `seal_test` seals the test split as soon as the data is loaded
(medge.train.data.SealedSplit: reading its images or labels raises), so architecture, epochs,
search trials, temperature and threshold can only ever see train and validation data;
`ValidationChoices` fits the temperature and then the threshold on the CALIBRATED validation
scores; only then does the pipeline unseal the test split for `final_figures`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medge.edge.errors import ConfigError

from .calibration import (
    OFFSET_WHEN_ECE_ABOVE,
    Calibration,
    ModelScores,
    ScoreModel,
    binary_offset,
    brier_score,
    calibrate,
    calibration_figures,
    class_weight_offsets,
    expected_calibration_error,
    fold_offsets,
    negative_log_likelihood,
    shifted,
)

TASKS = ("auto", "ordinal")


def seal_test(dataset, config) -> None:
    """Checks --task against the data, then seals the test split until the final evaluation."""
    if getattr(config, "task", "auto") == "ordinal" and len(dataset.classes) < 3:
        raise ConfigError(f"task: ordinal needs 3 or more graded classes in grade order, not "
                          f"{len(dataset.classes)} ({', '.join(dataset.classes)})")
    dataset.seal("test")


@dataclass
class ValidationChoices:
    """The temperature and the operating threshold, both frozen before the test split is read."""

    scorer: ScoreModel
    calibration: Calibration
    threshold: float
    policy: str
    threshold_ci95: list[float] | None
    ordinal: bool
    val_scores: ModelScores  # before any temperature
    val_probabilities: np.ndarray  # calibrated (N, K)
    offsets: np.ndarray | None = None  # class-weight correction folded into the model (None: not applied)
    prior_correction: dict | None = None
    bias_correction: dict | None = None  # the binary Platt offset (train/calibration.py binary_offset)

    @property
    def temperature(self) -> float:
        return self.calibration.temperature

    def as_trained(self, scores: ModelScores) -> np.ndarray:
        """The probabilities the model gave as trained (no correction, T = 1): the "before" figures."""
        return shifted(scores, None if self.offsets is None else -self.offsets).probabilities(1.0)

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """Calibrated (N, K) probabilities of any images, as the device will compute them."""
        return self.scorer.scores(x).probabilities(self.temperature)

    def scores(self, x: np.ndarray) -> ModelScores:
        return self.scorer.scores(x)


def choose_on_validation(model, val, task: str, config, log=None, class_weights=None,
                         save_to=None) -> ValidationChoices:
    """Undo the class weights' prior shift if that lowers the validation NLL, fit the temperature
    on the validation logits, then choose the binary threshold on the calibrated validation scores
    (bootstrap-median Youden by default, with its 95% interval). A correction is folded into the
    model's last bias and the model re-saved to `save_to`."""
    from .thresholds import parse_policy, threshold_with_interval

    scorer = ScoreModel(model)
    as_trained = val_scores = scorer.scores(val.x)
    calibration = calibrate(val_scores, val.y)
    folded = np.zeros(val_scores.raw.shape[-1]) if scorer.activation is not None else None

    def try_offsets(offsets, rule):
        """Folds `offsets` into the model when validation says so: a lower NLL and no worse ECE
        than without (each step must earn its place). Returns the record for metrics.json."""
        nonlocal scorer, val_scores, calibration, folded
        corrected = calibrate(shifted(val_scores, offsets), val.y)
        applied = (corrected.nll_after < calibration.nll_after
                   and corrected.ece_after <= calibration.ece_after + 1e-12)
        record = {"rule": rule, "offsets": [float(o) for o in offsets], "applied": bool(applied),
                  "val_ece_without": calibration.ece_after, "val_ece_with": corrected.ece_after,
                  "val_nll_without": calibration.nll_after, "val_nll_with": corrected.nll_after}
        if applied:
            fold_offsets(model, offsets)
            scorer = ScoreModel(model)
            val_scores = scorer.scores(val.x)
            calibration = calibrate(val_scores, val.y)
            folded = folded + offsets
        return record

    offsets = None if class_weights is None else class_weight_offsets(class_weights, scorer.activation)
    prior_correction = None if offsets is None else try_offsets(
        offsets, "logits - log(class weight): undoes class-weighted training's prior shift")
    shifted_scores = calibration.ece_after is not None and calibration.ece_after > OFFSET_WHEN_ECE_ABOVE
    offset = binary_offset(val_scores, val.y) if task == "binary" and shifted_scores else None
    bias_correction = None if offset is None else try_offsets(
        offset, "Platt offset: the logit shift of lowest validation NLL, temperature refitted with it")
    offsets = folded if folded is not None and np.any(folded) else None
    if offsets is not None:
        if save_to is not None:
            model.save(save_to)
        # "before" stays the model as trained: no correction, T = 1.
        before = as_trained.probabilities(1.0)
        calibration.nll_before = negative_log_likelihood(as_trained, val.y, 1.0)
        calibration.ece_before = expected_calibration_error(val.y, before)
        calibration.brier_before = brier_score(val.y, before)
        calibration.method = "temperature+offset" if (bias_correction or {}).get("applied") else calibration.method
    probabilities = val_scores.probabilities(calibration.temperature)
    interval = None
    if task == "binary":
        policy = str(parse_policy(config.threshold_policy))
        threshold, interval, _ = threshold_with_interval(policy, val.y, probabilities[:, 1], config.bootstrap,
                                                         config.seed)
    else:
        policy, threshold = "argmax", 0.5  # multi-class decides by argmax; threshold unused
    if log is not None:
        log(f"calibration: temperature {calibration.temperature:.3f} fitted on validation "
            f"(ECE {calibration.ece_before:.3f} -> {calibration.ece_after:.3f}, Brier "
            f"{calibration.brier_before:.3f} -> {calibration.brier_after:.3f})"
            + (f"; {calibration.note}" if calibration.note else ""))
    return ValidationChoices(scorer, calibration, float(threshold), policy, interval,
                             getattr(config, "task", "auto") == "ordinal", val_scores, probabilities, offsets,
                             prior_correction, bias_correction)


def validation_figures(choices: ValidationChoices, y: np.ndarray) -> dict:
    return split_figures(choices, y, choices.val_scores) | {
        "nll_before": choices.calibration.nll_before, "nll_after": choices.calibration.nll_after}


def split_figures(choices: ValidationChoices, y: np.ndarray, scores: ModelScores) -> dict:
    """ECE and Brier of one split as trained (before) and calibrated (after), and the temperature."""
    figures = calibration_figures(y, scores, choices.temperature)
    if choices.offsets is not None:
        before = choices.as_trained(scores)
        figures.update(ece_before=expected_calibration_error(y, before), brier_before=brier_score(y, before))
    return figures


def final_figures(choices: ValidationChoices, y: np.ndarray, scores: ModelScores, split: str) -> dict:
    """metrics.json's top-level `calibration`: the final evaluation's ECE/Brier before and after,
    the temperature, and the validation fit it came from."""
    return {**split_figures(choices, y, scores), "split": split,
            "method": choices.calibration.method, "fitted_on": "validation",
            "prior_correction": choices.prior_correction, "bias_correction": choices.bias_correction,
            "validation": choices.calibration.to_dict()}
