"""Silence the native log lines of TensorFlow, the TFLite converter and the runtimes.

TensorFlow's C++ core prints absl/cudart lines on import, the MLIR quantizer prints
"fully_quantize: 0, inference_type: 6, ..." straight onto file descriptor 2 (through the
middle of a progress bar), LiteRT announces its XNNPACK delegate: nothing a user can act on,
and none of it goes through Python, so TF_CPP_MIN_LOG_LEVEL alone does not stop it. Inside
the block, fd 2 points at /dev/null and Python's own stderr (progress bars, medge's messages,
tracebacks) is moved to a duplicate of the real one. `--verbose` (convert, train, evaluate,
predict) or log level DEBUG (the daemon) keeps it all.

Swapping fd 2 affects every thread: use it around single-threaded steps (a conversion, loading
a model before the daemon starts its threads), not around the running daemon.
"""
from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager

# Python loggers of the libraries that report routine steps as warnings.
NOISY_LOGGERS = ("tensorflow", "absl", "tf2onnx", "onnxruntime", "h5py")


@contextmanager
def quiet_native_logs(enabled: bool = True):
    if not enabled:
        yield
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    levels = {name: logging.getLogger(name).level for name in NOISY_LOGGERS}
    root_level = logging.getLogger().level
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    logging.getLogger().setLevel(logging.ERROR)  # onnxruntime.quantization warns through the root logger
    python_stderr = sys.stderr
    try:
        stderr_is_fd2 = python_stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):  # replaced by a test runner: it does not use fd 2
        stderr_is_fd2 = False
    saved = os.dup(2)
    try:
        if stderr_is_fd2:
            python_stderr.flush()
            sys.stderr = os.fdopen(os.dup(saved), "w", buffering=1, encoding=python_stderr.encoding,
                                   errors=python_stderr.errors)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        yield
    finally:
        if stderr_is_fd2:
            sys.stderr.flush()
            sys.stderr.close()
            sys.stderr = python_stderr
        os.dup2(saved, 2)
        os.close(saved)
        logging.getLogger().setLevel(root_level)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
