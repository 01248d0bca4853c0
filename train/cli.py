"""`medge train` and `medge evaluate`. Options also come from MEDGE_TRAIN_* / MEDGE_EVALUATE_*."""
from __future__ import annotations

from pathlib import Path

import click

from medge.edge.errors import ConfigError

from .architectures import ARCHITECTURES, AUTO, help_text
from .config import AUGMENTATIONS, CLASS_WEIGHTS, DEFAULT_AUGMENT, INTERPOLATIONS, SCHEDULES, TrainConfig

DEFAULTS = TrainConfig()


def _csv(value, convert=str) -> tuple | None:
    if value is None:
        return None
    items = [item.strip() for item in str(value).split(",") if item.strip()]
    try:
        return tuple(convert(item) for item in items)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of {convert.__name__}") from None


@click.command("train", context_settings={"show_default": True})
@click.argument("data", required=False, type=click.Path(path_type=Path), envvar="MEDGE_TRAIN_DATA")
@click.option("--out", "-o", type=click.Path(path_type=Path), help="Run folder [default: runs/<name or timestamp>].")
@click.option("--name", help="Model name recorded in the run and bundle [default: the dataset's name].")
@click.option("--model-version", "version", default=DEFAULTS.version, help="Model version recorded in the run.")
@click.option("--classes", help="Class names in label order, e.g. normal,pneumonia (.npz labels 0,1,...; "
              "image trees default to the folder names; DICOM folders to the sorted labels).")
@click.option("--labels-csv", type=click.Path(path_type=Path), help="DICOM folder labels [default: DATA/labels.csv].")
@click.option("--val-split", type=float, default=DEFAULTS.val_split, help="Fraction carved from train when the data has no val split.")
@click.option("--test-split", type=float, default=DEFAULTS.test_split, help="Fraction carved from train when the data has no test split.")
@click.option("--limit", type=int, help="Use at most this many training images (stratified; for quick runs; >= 1).")
@click.option("--arch", type=click.Choice([AUTO, *ARCHITECTURES]), default=DEFAULTS.arch, help=help_text())
@click.option("--weights", default=DEFAULTS.weights,
              help="Backbone weights: imagenet (Keras download), none, or a local .weights.h5 file.")
@click.option("--input-size", type=int, default=DEFAULTS.input_size, help="Model input height = width in pixels.")
@click.option("--channels", type=click.Choice(["1", "3"]), help="Model input channels [default: the data's: 3 for colour images, 1 for grey; 3 for backbones].")
@click.option("--interpolation", type=click.Choice(INTERPOLATIONS), default=DEFAULTS.interpolation)
@click.option("--filters", default=",".join(map(str, DEFAULTS.filters)), help="cnn: filters per conv block.")
@click.option("--batch-norm/--no-batch-norm", default=DEFAULTS.batch_norm, help="cnn: BatchNormalization after each conv.")
@click.option("--dropout", type=float, default=DEFAULTS.dropout)
@click.option("--dense-units", type=int, default=DEFAULTS.dense_units, help="cnn: hidden dense layer size (0 = none).")
@click.option("--pooling", type=click.Choice(["global", "flatten"]), default=DEFAULTS.pooling, help="cnn: head input.")
@click.option("--epochs", type=int, help="Maximum epochs [default: from the dataset size, ~3000 steps, 20-100].")
@click.option("--batch-size", type=int, default=DEFAULTS.batch_size)
@click.option("--learning-rate", type=float, default=DEFAULTS.learning_rate)
@click.option("--patience", type=int, help="Epochs without gain of the 3-epoch mean validation AUC before stopping "
              "[default: a fifth of the epochs, >= 5].")
@click.option("--schedule", type=click.Choice(SCHEDULES), default=DEFAULTS.schedule,
              help="Learning rate: cosine (linear warm-up, cosine decay) or plateau (halved when validation AUC stalls).")
@click.option("--warmup-epochs", type=int, help="cosine: warm-up epochs [default: ~200 steps, <= 10 % of the epochs].")
@click.option("--label-smoothing", type=float, default=DEFAULTS.label_smoothing, help="Label smoothing of the loss (0 = none).")
@click.option("--bn-momentum", type=float, help="Batch-norm moving-average momentum [default: about one epoch, 0.9-0.99].")
@click.option("--max-minutes", type=float, default=DEFAULTS.max_minutes,
              help="Stop training past this many minutes, keeping the best epoch so far.")
@click.option("--search", type=int, default=DEFAULTS.search,
              help="Run N Optuna trials (validation only) first and train with the best configuration (search.json).")
@click.option("--search-epochs", type=int, default=DEFAULTS.search_epochs, help="--search: epochs per trial.")
@click.option("--augment", default=",".join(DEFAULT_AUGMENT),
              help=f"Training-only augmentations, comma-separated from {', '.join(AUGMENTATIONS)}; or none.")
@click.option("--class-weight", type=click.Choice(CLASS_WEIGHTS), default=DEFAULTS.class_weight,
              help="balanced: inverse class frequency; sqrt: its square root; auto: none up to 10:1 imbalance, else sqrt.")
@click.option("--seed", type=int, default=DEFAULTS.seed, help="Seed for splits, initialisation, shuffling, augmentation.")
@click.option("--ensemble", type=int, default=DEFAULTS.ensemble, help="Train K members (seeds seed..seed+K-1), save their average.")
@click.option("--task", type=click.Choice(("auto", "ordinal")), default=DEFAULTS.task,
              help="ordinal: the classes are grades in order (e.g. retinopathy 0-4): also report quadratic-weighted "
                   "kappa and mean absolute grade error.")
