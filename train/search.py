"""`medge train --search N`: N Optuna trials of the training recipe, scored on VALIDATION only.

Each trial trains the configured architecture for at most `search_epochs` epochs with sampled
settings (learning rate, label smoothing, dropout, class weights, batch size, and for the CNN its
width) and is scored by the macro validation AUC of its best (smoothed) epoch; Optuna's median
pruner stops trials that fall behind. The test split is never read here: the function receives
the dataset but only touches `splits["train"]` and `splits["val"]`. The best settings are saved in
RUN/search.json and returned; the run then trains its model with them for the full epochs.
"""
from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

SEARCH_FILE = "search.json"
BATCH_SIZES = (32, 64, 128)
CLASS_WEIGHTS = ("sqrt", "balanced", "none")
CNN_WIDTHS = {"narrow": (16, 32, 64), "default": (32, 64, 128), "wide": (48, 96, 192)}


def macro_auc(y: np.ndarray, probabilities: np.ndarray) -> float:
    """Binary AUC of column 0, or the macro one-vs-rest AUC (ties count half)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.shape[1] == 1:
        return _auc(y == 1, probabilities[:, 0])
    values = [_auc(y == k, probabilities[:, k]) for k in range(probabilities.shape[1]) if 0 < np.sum(y == k) < len(y)]
    return float(np.mean(values)) if values else 0.5


def _auc(positive: np.ndarray, scores: np.ndarray) -> float:
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return 0.5
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    ranks[order] = np.arange(1, len(scores) + 1)
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    ranks = (sums / counts)[inverse]  # tied scores share their mean rank
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def sample_settings(trial, config) -> dict:
    """One trial's settings: the search space (recipe settings around the defaults)."""
    settings = {
        "learning_rate": trial.suggest_float("learning_rate", 3e-4, 6e-3, log=True),
        "label_smoothing": trial.suggest_float("label_smoothing", 0.0, 0.15),
        "dropout": trial.suggest_float("dropout", 0.0, 0.5),
        "class_weight": trial.suggest_categorical("class_weight", list(CLASS_WEIGHTS)),
        "batch_size": trial.suggest_categorical("batch_size", list(BATCH_SIZES)),
    }
    if config.arch == "cnn":
        settings["filters"] = CNN_WIDTHS[trial.suggest_categorical("cnn_width", list(CNN_WIDTHS))]
        settings["dense_units"] = trial.suggest_categorical("dense_units", [0, 64, 128])
    return settings


def run_search(out: Path, config, dataset, log):
    """Runs config.search trials; writes out/search.json; returns the config with the best settings."""
    import optuna

    from .pipeline import fit_member, predict
    from .recipe import auto_bn_momentum, auto_warmup_epochs, resolve

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    train_split, val = dataset.splits["train"], dataset.splits["val"]  # never splits["test"]
    epochs = min(config.epochs, config.search_epochs)
    rows = []
    started = time.perf_counter()
    log(f"search: {config.search} trials of at most {epochs} epochs each, scored on the validation split "
        f"({len(val)} images); the test split is not used")

    def objective(trial):
        settings = sample_settings(trial, config)
        trial_config = replace(config, **settings, epochs=epochs, patience=max(2, min(config.patience, epochs // 2)),
                               search=0, ensemble=1, verbose=False,
                               warmup_epochs=auto_warmup_epochs(len(train_split), settings["batch_size"], epochs),
                               bn_momentum=auto_bn_momentum(len(train_split), settings["batch_size"]))
        trial_started = time.perf_counter()
        model, history = fit_member(trial_config, dataset, train_split, config.seed, lambda *_: None,
                                    epoch_hook=_pruning_hook(trial))
        value = macro_auc(val.y, predict(model, val.x))
        row = {"trial": trial.number, "value": value, "settings": _plain(settings),
               "epochs_run": len(history.get("loss", [])), "seconds": round(time.perf_counter() - trial_started, 1)}
        rows.append(row)
        best = max(rows, key=lambda r: r["value"])
        log(f"search trial {trial.number + 1}/{config.search}: " + _describe(settings)
            + f" -> val AUC {value:.4f} ({row['epochs_run']} epochs, {row['seconds']:.0f} s; best so far "
            f"{best['value']:.4f}, trial {best['trial'] + 1})")
        return value

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=config.seed))
    study.optimize(objective, n_trials=config.search, catch=())
    best = max(rows, key=lambda r: r["value"])
    best_settings = {key: tuple(value) if key == "filters" else value for key, value in best["settings"].items()}
    # The final run re-derives the auto settings (warm-up, batch-norm momentum) for its own batch size.
    final = resolve(replace(config, **best_settings, search=config.search, warmup_epochs=None, bn_momentum=None), dataset)
    record = {"objective": "validation AUC (macro one-vs-rest for multi-class) of the best smoothed epoch",
              "split": "validation only; the test split is not read by the search",
              "trials_requested": config.search, "epochs_per_trial": epochs,
              "seconds": round(time.perf_counter() - started, 1), "trials": rows,
              "best": best, "best_config": final.to_dict()}
    (out / SEARCH_FILE).write_text(json.dumps(record, indent=2))
    log(f"search: best trial {best['trial'] + 1} (val AUC {best['value']:.4f}): {_describe(best['settings'])}; "
        f"training the run's model with it ({SEARCH_FILE})")
    return final


def _pruning_hook(trial):
    """Per-epoch report to Optuna; True when the pruner says the trial is behind (stop it)."""
    def hook(epoch: int, logs: dict) -> bool:
        value = logs.get("val_auc_smoothed", logs.get("val_auc"))
        if value is None:
            return False
        trial.report(float(value), epoch)
        return trial.should_prune()
    return hook


def _plain(settings: dict) -> dict:
    return {key: list(value) if isinstance(value, tuple) else value for key, value in settings.items()}


def _describe(settings: dict) -> str:
    parts = []
    for key, value in settings.items():
        if isinstance(value, float):
            value = f"{value:.3g}"
        elif isinstance(value, tuple | list):
            value = ",".join(map(str, value))
        parts.append(f"{key} {value}")
    return ", ".join(parts)
