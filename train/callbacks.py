"""Training callbacks of the recipe: early stopping on a smoothed validation metric, a time budget.

Factories (like pipeline.EpochLog) so keras is imported only when a model is trained.
"""
from __future__ import annotations

import time

SMOOTHING_WINDOW = 3  # epochs averaged: one lucky epoch on a 100-image validation set is noise


def smoothed(values: list[float], window: int = SMOOTHING_WINDOW) -> list[float]:
    """Trailing mean over `window` epochs (fewer at the start)."""
    return [sum(values[max(0, i - window + 1):i + 1]) / len(values[max(0, i - window + 1):i + 1])
            for i in range(len(values))]


def SmoothedEarlyStopping(monitor: str = "val_auc", patience: int = 8, min_epochs: int = 0,  # noqa: N802
                          window: int = SMOOTHING_WINDOW):
    """Stops when the trailing mean of `monitor` has not improved for `patience` epochs, and
    restores the weights of the epoch where that mean was best (its value goes into the history
    as `<monitor>_smoothed`). Never stops before `min_epochs` (the warm-up is not judged)."""
    import keras

    class _SmoothedEarlyStopping(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.raw, self.best, self.best_epoch, self.best_weights = [], -float("inf"), None, None

        def on_epoch_end(self, epoch, logs=None):
            logs = logs if logs is not None else {}
            value = logs.get(monitor)
            if value is None:
                return
            self.raw.append(float(value))
            current = smoothed(self.raw, window)[-1]
            logs[f"{monitor}_smoothed"] = current  # Keras adds it to History (this callback runs first)
            if current > self.best:
                self.best, self.best_epoch = current, epoch
                self.best_weights = self.model.get_weights()
            elif epoch + 1 >= min_epochs and epoch - self.best_epoch >= patience:
                self.model.stop_training = True

        def on_train_end(self, logs=None):
            if self.best_weights is not None:
                self.model.set_weights(self.best_weights)

    return _SmoothedEarlyStopping()


def TimeBudget(seconds: float | None, log=None):  # noqa: N802
    """Stops training once another epoch would take the process past `seconds` of training on
    this machine's cores, counted in CPU time (process CPU seconds / cores): on an idle machine
    that is wall time, and a machine loaded by other jobs does not cut a run short (the wall
    time is then longer; the epoch lines show it). The early-stopping callback still restores
    the best epoch. None: no limit."""
    import os

    import keras

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)

    class _TimeBudget(keras.callbacks.Callback):
        stopped_at = None

        def on_train_begin(self, logs=None):
            self.started = time.process_time()

        def on_epoch_end(self, epoch, logs=None):
            if seconds is None:
                return
            used = (time.process_time() - self.started) / cores
            if used + used / (epoch + 1) > seconds:
                self.model.stop_training = True
                self.stopped_at = epoch + 1
                if log:
                    log(f"time budget: stopping after epoch {epoch + 1} ({used / 60:.1f} of {seconds / 60:.1f} "
                        f"minutes of {cores}-core time; --max-minutes sets it)")

    return _TimeBudget()


def EpochHook(hook):  # noqa: N802
    """Calls hook(epoch, logs) after each epoch (after the smoothed metric is in logs); True stops training."""
    import keras

    class _EpochHook(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if hook(epoch, logs or {}):
                self.model.stop_training = True

    return _EpochHook()
