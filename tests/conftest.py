"""Shared fixtures. Each concern keeps its fixtures in tests/fixtures/<concern>.py."""
import os

# Keep TensorFlow quiet and deterministic in tests; 2 cores is the CI machine.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("MPLBACKEND", "Agg")

pytest_plugins = [
    "tests.fixtures.broker",
    "tests.fixtures.dashboard",
    "tests.fixtures.models",
    "tests.fixtures.bundles",
    "tests.fixtures.dicom",
    "tests.fixtures.video",
    "tests.fixtures.deploy",
    "tests.fixtures.edge",
    "tests.fixtures.orthanc",
]
