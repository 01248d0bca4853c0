"""The conversion gate's OOD check (convert/ood_check.py): `medge convert` fails with exit 3 when
an OOD floor is not met, and records AUROC per real OOD set and acceptance in its report."""
from __future__ import annotations

import json
import subprocess
import sys

from tests.fixtures.bundles import FIXTURE_LIMITS
from tests.fixtures.models import needs_tensorflow

GATE_FAILED = 3


def test_an_impossible_ood_floor_fails_the_gate_with_exit_3(trained_run, tmp_path):
    needs_tensorflow()
    out = tmp_path / "bundle"
    limits = [f"--{key.replace('_', '-')}={value}" for key, value in FIXTURE_LIMITS.items()]
    completed = subprocess.run(
        [sys.executable, "-m", "medge", "convert", str(trained_run), "--int8", "--out", str(out), "--quiet",
         "--latency-runs", "2", "--heatmap-samples", "0", "--calibration-samples", "100", *limits,
         "--min-ood-auroc", "1.0"], capture_output=True, text=True, timeout=600)
    assert completed.returncode == GATE_FAILED, completed.stderr[-2000:]
    assert "ood: AUROC on" in completed.stderr
    assert not out.exists()
    report = json.loads((tmp_path / "bundle.rejected" / "conversion_report.json").read_text())
    ood = report["ood"]
    assert {"modality_ct", "modality_mr", "other_dataset", "noise", "constant", "rotated"} <= set(ood["auroc"])
    assert all(0.0 <= value <= 1.0 for value in ood["auroc"].values())
    assert 0.0 <= ood["full_size_acceptance"] <= 1.0  # measured on the bundled full-size chest X-rays
    assert any(failure.startswith("ood: AUROC on") for failure in report["failures"])
