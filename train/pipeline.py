"""`train(config) -> run folder`: load data, train (one model or an ensemble), choose the threshold
on validation, evaluate on test, write model.keras, metrics.json, history.json, plots and report.md.
"""
from __future__ import annotations

import json
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from medge.edge.about import __version__
from medge.edge.errors import InputError
from medge.edge.preprocess import PreprocessSpec

from .config import TrainConfig
from .data import Dataset, load_dataset
from .run import HISTORY_FILE, METRICS_FILE, MODEL_FILE
from .sanity import learning_warnings


def train(config: TrainConfig, log=None) -> Path:
    """Train as configured and write the run folder; returns its path."""
    log = log or (print if config.verbose else (lambda *_: None))
    started = time.perf_counter()
    from .recipe import resolve, resolve_channels

    config = resolve_channels(config)  # colour data trains in colour (read before loading)
    spec = PreprocessSpec(height=config.input_size, width=config.input_size, channels=config.input_channels,
                          interpolation=config.interpolation, normalization=config.normalization)
    dataset = load_dataset(config.data, classes=config.classes, spec=spec, val_split=config.val_split,
                           test_split=config.test_split, seed=config.seed, labels_csv=config.labels_csv)
    if "train" not in dataset.splits or len(dataset.splits["train"]) == 0:
        raise InputError(f"{dataset.path}: no training data (a split tree needs a train/ folder)")
    if "val" not in dataset.splits or len(dataset.splits["val"]) == 0:
        raise InputError(f"{dataset.path}: no validation data (add a val split or set --val-split > 0)")
    # --limit applies before anything is printed, so the counts shown are the ones trained on.
    dataset.limit_train(limit_split(dataset.splits["train"], config.limit, config.seed))
    from .selection import seal_test

    seal_test(dataset, config)  # no choice below may read the test split: it raises until the final evaluation
    config = resolve(config, dataset)  # every "auto" made concrete from the training split's size and labels
    log(dataset.describe())
    log(settings_line(config, spec))
    out = resolve_out(config)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        return _train_into(out, config, dataset, spec, started, log)
    except BaseException:
        if created:  # a run that failed leaves no half-written run folder behind
            shutil.rmtree(out, ignore_errors=True)
        raise


def _train_into(out: Path, config: TrainConfig, dataset: Dataset, spec: PreprocessSpec, started: float, log) -> Path:
    train_split = dataset.splits["train"]
    from .recipe import member_config

    members, histories = [], []
    if config.search:
        from .search import run_search

        config = run_search(out, config, dataset, log)  # validation only; writes search.json
    for member in range(config.ensemble):
        seed = config.seed + member
        if config.ensemble > 1:
            log(f"ensemble member {member + 1}/{config.ensemble} (seed {seed})")
        model, history = fit_member(member_config(config, member), dataset, train_split, seed, log,
                                    name=f"member{member}" if config.ensemble > 1 else None,
                                    members_after=config.ensemble - member - 1)
        members.append(model)
        histories.append(history)
    from .models import build_ensemble

    model = build_ensemble(members, name="ensemble")
    train_seconds = time.perf_counter() - started
    model.save(out / MODEL_FILE)
    (out / HISTORY_FILE).write_text(json.dumps(histories[0] if len(histories) == 1 else {"members": histories}, indent=2))

    from .evaluate import evaluate_probabilities
    from .selection import choose_on_validation, final_figures, validation_figures

    classes = dataset.classes
    val = dataset.splits["val"]
    # Temperature, then the threshold on the calibrated scores: validation only (test is sealed).
    from .recipe import class_weight_vector

    chosen = choose_on_validation(model, val, dataset.task, config, log, save_to=out / MODEL_FILE,
                                  class_weights=class_weight_vector(train_split.y, len(classes), config.class_weight))
    val_probabilities, threshold, policy = chosen.val_probabilities, chosen.threshold, chosen.policy
    metrics = {
        "medge_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "classes": classes,
        "task": dataset.task,
        "positive_class": classes[1] if dataset.task == "binary" else None,
        "threshold": threshold,
        "threshold_policy": policy,
        "threshold_ci95": chosen.threshold_ci95,  # bootstrap of validation: where the rule could have put it
        "ordinal": chosen.ordinal,
        "preprocessing": spec.to_dict(),
        "data": dataset.to_dict(),
        "model": {"name": config.name or default_name(dataset), "version": str(config.version),
                  "arch": "+".join(config.ensemble_archs) if config.ensemble_archs else config.arch,
                  "params": int(model.count_params()), "ensemble": config.ensemble,
                  "input_shape": list(spec.input_shape),
                  "output": "sigmoid P(positive_class)" if dataset.task == "binary" else "softmax in class order"},
        "training": {"seconds": round(train_seconds, 1), "train_samples": len(train_split),
                     "epochs_run": [len(h.get("loss", [])) for h in histories],
                     "best_epoch": [best_epoch(h) for h in histories], "config": config.to_dict()},
        "val": evaluate_probabilities(val.y, val_probabilities, classes, threshold, config.bootstrap, config.seed,
                                      ordinal=chosen.ordinal),
    }
    metrics["val"]["calibration"] = validation_figures(chosen, val.y)
    metrics["calibration"] = final_figures(chosen, val.y, chosen.val_scores, "val")
    from . import refer

    # The refer band (train/refer.py), on the calibrated validation probabilities the device will see.
    metrics["refer"] = refer.refer_metrics(dataset.task, classes, threshold, val.y, val_probabilities,
                                           target=config.refer_accuracy)
    test_probabilities = None
    test = dataset.unseal("test")  # every choice is frozen: the final evaluation may read it now
    if test is not None and len(test):
        test_scores = chosen.scores(test.x)
        test_probabilities = test_scores.probabilities(chosen.temperature)
        metrics["test"] = evaluate_probabilities(test.y, test_probabilities, classes, threshold,
                                                 config.bootstrap, config.seed, ordinal=chosen.ordinal)
        metrics["calibration"] = final_figures(chosen, test.y, test_scores, "test")
        metrics["test"]["calibration"] = {key: metrics["calibration"][key] for key in
                                          ("temperature", "ece_before", "ece_after", "brier_before", "brier_after")}
    if test_probabilities is not None:  # the refer band's figures on test: reported, never chosen on
        refer.add_test(metrics["refer"], test.y, test_probabilities, classes, dataset.task, threshold)
    metrics["warnings"] = learning_warnings(metrics, histories) + refer.warnings_for(metrics["refer"])
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2))

    from .plots import write_plots
    from .report import write_report

    shown_y, shown_scores = (test.y, test_scores) if test_probabilities is not None else (val.y, chosen.val_scores)
    reliability = dict(y=shown_y, before=chosen.as_trained(shown_scores), temperature=chosen.temperature,
                       after=shown_scores.probabilities(chosen.temperature), split=metrics["calibration"]["split"])
    plots = write_plots(out, histories, dataset, metrics, test_probabilities, reliability=reliability)
    plots["Refer band: coverage against accuracy on decided images"] = refer.plot(out / refer.PLOT, metrics["refer"])
    write_report(out, metrics, plots)
    log(summary_line(metrics, out))
    for warning in metrics["warnings"]:
        log(f"WARNING: {warning}")
    return out


