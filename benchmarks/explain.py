"""Added time of the explanation heatmap (edge/explain.py) per input, against the classification
path, on the three bundled chest X-rays at their own resolution.

- classification path: `classify.analyse` (decode, preprocess, int8 inference, decision): what
  every input costs without explanations;
- heatmap: `explain.explain_analysis` on that outcome (the occluded copies in one batch through
  the same runtime): added for a DICOM input whose SC goes to a PACS, and with `explain = true`;
- PNG overlay: the blended, annotated image encoded as PNG (watch folder / `predict --explain` only).

Interleaved (classification, heatmap, PNG for each repetition) so machine load hits all alike.

    python benchmarks/explain.py --bundle tests/assets/bundles/pneumonia-int8 --runs 20
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medge.data import chest_xray_sample_files  # noqa: E402
from medge.edge.bundle import load_bundle  # noqa: E402
from medge.edge.classify import Classifier, analyse  # noqa: E402
from medge.edge.explain import explain_analysis  # noqa: E402
from medge.edge.preprocess import decode_image  # noqa: E402


def measure(bundle: Path, runs: int) -> list[dict]:
    classifier = Classifier(load_bundle(bundle))
    rows = []
    for path in chest_xray_sample_files():
        classify_ms, heatmap_ms, png_ms = [], [], []
        for run in range(runs + 1):  # the first is a warm-up
            started = time.perf_counter()
            analysis = analyse(classifier, lambda path=path: decode_image(path), "first")
            classified = time.perf_counter()
            explanation = explain_analysis(classifier, analysis)
            explained = time.perf_counter()
            explanation.png()
            drawn = time.perf_counter()
            if run:
                classify_ms.append((classified - started) * 1e3)
                heatmap_ms.append((explained - classified) * 1e3)
                png_ms.append((drawn - explained) * 1e3)
        pixels = analysis.decoded.frames[0]
        row = {"image": path.name, "size": f"{pixels.shape[1]}x{pixels.shape[0]}",
               "classification_ms": statistics.median(classify_ms), "heatmap_ms": statistics.median(heatmap_ms),
               "png_ms": statistics.median(png_ms)}
        row["heatmap_vs_classification"] = round(row["heatmap_ms"] / row["classification_ms"], 3)
        row["heatmap_and_png_vs_classification"] = round((row["heatmap_ms"] + row["png_ms"]) / row["classification_ms"], 3)
        print(f"{row['size']}: classification {row['classification_ms']:.1f} ms, heatmap {row['heatmap_ms']:.1f} ms "
              f"({row['heatmap_vs_classification']:.0%}), PNG overlay {row['png_ms']:.1f} ms")
        rows.append(row)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=REPO / "tests/assets/bundles/pneumonia-int8")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/explain.json")
    args = parser.parse_args()
    rows = measure(args.bundle, args.runs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"bundle": str(args.bundle), "runs": args.runs, "images": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
