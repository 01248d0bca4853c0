"""`medge convert`: a training run -> converted model files -> accuracy gate -> bundle.

Everything is written into a staging folder next to the output. Only when every artifact
passes the gate is medge.json written (last) and the folder moved into place; a failed
conversion leaves `OUT.rejected/` with the report and plot but no manifest, so nothing that
looks like a valid bundle ever appears.
"""
from __future__ import annotations

import functools
import importlib
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from medge import DISCLAIMER, __version__
from medge.edge.bundle import MANIFEST_NAME, REPORT_NAME, sha256_file, write_manifest
from medge.edge.errors import InputError
from medge.edge.folders import replaceable
from medge.edge.manifest import Applicability, GateRecord, Manifest, ModelFile, ModelInfo, TensorInfo
from medge.edge.payloads import utc_now
from medge.edge.runtime import calibrated_probabilities, create_predictor

from .calibration import calibration_samples
from .decode_check import check_decode, decode_agreement
from .explain_check import DEFAULT_SAMPLES as DEFAULT_HEATMAP_SAMPLES
from .explain_check import check_heatmaps, heatmap_agreement, heatmap_warning
from .formats import ExportContext, Format, parse_formats
from .gate import GateFailed, GateLimits, check, classification_metrics, compare, judge, median_latency_ms
from .head import split_output_activation
from .metadata import embed_metadata, model_metadata
from .ood_check import OodLimits, default_full_size, default_other_datasets, run_ood_check
from .ood_reference import with_features
from .progress import progress_task

PLOT_NAME = "comparison.png"
REPORT_SCHEMA = "medge.conversion-report/1"
EVAL_BATCH = 64


@dataclass
class ConvertConfig:
    """One conversion, as the CLI, the tests and the benchmark describe it."""

    run: Path | str
    out: Path | str | None = None  # None = RUN/bundle
    formats: str | None = None  # "tflite-int8,onnx-int8"; None = from int8/onnx
    int8: bool = False
    onnx: bool = False
    calibration_samples: int = 300
    calibration_data: Path | str | None = None  # None = the run's training split
    data: Path | str | None = None  # None = the run's test split
    limits: GateLimits = field(default_factory=GateLimits)
    sign_key: Path | str | None = None
    name: str | None = None  # None = the run's model name
    version: str | None = None
    modalities: tuple[str, ...] = ()
    body_parts: tuple[str, ...] = ()
    latency_runs: int = 50
    latency_threads: tuple[int, ...] = (1, 2)
    force: bool = False
    progress: bool = True
    seed: int = 0
    # Explanation check (convert/explain_check.py): int8 vs float occlusion heatmaps.
    min_heatmap_correlation: float | None = None  # None: compared, recorded, warned about; never fails
    heatmap_samples: int = DEFAULT_HEATMAP_SAMPLES  # 0 = not checked
    # Out-of-distribution guard (convert/ood_check.py): reference, threshold and its gate floors.
    ood: OodLimits = field(default_factory=OodLimits)


@dataclass
class ConversionResult:
    passed: bool
    path: Path  # the bundle, or OUT.rejected when the gate failed
    report: dict
    failures: list[str]