def fit_member(config: TrainConfig, dataset: Dataset, train_split, seed: int, log, name=None, members_after: int = 0,
               epoch_hook=None):
    import keras

    from .augment import augmentation_layers, make_dataset
    from .callbacks import EpochHook, SmoothedEarlyStopping, TimeBudget
    from .models import build_model, compile_model, learning_rate_schedule
    from .recipe import class_weight_vector, steps_per_epoch

    keras.utils.set_random_seed(seed)
    # Same seed, same data, same machine -> the same model: multi-threaded CPU kernels are
    # otherwise free to reorder float sums, and a re-run would not reproduce a published run.
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    n_classes = len(dataset.classes)
    model = build_model(dataset.spec.input_shape, n_classes, config, name=name)
    steps = steps_per_epoch(len(train_split), config.batch_size)
    compile_model(model, n_classes, learning_rate_schedule(config, steps), config.label_smoothing)
    x_train = train_split.x
    value_range = (float(x_train.min()), float(x_train.max())) if len(x_train) else (0.0, 1.0)
    augmentation = augmentation_layers(config.augment, value_range, seed)
    weights = class_weight_vector(train_split.y, n_classes, config.class_weight)[train_split.y].astype(np.float32)
    train_data = make_dataset(x_train, (targets(train_split.y, n_classes), weights), config.batch_size,
                              shuffle=True, seed=seed, augmentation=augmentation)
    val = dataset.splits["val"]
    val_data = make_dataset(val.x, targets(val.y, n_classes), config.batch_size)
    callbacks = [
        # Restores the epoch with the best smoothed validation AUC: model.keras is that checkpoint.
        SmoothedEarlyStopping("val_auc", patience=config.patience, min_epochs=(config.warmup_epochs or 0) + config.patience),
        TimeBudget(config.max_minutes * 60 / config.ensemble if config.max_minutes else None, log),
    ]
    if epoch_hook is not None:  # --search: report each epoch to Optuna's pruner
        callbacks.append(EpochHook(epoch_hook))
    if config.schedule == "plateau":
        callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor="val_auc", mode="max", factor=0.5,
                                                           patience=max(2, config.patience // 3), min_lr=1e-5))
    if config.verbose:  # --quiet: no per-epoch lines (the summary and any warnings still print)
        callbacks.append(EpochLog(config.epochs, log, members_after))
    result = model.fit(_unpack_weights(train_data), validation_data=val_data, epochs=config.epochs, shuffle=False,
                       callbacks=callbacks, verbose=0)
    history = {key: [float(v) for v in values] for key, values in result.history.items()}
    return model, history


def _unpack_weights(data):
    # (x, (y, w)) -> (x, y, w), the triple Keras reads as sample weights.
    return data.map(lambda x, yw: (x, yw[0], yw[1]))


def targets(y: np.ndarray, n_classes: int) -> np.ndarray:
    if n_classes == 2:
        return y.astype(np.float32).reshape(-1, 1)
    return np.eye(n_classes, dtype=np.float32)[y]


def sample_weights(y: np.ndarray, n_classes: int) -> np.ndarray:
    """Balanced class weights (n / (K * count)), so a rare class counts as much as a common one."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    per_class = len(y) / (n_classes * np.maximum(counts, 1))
    return per_class[y].astype(np.float32)


def limit_split(split, limit: int | None, seed: int):
    """At most `limit` training samples, stratified (keeps every class) and seeded."""
    if limit is None or limit >= len(split):
        return split
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(split.y):
        members = np.flatnonzero(split.y == label)
        share = max(1, int(round(limit * len(members) / len(split))))
        chosen.extend(rng.choice(members, size=min(share, len(members)), replace=False))
    return split.subset(np.sort(np.asarray(chosen)))


def predict(model, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Probabilities: binary (N, 1) = P(classes[1]); multi-class (N, K)."""
    if len(x) == 0:
        return np.zeros((0,) + tuple(model.outputs[0].shape[1:]), dtype=np.float32)
    return np.asarray(model.predict(x, batch_size=batch_size, verbose=0), dtype=np.float32)


def best_epoch(history: dict) -> int | None:
    values = history.get("val_auc_smoothed") or history.get("val_auc")
    return int(np.argmax(values)) + 1 if values else None


def resolve_out(config: TrainConfig) -> Path:
    if config.out is not None:
        return Path(config.out).expanduser().resolve()
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return (Path("runs") / (config.name or stamp)).resolve()


def default_name(dataset: Dataset) -> str:
    stem = dataset.path.stem if dataset.path.is_file() else dataset.path.name
    return stem.replace(" ", "_") or "model"


def settings_line(config: TrainConfig, spec: PreprocessSpec) -> str:
    """What this run really uses, after defaults: the line to compare with what was asked for."""
    shape = (f"filters {','.join(map(str, config.filters))}, " if config.arch == "cnn"
             else "" if not config.architecture.pretrained else f"weights {config.weights}, ")
    schedule = (f"warm-up {config.warmup_epochs} epochs + cosine" if config.schedule == "cosine" else "halved on plateaus")
    return (f"training {config.arch} ({shape}input {spec.height}x{spec.width}x{spec.channels}): up to {config.epochs} "
            f"epochs (early stopping on the 3-epoch mean validation AUC, patience {config.patience}), batch "
            f"{config.batch_size}, learning rate {config.learning_rate:g} ({schedule}), label smoothing "
            f"{config.label_smoothing:g}, batch-norm momentum {config.bn_momentum}, augment "
            f"{','.join(config.augment) or 'none'}, class weights {config.class_weight}, seed {config.seed}"
            + (f", ensemble of {config.ensemble}" if config.ensemble > 1 else ""))


def summary_line(metrics: dict, out: Path) -> str:
    from .evaluate import summary_figures

    which = "test" if "test" in metrics else "val"
    figures = metrics[which]
    note = f"\n  note: {figures['auc_ci_note']}" if figures.get("auc_ci_note") else ""
    return (f"{which}: {summary_figures(figures)} at threshold {metrics['threshold']:.3f} "
            f"({metrics['threshold_policy']}){note}\nrun folder: {out}")


def duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def EpochLog(epochs: int, log, members_after: int = 0):  # noqa: N802 - a factory so keras is imported lazily
    import keras

    class _EpochLog(keras.callbacks.Callback):
        """One line per epoch: losses, AUCs, time, and how long the rest may take.

        The estimate is epochs left x the mean epoch so far (plus the ensemble members still to
        train); early stopping can only make it shorter, hence "at most".
        """

        def on_train_begin(self, logs=None):
            self.seconds = []

        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            self.seconds.append(time.perf_counter() - self.started)
            mean = sum(self.seconds) / len(self.seconds)
            left = (epochs - epoch - 1 + members_after * epochs) * mean
            parts = [f"{key} {logs[key]:.4f}" for key in ("loss", "auc", "val_loss", "val_auc") if key in logs]
            total = epochs * (members_after + 1) * mean
            estimate = f"{self.seconds[-1]:.1f}s; estimate {epochs} epochs x {mean:.1f}s"
            estimate += f" x {members_after + 1} members" if members_after else ""
            estimate += f" = {duration(total)}" + (f", at most {duration(left)} left" if left > 0 else "")
            log(f"epoch {epoch + 1}/{epochs}  " + "  ".join(parts) + f"  ({estimate})")

    return _EpochLog()
