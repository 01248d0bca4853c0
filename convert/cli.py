"""`medge convert` and `medge keys`."""
from __future__ import annotations

from pathlib import Path

import click

from medge.edge.errors import InputError
from medge.edge.quiet import quiet_native_logs

from .explain_check import ADVISORY_CORRELATION
from .explain_check import DEFAULT_SAMPLES as DEFAULT_HEATMAP_SAMPLES
from .formats import FORMATS
from .gate import GateFailed, GateLimits
from .ood_check import OodLimits

GATE_FAILED_EXIT = 3


def _split(text: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in (text or "").split(",") if part.strip())


@click.command("convert")
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--out", "-o", type=click.Path(path_type=Path), help="Bundle folder to write [default: RUN/bundle].")
@click.option("--int8", is_flag=True, help="Full-integer int8 TFLite (the common case); with --onnx also int8 ONNX.")
@click.option("--onnx", is_flag=True, help="Also ONNX (int8 with --int8, else float32).")
@click.option("--formats", metavar="LIST", help=f"Explicit comma-separated formats, first = default: {', '.join(FORMATS)}.")
@click.option("--calibration-samples", type=click.IntRange(1), default=300, show_default=True,
              help="Representative images for int8, stratified by class.")
@click.option("--calibration-data", type=click.Path(path_type=Path),
              help="Calibrate on this dataset instead of the run's training split.")
@click.option("--data", type=click.Path(path_type=Path), help="Gate on this labelled dataset instead of the run's test split.")
@click.option("--max-auc-drop", type=click.FloatRange(0), default=GateLimits.max_auc_drop, show_default=True,
              help="Tolerance: a larger drop fails when the paired test finds it significant.")
@click.option("--max-sensitivity-drop", type=click.FloatRange(0), default=GateLimits.max_sensitivity_drop, show_default=True)
@click.option("--max-specificity-drop", type=click.FloatRange(0), default=GateLimits.max_specificity_drop, show_default=True)
@click.option("--min-agreement", type=click.FloatRange(0, 1), default=GateLimits.min_agreement, show_default=True,
              help="Share of images whose predicted class must not change.")
@click.option("--cap-auc-drop", type=click.FloatRange(0), default=GateLimits.cap_auc_drop, show_default=True,
              help="Absolute cap: a larger drop always fails, significant or not.")
@click.option("--cap-sensitivity-drop", type=click.FloatRange(0), default=GateLimits.cap_sensitivity_drop,
              show_default=True)
@click.option("--cap-specificity-drop", type=click.FloatRange(0), default=GateLimits.cap_specificity_drop,
              show_default=True)
@click.option("--cap-agreement", type=click.FloatRange(0, 1), default=GateLimits.cap_agreement, show_default=True,
              help="Absolute floor of the decision agreement.")
@click.option("--max-ece-increase", type=click.FloatRange(0), default=GateLimits.max_ece_increase, show_default=True,
              help="Tolerated rise of the calibration error (ECE, 15 bins) over the float model's (paired bootstrap).")
@click.option("--cap-ece-increase", type=click.FloatRange(0), default=GateLimits.cap_ece_increase, show_default=True,
              help="Absolute cap on the ECE rise.")
@click.option("--significance", type=click.FloatRange(0, 1), default=GateLimits.significance, show_default=True,
              help="p-value under which a change beyond its tolerance is real, not chance (1 = fixed tolerances).")
@click.option("--bootstrap", type=click.IntRange(0), default=GateLimits.bootstrap, show_default=True,
              help="Paired resamples for the 95% intervals and the AUC test (0 = none: tolerances strict).")
@click.option("--min-heatmap-correlation", type=click.FloatRange(-1, 1), default=None,
              help="Fail the gate below this mean int8-vs-float occlusion heatmap correlation. Default: "
                   f"compared, recorded and warned about below {ADVISORY_CORRELATION}, never a failure.")
@click.option("--heatmap-samples", type=click.IntRange(0), default=DEFAULT_HEATMAP_SAMPLES, show_default=True,
              help="Gate images whose heatmaps are compared (0 = no heatmap check).")
@click.option("--sign-key", type=click.Path(path_type=Path), help="Ed25519 private key (medge keys generate) to sign the bundle.")
@click.option("--name", help="Model name in the bundle [default: the run's].")
@click.option("--version", "model_version", help="Model version in the bundle [default: the run's].")
@click.option("--modality", metavar="LIST", help="Declared scope, e.g. CR,DX: other DICOM modalities are not_applicable.")
@click.option("--body-part", metavar="LIST", help="Declared scope, e.g. CHEST.")
@click.option("--latency-runs", type=click.IntRange(1), default=50, show_default=True,
              help="Single-image calls timed per artifact and thread count.")
@click.option("--ood", "ood_mode", type=click.Choice(("refuse", "warn", "off")), default="refuse", show_default=True,
              help="Out-of-distribution guard: fit its reference and fail the gate under its floors (refuse), "
                   "only report them (warn), or no guard (off).")