def convert(config: ConvertConfig, log=print) -> ConversionResult:
    """Convert, gate, bundle. Raises GateFailed (after writing OUT.rejected) when a limit is broken."""
    from medge.train.run import load_run

    formats = parse_formats(config.formats, config.int8, config.onnx)
    run = load_run(config.run)
    out = Path(config.out).expanduser().resolve() if config.out else run.path / "bundle"
    if out.exists():
        if not config.force:
            raise InputError(f"{out}: already exists (use --force to replace it)")
        if not _replaceable(out):
            raise InputError(f"{out}: exists and is not a medge bundle; refusing to replace it")
    if config.sign_key is not None:
        from medge.edge.bundle import load_private_key

        load_private_key(config.sign_key)  # a bad key fails now, not after minutes of work
    # The run's own splits, rebuilt at most once (decoding an image tree can take a while).
    run_dataset = functools.cache(run.load_dataset)

    x_eval, y_eval, data_label = evaluation_data(run, config.data, run_dataset)
    calibration = None
    if any(f.calibrated for f in formats):
        calibration = _calibration(run, config, run_dataset)
    log(f"converting {run.path.name} ({run.metrics.get('model', {}).get('arch', 'model')}) to "
        f"{', '.join(f.name for f in formats)}; gate on {data_label} ({len(y_eval)} images)")

    model = run.load_model()
    reference = _reference(model, x_eval, y_eval, run, config)

    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    manifest_base = _manifest_base(run, config)
    records, failures = [], []
    try:
        with tempfile.TemporaryDirectory(prefix="medge-convert-") as workdir:
            # With the OOD guard on, every exported file gives its features (ood_reference) as a second output.
            def exported(keras_model):
                return (with_features(keras_model) if config.ood.mode != "off" else None) or keras_model

            float_context = ExportContext(model=exported(model), workdir=Path(workdir) / "float",
                                          calibration=calibration)
            integer_context = float_context
            if calibration is not None:
                logits_model, activation = split_output_activation(model)
                integer_context = ExportContext(model=exported(logits_model), workdir=Path(workdir) / "integer",
                                                calibration=calibration, output_activation=activation)
            for fmt in formats:
                context = integer_context if fmt.calibrated else float_context
                record = convert_one(fmt, context, staging, manifest_base, x_eval, y_eval, reference, run, config)
                if len(context.model.outputs) > 1:
                    record["ood_features"] = True
                records.append(record)
                failures += [f"{fmt.name}: {failure}" for failure in record["failures"]]
                log(f"  {fmt.name}: {record['size_bytes'] / 1024:.1f} KiB in {record['conversion_s']:.1f} s, "
                    f"AUC {record['auc']:.4f} ({record['auc_delta']:+.4f}), agreement {record['agreement']:.2%}"
                    + (f", ECE {record['calibration_check']['ece']:.3f} (float "
                       f"{record['calibration_check']['ece_reference']:.3f})" if record.get("calibration_check") else "")
                    + (f", heatmap r {record['heatmap_correlation']:.3f}" if record.get("heatmap_correlation") is not None
                       else "")
                    + ("" if record["passed"] else "  FAILED"))
                if record.get("heatmap_warning"):
                    log(f"  WARNING {fmt.name}: {record['heatmap_warning']}")
        # The model's own modalities are no OOD set: declared, or else read from DICOM training files.
        own_modalities = tuple(config.modalities) or (run_dataset().modalities() if config.ood.mode != "off" else ())
        ood_section, ood_report, ood_failures = run_ood_check(
            run, run_dataset(), model, staging, records, config.ood, default_other_datasets(run), default_full_size(run),
            own_modalities=own_modalities)
        failures += ood_failures
        if ood_report.get("auroc"):
            log("  ood: AUROC " + ", ".join(f"{k} {v:.3f}" for k, v in ood_report["auroc"].items())
                + f"; acceptance test {ood_report['test_acceptance']:.1%}"
                + (f", full-size {ood_report['full_size_acceptance']:.0%}" if "full_size_acceptance" in ood_report else ""))
        for failure in ood_report.get("failures", []) if config.ood.mode == "warn" else []:
            log(f"  WARNING {failure}")
        report = _report(run, config, data_label, len(y_eval), reference, records, failures)
        report["ood"] = ood_report
        (staging / REPORT_NAME).write_text(_json(report))
        from .plots import comparison_plot

        comparison_plot(staging / PLOT_NAME, y_eval, reference["probabilities"], records, run)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

    if failures:
        rejected = out.with_name(out.name + ".rejected")
        if rejected.exists():
            if not _replaceable(rejected):
                shutil.rmtree(staging, ignore_errors=True)
                raise InputError(f"{rejected}: exists and is not a medge conversion folder; refusing to replace it")
            shutil.rmtree(rejected)
        os.replace(staging, rejected)
        result = ConversionResult(False, rejected, report, failures)
        raise GateFailed(
            f"accuracy gate failed, no bundle written: {failures[0]}"
            + (f" (and {len(failures) - 1} more)" if len(failures) > 1 else "")
            + f"; report in {rejected}", result)

    manifest = replace(manifest_base, artifacts=tuple(_manifest_artifact(record) for record in records),
                       gate=GateRecord(limits=config.limits.to_dict(), data=data_label, n_images=int(len(y_eval)),
                                       reference=clean_json(report["reference"])))
    from .selftest import add_self_test, self_test_candidates  # the on-device self-test's reference set

    manifest = replace(manifest, ood=clean_json(ood_section))  # before the self-test, which loads the bundle
    manifest = add_self_test(staging, manifest, self_test_candidates(run_dataset, x_eval))
    from .drift_reference import add_drift_reference  # edge/drift.py's reference, by the bundle's own model

    manifest = add_drift_reference(staging, manifest, run_dataset)
    write_manifest(staging, manifest, private_key=config.sign_key)
    if out.exists():
        shutil.rmtree(out)
    os.replace(staging, out)
    stale = out.with_name(out.name + ".rejected")
    if stale.exists() and _replaceable(stale):
        shutil.rmtree(stale)
    return ConversionResult(True, out, report, [])