@click.option("--ensemble-archs", help="Ensemble members' architectures in turn, e.g. cnn,resnet18 "
              "(sets --ensemble to at least their number; they must share one preprocessing).")
@click.option("--threshold-policy", default=DEFAULTS.threshold_policy,
              help="Binary operating threshold, chosen on calibrated validation scores: youden-bootstrap (median of "
                   "the Youden thresholds of bootstrap resamples), youden, sensitivity:0.95, specificity:0.9 or fixed:0.5.")
@click.option("--bootstrap", type=int, default=DEFAULTS.bootstrap, help="Bootstrap resamples for the AUC 95% interval.")
@click.option("--refer-accuracy", type=float, default=DEFAULTS.refer_accuracy,
              help="Refer band: accuracy the decided validation images must reach; the rest are `refer`.")
@click.option("--quiet", "-q", is_flag=True, help="No per-epoch progress.")
@click.option("--verbose", "-v", is_flag=True, help="Also show TensorFlow's own log lines (hidden by default).")
def train_command(data, quiet, verbose, classes, filters, augment, channels, ensemble_archs, **options):
    """Train a classifier on DATA and write a run folder.

    DATA is a MedMNIST-style .npz, a class-per-folder image tree (DATA/{train,val,test}/CLASS/*.png
    or DATA/CLASS/*.png split by --val-split/--test-split), or a DICOM folder with labels.csv
    (file,label). Default: the bundled PneumoniaMNIST (normal / pneumonia).

    The run folder holds model.keras, metrics.json, history.json, plots and report.md.
    Results are decision support only, not for diagnostic use.
    """
    augment_names = () if str(augment).strip().lower() in ("none", "") else _csv(augment)
    try:
        config = TrainConfig(data=data, classes=_csv(classes), filters=_csv(filters, int), augment=augment_names,
                             ensemble_archs=_csv(ensemble_archs),
                             channels=int(channels) if channels else None, verbose=not quiet, **options)
    except ConfigError as error:
        raise ConfigError(_as_flag(str(error))) from None
    except TypeError as error:  # pragma: no cover - a programming error, not user input
        raise ConfigError(str(error)) from None
    from medge.edge.quiet import quiet_native_logs

    # TensorFlow's import-time absl/cudart lines are nothing a user can act on.
    with quiet_native_logs(enabled=not verbose):
        from .pipeline import train

        train(config, log=lambda message: click.echo(message, err=False))


def _as_flag(message: str) -> str:
    """"batch_size: must be ..." -> "--batch-size: must be ...": name the option the user typed."""
    key, sep, rest = message.partition(":")
    flags = {"version": "model-version"}
    if sep and key.isidentifier() and key in TrainConfig.__dataclass_fields__:
        return f"--{flags.get(key, key.replace('_', '-'))}:{rest}"
    return message


def parse_class_map(text: str | None) -> dict[str, str] | None:
    """"NORMAL=normal,PNEUMONIA=pneumonia" -> {"NORMAL": "normal", ...}; the run checks the targets."""
    if text is None:
        return None
    mapping = {}
    for item in (part.strip() for part in text.split(",")):
        source, sep, target = item.partition("=")
        if not item or not sep or not source.strip() or not target.strip():
            raise click.BadParameter(f"{item!r} is not NAME=CLASS (e.g. healthy=normal,sick=pneumonia)",
                                     param_hint="--class-map")
        mapping[source.strip()] = target.strip()
    return mapping


@click.command("evaluate", context_settings={"show_default": True})
@click.argument("run", type=click.Path(path_type=Path))
@click.argument("data", required=False, type=click.Path(path_type=Path))
@click.option("--split", type=click.Choice(["test", "val", "train", "all"]),
              help="Which part of DATA to evaluate [default: test if DATA has one, else all images].")
@click.option("--labels-csv", type=click.Path(path_type=Path), help="DICOM folder labels [default: DATA/labels.csv].")
@click.option("--threshold", type=click.FloatRange(0, 1), help="Override the run's operating threshold.")
@click.option("--out", "-o", type=click.Path(path_type=Path),
              help="Where to write evaluation.json, plots, report [default: RUN/evaluations/<data name>].")
@click.option("--bootstrap", type=click.IntRange(0), default=1000, help="Bootstrap resamples for the AUC 95% interval.")
@click.option("--class-map", help="Map DATA's folder or label names onto the run's classes, e.g. "
              "healthy=normal,bacteria=pneumonia,virus=pneumonia (several names may map to one class).")
@click.option("--verbose", "-v", is_flag=True, help="Also show TensorFlow's own log lines (hidden by default).")
def evaluate_command(run, data, split, labels_csv, threshold, out, bootstrap, class_map, verbose):
    """Re-evaluate the model of RUN on DATA (any format `medge train` accepts; default: the run's own test split).

    Class folders (or labels) in DATA are matched to the run's classes ignoring case (NORMAL =
    normal); --class-map maps other names. Rates come with Wilson 95% intervals. Writes
    evaluation.json, ROC and confusion-matrix plots and evaluation.md. Not for diagnostic use.
    """
    class_map = parse_class_map(class_map)
    from medge.edge.quiet import quiet_native_logs

    with quiet_native_logs(enabled=not verbose):
        from .reevaluate import evaluate_run

        result = evaluate_run(run, data, split=split, labels_csv=labels_csv, threshold=threshold, out=out,
                              bootstrap=bootstrap, class_map=class_map, log=click.echo)
    click.echo(f"evaluation written to {result}")
