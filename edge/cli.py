"""`medge bundle verify` and `medge predict`: the device-side commands (no TensorFlow)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import click

from .bundle import SIGNATURE_NAME, load_bundle
from .errors import InputError, MedgeError
from .explain import SUFFIX as EXPLAIN_SUFFIX
from .ood import DEFAULT_MODE as DEFAULT_OOD_MODE
from .ood import MODES as OOD_MODES
from .preprocess import DEFAULT_MAX_PIXELS, decode_image
from .runtime import RUNTIMES


@click.group("bundle")
def bundle_group():
    """Inspect and verify model bundles."""


@bundle_group.command("verify")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--public-key", type=click.Path(path_type=Path), help="Ed25519 public key (PEM): the signature must be valid.")
@click.option("--require-signature", is_flag=True, help="Fail when the bundle is unsigned.")
def verify_command(bundle, public_key, require_signature):
    """Check every file's sha256 (and the signature, with --public-key). Exit 1 on any mismatch."""
    loaded = load_bundle(bundle, public_key=public_key, require_signature=require_signature)
    files = loaded.manifest.files
    if loaded.signed_by:
        signature = f"valid, key {loaded.signed_by}"
    elif (loaded.path / SIGNATURE_NAME).exists():
        signature = "present, not checked (pass --public-key)"
    else:
        signature = "unsigned"
    artifacts = ", ".join(f"{a.format} ({a.file.name})" for a in loaded.artifacts)
    click.echo(f"OK {loaded.path}: {loaded.name} {loaded.version}, {len(files)} files match their sha256; "
               f"signature: {signature}")
    click.echo(f"   models: {artifacts}; classes: {', '.join(loaded.classes)}"
               + (f"; threshold {loaded.threshold:.4f}" if loaded.threshold is not None else ""))


@click.command("predict")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--runtime", type=click.Choice(("auto",) + RUNTIMES), default="auto", show_default=True)
@click.option("--threads", type=click.IntRange(1), help="Inference threads [default: the runtime's].")
@click.option("--format", "format_name", help="Which model of the bundle, e.g. onnx-int8 [default: its first].")
@click.option("--public-key", type=click.Path(path_type=Path), help="Refuse the bundle unless signed with this key.")
@click.option("--max-pixels", type=click.IntRange(1), default=DEFAULT_MAX_PIXELS, show_default=True,
              help="Refuse larger images before decoding.")
@click.option("--explain", "explain_dir", type=click.Path(path_type=Path, file_okay=False),
              help="Also write an occlusion heatmap overlay per image: DIR/NAME.heatmap.png (not for diagnostic use).")
@click.option("--verbose", "-v", is_flag=True, help="Also show the model runtime's own messages (e.g. XNNPACK).")
@click.option("--ood", "ood_mode", type=click.Choice(OOD_MODES), default=DEFAULT_OOD_MODE, show_default=True,
              help="Out-of-distribution guard: refuse (not_applicable), warn (classify, with a warning) or off.")
def predict_command(bundle, images, runtime, threads, format_name, public_key, max_pixels, explain_dir, verbose,
                    ood_mode):
    """Classify IMAGE files (JPEG, PNG, BMP, TIFF, 16-bit PNG, DICOM) with BUNDLE: one JSON line per image.

    Uses the same code as the edge daemon, so the result equals what it publishes (scores
    rounded alike, to 6 decimals). An image that cannot be read gives a line with
    "status": "error" and exit code 1 at the end.

    \b
    Example:
      medge predict bundles/pneumonia scans/*.dcm | jq .class
    """
    from .classify import Classifier
    from .quiet import quiet_native_logs

    loaded = load_bundle(bundle, public_key=public_key)
    if explain_dir is not None:
        try:
            explain_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise InputError(f"--explain {explain_dir}: cannot create the folder ({error.strerror or error})") from None
    with quiet_native_logs(enabled=not verbose):
        classifier = Classifier(loaded, runtime=None if runtime == "auto" else runtime, threads=threads,
                                format=format_name, ood_mode=ood_mode)
    if classifier.ood is None and ood_mode != "off":
        click.echo(f"Warning: {bundle}: the bundle has no out-of-distribution reference (made before the OOD "
                   "guard): the guard is off, every decodable image is classified", err=True)
    failed = 0
    for image in images:
        try:
            line = predict_line(classifier, image, max_pixels, explain_dir)
        except MedgeError as error:
            failed += 1
            line = {"file": str(image), "status": "error", "error": str(error)}
            click.echo(f"Error: {error}", err=True)
        click.echo(json.dumps(line))
    if failed:
        raise InputError(f"{failed} of {len(images)} image(s) could not be classified")


def predict_line(classifier, path: Path, max_pixels: int = DEFAULT_MAX_PIXELS, explain_dir: Path | None = None) -> dict:
    """One image's JSON record (first frame of multi-frame DICOM), from `classify.analyse`, the
    function the daemon calls; only the formatting is the command's. With `explain_dir`, the
    heatmap overlay (edge/explain.py, as the daemon makes it) goes to DIR/NAME.heatmap.png."""
    from .classify import analyse

    started = time.perf_counter()
    analysis = analyse(classifier, lambda: decode_image(path, max_pixels=max_pixels), "first", name=str(path))
    decoded = analysis.decoded
    bundle, artifact = classifier.bundle, classifier.artifact
    line = {
        "file": str(path),
        "model": {"name": bundle.name, "version": bundle.version, "sha256": artifact.sha256, "format": artifact.format},
        "runtime": classifier.runtime_name,
    }
    if analysis.frame_count > 1:
        line["frame"] = {"policy": analysis.policy, "index": analysis.frames[0].index if analysis.frames else 0,
                         "count": analysis.frame_count}
    if decoded.kind == "dicom":
        line["dicom"] = {"modality": decoded.modality, "body_part": decoded.body_part}
    if analysis.not_applicable:
        return {**line, "status": "not_applicable", "reason": analysis.not_applicable,
                **({"ood": analysis.ood} if analysis.ood else {})}
    result = analysis.frames[0].classification
    timing = {"decode": round(analysis.decode_ms, 3), **result.timing_ms}
    timing["total"] = round((time.perf_counter() - started) * 1000.0, 3)
    line.update(status="classified", **{"class": result.label}, score=round_score(result.score),
                threshold=None if result.threshold is None else round_score(result.threshold), positive=result.positive,
                probabilities={name: round_score(p) for name, p in result.probabilities.items()}, timing_ms=timing)
    if result.decision is not None:  # the refer band (edge/decision.py), as the daemon publishes it
        line["decision"] = result.decision
    if result.ood is not None:
        line["ood"] = result.ood.to_dict()
    if analysis.warnings:
        line["warnings"] = analysis.warnings
    if explain_dir is not None:
        line["heatmap"] = str(write_heatmap(classifier, analysis, explain_dir / f"{path.name}{EXPLAIN_SUFFIX}"))
    return {**line, "disclaimer": _disclaimer()}


def write_heatmap(classifier, analysis, target: Path) -> Path:
    from .explain import explain_analysis

    try:
        target.write_bytes(explain_analysis(classifier, analysis).png())
    except OSError as error:
        raise InputError(f"{target}: cannot write the heatmap ({error.strerror or error})") from None
    return target


def round_score(value: float) -> float:
    """Scores as the daemon publishes them (6 decimals): not 17 digits of float noise."""
    return round(float(value), 6)


def _disclaimer() -> str:
    from medge.edge.about import DISCLAIMER

    return DISCLAIMER