def _replaceable(folder: Path) -> bool:
    """Only a bundle, a rejected conversion or an empty folder is ever deleted by --force."""
    return replaceable(folder, (MANIFEST_NAME, REPORT_NAME))


# --------------------------------------------------------------------------- data


def evaluation_data(run, data: Path | str | None, run_dataset=None) -> tuple[np.ndarray, np.ndarray, str]:
    """The gate's images: the run's test split, or every image of --data."""
    if data is None:
        dataset = run_dataset() if run_dataset else run.load_dataset()
        split = dataset.splits.get("test")
        if split is None or len(split) == 0:
            raise InputError(f"{run.path}: the run has no test split to gate on (trained with test_split 0?); "
                             "pass --data with labelled images")
        return split.x, split.y, "run test split"
    from medge.train.data import load_dataset

    dataset = load_dataset(data, classes=run.classes, spec=run.spec, val_split=0.0, test_split=0.0)
    x = np.concatenate([s.x for s in dataset.splits.values()])
    y = np.concatenate([s.y for s in dataset.splits.values()])
    if len(y) == 0:
        raise InputError(f"{data}: no labelled images to gate on")
    return x, y, str(Path(data).resolve())


def _calibration(run, config: ConvertConfig, run_dataset) -> np.ndarray:
    if config.calibration_data is None:
        split = run_dataset().splits["train"]
        x, y = split.x, split.y
    else:
        from medge.train.data import load_dataset

        dataset = load_dataset(config.calibration_data, classes=run.classes, spec=run.spec, val_split=0.0,
                               test_split=0.0)
        x = np.concatenate([s.x for s in dataset.splits.values()])
        y = np.concatenate([s.y for s in dataset.splits.values()])
    return calibration_samples(x, y, config.calibration_samples, seed=config.seed)


