"""Real, openly licensed data bundled with medge (see data/SOURCES.md for licences and citations)."""
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent

PNEUMONIAMNIST = DATA_DIR / "pneumoniamnist_28.npz"
PNEUMONIAMNIST_CLASSES = ("normal", "pneumonia")
# Diabetic-retinopathy grade 0-4 (ordinal), colour fundus photographs; official MedMNIST v2 splits.
RETINAMNIST = DATA_DIR / "retinamnist_28.npz"
RETINAMNIST_CLASSES = ("grade0", "grade1", "grade2", "grade3", "grade4")
CHEST_XRAY_SAMPLES = DATA_DIR / "chest_xray_samples"


def chest_xray_sample_files() -> list[Path]:
    """The full-size chest X-ray JPEGs, as a scanner export folder would hold them."""
    return sorted(CHEST_XRAY_SAMPLES.glob("*/*.jpeg"))
