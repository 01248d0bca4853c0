"""Regenerate the committed test bundles in tests/assets/bundles/ (needs medge[train]):

    python -m tests.assets.make_bundles

The device-side tests (daemon, DICOM, predict, dashboard, runtime) run on these bundles, so
they need no TensorFlow: `.ci/device-tests` runs them in a virtual environment holding only
`medge[edge,dicom]` and the test tools. Both bundles are made by the project's own `medge
convert` from one small real model trained on the bundled PneumoniaMNIST, with the fixture
settings the session fixtures used to convert on every run (tests/fixtures/bundles.py):

- pneumonia-int8/: tflite-int8 (the device default),
- pneumonia-onnx-int8/: onnx-int8, its ONNX twin from the same model.

Rerun after a change to the bundle format (`tests/test_bundle.py` fails on stale bundles) or
to the conversion, and commit the result. The model is the `trained_run` fixture's (training
is deterministic on one machine); `created` and the latency figures differ on each run.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "bundles"
INT8 = ASSETS / "pneumonia-int8"
ONNX_INT8 = ASSETS / "pneumonia-onnx-int8"
BUNDLES = {INT8: "tflite-int8", ONNX_INT8: "onnx-int8"}
MAX_TOTAL_BYTES = 1_000_000  # they live in git: keep them tiny


def total_bytes() -> int:
    return sum(path.stat().st_size for folder in BUNDLES for path in folder.rglob("*") if path.is_file())


def main() -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # as in tests/conftest.py
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    from medge.train.pipeline import train
    from tests.fixtures.bundles import convert_run
    from tests.fixtures.models import quick_config

    with tempfile.TemporaryDirectory(prefix="medge-assets-") as workdir:
        run = train(quick_config(out=Path(workdir) / "run", name="pneumonia-cnn"))
        for out, formats in BUNDLES.items():
            convert_run(run, out, formats, force=True)
            print(f"{out.relative_to(ASSETS.parents[2])}: {formats}")
    size = total_bytes()
    print(f"{size / 1024:.0f} KiB in all")
    if size > MAX_TOTAL_BYTES:
        print(f"error: the committed bundles must stay under {MAX_TOTAL_BYTES} bytes", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