def _reference(model, x_eval: np.ndarray, y_eval: np.ndarray, run, config: ConvertConfig) -> dict:
    """The float Keras model's probabilities and latency: what every artifact is compared with.
    Calibrated like the run's own figures: its logits divided by the run's temperature."""
    outputs = []
    logits_model, activation = split_output_activation(model)
    with progress_task("float reference", len(x_eval), config.progress) as advance:
        for start in range(0, len(x_eval), 256):
            batch = x_eval[start:start + 256]
            outputs.append(np.asarray(logits_model(batch, training=False)))
            advance(len(batch))
    probabilities = calibrated_probabilities(np.concatenate(outputs), activation, run.temperature)

    def predict(batch):
        return np.asarray(model(batch, training=False))

    latency = median_latency_ms(predict, x_eval[0], runs=max(5, config.latency_runs // 2), warmup=3)
    metrics = classification_metrics(probabilities, y_eval, run.classes, _threshold(run))
    return {"probabilities": probabilities, "metrics": metrics, "latency_ms": {"default_threads": latency},
            "predict": lambda batch: calibrated_probabilities(np.asarray(logits_model(batch, training=False)),
                                                              activation, run.temperature)}  # heatmap check


# --------------------------------------------------------------------------- one format


def convert_one(fmt: Format, context: ExportContext, staging: Path, manifest_base: Manifest, x_eval, y_eval,
                reference: dict, run, config: ConvertConfig) -> dict:
    """Export one format, embed its metadata, and measure it on the device runtime."""
    path = staging / fmt.file
    module_name, function_name = fmt.exporter.split(":")
    export = getattr(importlib.import_module(f"medge.convert.{module_name}"), function_name)
    started = time.perf_counter()
    total = len(context.calibration) if fmt.calibrated and context.calibration is not None else 0
    with progress_task(f"calibrating {fmt.name}", total, config.progress and total > 0) as advance:
        context.progress = advance
        export(context, path)
        context.progress = None
    conversion_s = time.perf_counter() - started
    # The runtime reads output_activation from here when given the bare file, as it is just below.
    embed_metadata(path, {**model_metadata(manifest_base, fmt.name), "output_activation": context.output_activation,
                          "output_temperature": run.temperature})  # calibration: the runtime divides logits by it

    predictor = create_predictor(path, runtime=fmt.runtime)  # the row's runtime: the device default for the file
    probabilities = []
    with progress_task(f"evaluating {fmt.name} on {predictor.runtime_name}", len(x_eval), config.progress) as advance:
        for start in range(0, len(x_eval), EVAL_BATCH):
            batch = x_eval[start:start + EVAL_BATCH]
            probabilities.append(predictor.predict(batch))
            advance(len(batch))
    probabilities = np.concatenate(probabilities)
    metrics = compare(reference["probabilities"], probabilities, y_eval, run.classes, run.task, _threshold(run),
                      run.positive_class, bootstrap=config.limits.bootstrap, seed=config.seed)
    latency = {}
    for threads in config.latency_threads:
        single = create_predictor(path, runtime=predictor.runtime_name, threads=threads)
        latency[f"threads_{threads}"] = median_latency_ms(single.predict, x_eval[0], runs=config.latency_runs)
    failures = check(metrics, config.limits)
    metrics["tests"] = judge(metrics, config.limits)  # each tested change, its paired test and verdict
    from .calibration_gate import ece_comparison, judge_ece

    metrics["calibration_check"] = judge_ece(ece_comparison(reference["probabilities"], probabilities, y_eval,
                                                            config.limits.bootstrap, config.seed), config.limits)
    failures += [metrics["calibration_check"]["failure"]] if metrics["calibration_check"]["failure"] else []
    if config.heatmap_samples > 0:
        metrics.update(heatmap_agreement(reference["predict"], predictor.predict, x_eval, run.spec, run.classes,
                                         run.task, run.positive_class, samples=config.heatmap_samples))
        metrics["min_heatmap_correlation"] = config.min_heatmap_correlation
        failures += check_heatmaps(metrics, config.min_heatmap_correlation)
        metrics["heatmap_warning"] = heatmap_warning(metrics)
    if run.spec.jpeg_reduction == "auto":  # convert/decode_check.py: reduced vs full JPEG decode
        metrics["decode_check"] = decode_agreement(predictor.predict, run.spec, run.classes, run.task,
                                                   _threshold(run), run.positive_class)
        # The sample JPEGs are chest X-rays: a gate only for a model of that domain (the OOD
        # check's full-size rule), advice for any other (a fundus model's scores on them mean little).
        metrics["decode_check"]["gate"] = bool(default_full_size(run))
        failures += check_decode(metrics["decode_check"]) if metrics["decode_check"]["gate"] else []
    params = run.metrics.get("model", {}).get("params")
    return {
        "format": fmt.name,
        "description": fmt.description,
        **({"choices": context.choices[fmt.name]} if fmt.name in context.choices else {}),
        "file": fmt.file,
        "runtime": predictor.runtime_name,
        "size_bytes": path.stat().st_size,
        "size_vs_float32_weights": path.stat().st_size / (4 * params) if params else None,
        "conversion_s": conversion_s,
        **metrics,
        "latency_ms": latency,
        "input": predictor.input.to_dict(),
        "output": predictor.output.to_dict(),
        "sha256": sha256_file(path),
        "passed": not failures,
        "failures": failures,
        "probabilities": probabilities,  # dropped from the JSON report, used by the plot
    }


def _threshold(run) -> float | None:
    return run.threshold if run.task == "binary" else None


# --------------------------------------------------------------------------- manifest and report


def _manifest_base(run, config: ConvertConfig) -> Manifest:
    """The manifest without its artifacts and gate record (added once every format passed)."""
    model_info = run.metrics.get("model", {})
    applicability = None
    if config.modalities or config.body_parts:
        applicability = Applicability(modalities=tuple(m.upper() for m in config.modalities),
                                      body_parts=tuple(b.upper() for b in config.body_parts))
    binary = run.task == "binary"
    return Manifest(
        model=ModelInfo(
            name=config.name or model_info.get("name") or run.path.name,
            version=str(config.version or model_info.get("version") or "1"),
            arch=model_info.get("arch"),
            params=model_info.get("params"),
            source_run=run.path.name,
            source_sha256=sha256_file(run.model_file),
        ),
        created=utc_now(timespec="seconds"),
        medge_version=__version__,
        task=run.task,
        classes=tuple(run.classes),
        positive_class=(run.positive_class or run.classes[1]) if binary else None,
        threshold=run.threshold if binary else None,
        threshold_policy=run.metrics.get("threshold_policy"),
        preprocessing=run.spec,
        applicability=applicability,
        disclaimer=DISCLAIMER,
        **refer_sections(run),
        calibration=calibration_section(run),
    )


def calibration_section(run) -> dict:
    """The manifest's `calibration` record: the run's temperature and its validation fit (ECE/Brier
    before and after); an older run without one is recorded as uncalibrated (T = 1)."""
    fit = (run.metrics.get("calibration") or {}).get("validation") or {}
    keys = ("fitted_on", "bins", "ece_before", "ece_after", "brier_before", "brier_after", "nll_before", "nll_after",
            "note")
    return clean_json({"method": fit.get("method", "temperature") if fit else "none", "temperature": run.temperature,
                       **{key: fit[key] for key in keys if key in fit}})


def refer_sections(run) -> dict:
    """The run's refer band (train/refer.py) as the manifest's `decision` section; none for a run
    trained before it (the device then never refers)."""
    refer = run.metrics.get("refer") or {}
    if not refer.get("rule"):
        return {}
    return {"decision": clean_json(dict(refer["rule"], validation=refer.get("val") or {}))}


def _manifest_artifact(record: dict) -> ModelFile:
    gate_keys = ("auc", "auc_delta", "accuracy", "sensitivity", "specificity", "agreement",
                 "max_abs_score_diff", "mean_abs_score_diff", "latency_ms", "tests",
                 "heatmap_correlation", "heatmap_correlation_min", "heatmap_images", "min_heatmap_correlation",
                 "heatmap_warning", "decode_check", "calibration_check")
    return ModelFile(file=record["file"], format=record["format"], runtime=record["runtime"],
                     sha256=record["sha256"], size_bytes=record["size_bytes"],
                     input=TensorInfo.from_dict(record["input"]), output=TensorInfo.from_dict(record["output"]),
                     gate=clean_json({key: record[key] for key in gate_keys if key in record}))


def _report(run, config: ConvertConfig, data_label: str, n_images: int, reference: dict, records: list[dict],
            failures: list[str]) -> dict:
    return {
        "schema": REPORT_SCHEMA,
        "created": utc_now(timespec="seconds"),
        "medge_version": __version__,
        "run": str(run.path),
        "data": data_label,
        "n_images": n_images,
        "threshold": _threshold(run),
        "limits": config.limits.to_dict(),
        "calibration_samples": config.calibration_samples,
        "reference": {"format": "keras-f32", "runtime": "tensorflow", **reference["metrics"],
                      "latency_ms": reference["latency_ms"]},
        "artifacts": [{k: v for k, v in record.items() if k != "probabilities"} for record in records],
        "passed": not failures,
        "failures": failures,
        "disclaimer": DISCLAIMER,
    }


def clean_json(value):
    """NaN/inf -> null and numpy scalars -> Python, so every file we write is strict JSON."""
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    if isinstance(value, np.generic):
        return clean_json(value.item())
    return value


def _json(data: dict) -> str:
    import json

    return json.dumps(clean_json(data), indent=2) + "\n"