@click.option("--ood-acceptance", type=click.FloatRange(0.5, 1, max_open=True), default=OodLimits.acceptance,
              show_default=True, help="Share of validation images the OOD threshold keeps.")
@click.option("--min-ood-auroc", type=click.FloatRange(0, 1), default=OodLimits.min_auroc, show_default=True,
              help="Floor on the OOD AUROC of each OOD set (modalities, other dataset, constant, noise, gradient).")
@click.option("--min-ood-auroc-transformed", type=click.FloatRange(0, 1), default=OodLimits.min_auroc_transformed,
              show_default=True, help="Floor on the OOD AUROC of rotated, inverted and cropped in-distribution images.")
@click.option("--force", is_flag=True, help="Replace an existing bundle folder.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@click.option("--verbose", "-v", is_flag=True, help="Show TensorFlow's and the converters' own log lines.")
def convert_command(run, out, int8, onnx, formats, calibration_samples, calibration_data, data, max_auc_drop,
                    max_sensitivity_drop, max_specificity_drop, min_agreement, cap_auc_drop, cap_sensitivity_drop,
                    cap_specificity_drop, cap_agreement, max_ece_increase, cap_ece_increase, significance, bootstrap,
                    min_heatmap_correlation,
                    heatmap_samples, sign_key, name, model_version,
                    modality, body_part, latency_runs, ood_mode, ood_acceptance, min_ood_auroc,
                    min_ood_auroc_transformed, force, quiet, verbose):
    """Convert training run RUN into a verified model bundle (int8 TFLite / ONNX).

    Every converted file is evaluated on the edge runtime against the float model, on the
    same images. A change fails when it is beyond its cap, or beyond its tolerance and
    significant by a paired test (McNemar on the flipped decisions, paired bootstrap for AUC);
    then no bundle is written and the exit code is 3.

    \b
    Examples:
      medge convert runs/cnn --int8 --out bundles/pneumonia
      medge convert runs/cnn --formats tflite-int8,onnx-int8,tflite-f32 --sign-key medge.key
    """
    from .pipeline import ConvertConfig, convert
    from .report import print_report

    config = ConvertConfig(
        run=run, out=out, formats=formats, int8=int8, onnx=onnx, calibration_samples=calibration_samples,
        calibration_data=calibration_data, data=data,
        limits=GateLimits(max_auc_drop=max_auc_drop, max_sensitivity_drop=max_sensitivity_drop,
                          max_specificity_drop=max_specificity_drop, min_agreement=min_agreement,
                          cap_auc_drop=cap_auc_drop, cap_sensitivity_drop=cap_sensitivity_drop,
                          cap_specificity_drop=cap_specificity_drop, cap_agreement=cap_agreement,
                          max_ece_increase=max_ece_increase, cap_ece_increase=cap_ece_increase,
                          significance=significance, bootstrap=bootstrap), sign_key=sign_key, name=name,
        version=model_version, modalities=_split(modality), body_parts=_split(body_part), latency_runs=latency_runs,
        force=force, progress=not quiet, min_heatmap_correlation=min_heatmap_correlation,
        heatmap_samples=heatmap_samples,
        ood=OodLimits(mode=ood_mode, acceptance=ood_acceptance, min_auroc=min_ood_auroc,
                      min_auroc_transformed=min_ood_auroc_transformed))
    log = (lambda message: None) if quiet else (lambda message: click.echo(message, err=True))
    try:
        with quiet_native_logs(enabled=not verbose):
            result = convert(config, log=log)
    except GateFailed as failure:
        if failure.result is not None:
            print_report(failure.result.report)
            for line in failure.result.failures:
                click.echo(f"FAILED {line}", err=True)
        click.echo(f"Error: {failure}", err=True)
        click.get_current_context().exit(GATE_FAILED_EXIT)
    print_report(result.report)
    signed = " (signed)" if sign_key else ""
    click.echo(f"bundle written to {result.path}{signed}")


@click.group("keys")
def keys_group():
    """Ed25519 keys for signing bundles."""


@keys_group.command("generate")
@click.argument("name", type=click.Path(path_type=Path), default=Path("medge-signing"))
@click.option("--force", is_flag=True, help="Overwrite an existing key pair.")
def generate_command(name, force):
    """Write NAME.key (private, mode 600: keep it off devices) and NAME.pub (give to devices).

    \b
    Example:
      medge keys generate keys/site-a && medge convert RUN --int8 --sign-key keys/site-a.key
    """
    from medge.edge.bundle import generate_keypair

    private_path, public_path = name.with_name(name.name + ".key"), name.with_name(name.name + ".pub")
    for path in (private_path, public_path):
        if path.exists():
            if not force:
                raise InputError(f"{path}: already exists (use --force to overwrite)")
            path.unlink()
    if not private_path.parent.is_dir():
        raise InputError(f"{private_path.parent}: folder does not exist")
    key_id = generate_keypair(private_path, public_path)
    click.echo(f"private key: {private_path} (keep secret)\npublic key:  {public_path}\nkey id:      {key_id}")
