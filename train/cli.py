"""`medge train` and `medge evaluate`. Options also come from MEDGE_TRAIN_* / MEDGE_EVALUATE_*."""
from __future__ import annotations

from pathlib import Path

import click

from medge.edge.errors import ConfigError

from .config import AUGMENTATIONS, DEFAULT_AUGMENT, TrainConfig

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
@click.option("--limit", type=int, help="Use at most this many training images (stratified; for quick runs).")
@click.option("--arch", type=click.Choice(["cnn", "mobilenetv2", "efficientnetb0"]), default=DEFAULTS.arch,
              help="cnn: the classic Conv2D/ReLU/MaxPool stack; mobilenetv2 (alpha 0.35) / efficientnetb0: Keras backbones.")
@click.option("--weights", default=DEFAULTS.weights,
              help="Backbone weights: imagenet (Keras download), none, or a local .weights.h5 file.")
@click.option("--input-size", type=int, default=DEFAULTS.input_size, help="Model input height = width in pixels.")
@click.option("--channels", type=click.Choice(["1", "3"]), help="Model input channels [default: 1 for cnn, 3 for backbones].")
@click.option("--interpolation", type=click.Choice(["area", "linear", "cubic", "nearest"]), default=DEFAULTS.interpolation)
@click.option("--filters", default=",".join(map(str, DEFAULTS.filters)), help="cnn: filters per conv block.")
@click.option("--batch-norm/--no-batch-norm", default=DEFAULTS.batch_norm, help="cnn: BatchNormalization after each conv.")
@click.option("--dropout", type=float, default=DEFAULTS.dropout)
@click.option("--dense-units", type=int, default=DEFAULTS.dense_units, help="cnn: hidden dense layer size (0 = none).")
@click.option("--pooling", type=click.Choice(["global", "flatten"]), default=DEFAULTS.pooling, help="cnn: head input.")
@click.option("--epochs", type=int, default=DEFAULTS.epochs, help="Maximum epochs (early stopping on validation AUC).")
@click.option("--batch-size", type=int, default=DEFAULTS.batch_size)
@click.option("--learning-rate", type=float, default=DEFAULTS.learning_rate)
@click.option("--patience", type=int, default=DEFAULTS.patience, help="Epochs without validation-AUC gain before stopping.")
@click.option("--augment", default=",".join(DEFAULT_AUGMENT),
              help=f"Training-only augmentations, comma-separated from {', '.join(AUGMENTATIONS)}; or none.")
@click.option("--class-weight", type=click.Choice(["auto", "none"]), default=DEFAULTS.class_weight,
              help="auto: weight classes inversely to their frequency.")
@click.option("--seed", type=int, default=DEFAULTS.seed, help="Seed for splits, initialisation, shuffling, augmentation.")
@click.option("--ensemble", type=int, default=DEFAULTS.ensemble, help="Train K members (seeds seed..seed+K-1), save their average.")
@click.option("--threshold-policy", default=DEFAULTS.threshold_policy,
              help="Operating threshold chosen on validation: youden, sensitivity:0.95, specificity:0.9 or fixed:0.5.")
@click.option("--bootstrap", type=int, default=DEFAULTS.bootstrap, help="Bootstrap resamples for the AUC 95% interval.")
@click.option("--quiet", "-q", is_flag=True, help="No per-epoch progress.")
def train_command(data, quiet, classes, filters, augment, channels, **options):
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
                             channels=int(channels) if channels else None, verbose=not quiet, **options)
    except TypeError as error:  # pragma: no cover - a programming error, not user input
        raise ConfigError(str(error)) from None
    from .pipeline import train

    train(config, log=lambda message: click.echo(message, err=False))


@click.command("evaluate", context_settings={"show_default": True})
@click.argument("run", type=click.Path(path_type=Path))
@click.argument("data", required=False, type=click.Path(path_type=Path))
@click.option("--split", type=click.Choice(["test", "val", "train", "all"]),
              help="Which part of DATA to evaluate [default: test if DATA has one, else all images].")
@click.option("--labels-csv", type=click.Path(path_type=Path), help="DICOM folder labels [default: DATA/labels.csv].")
@click.option("--threshold", type=float, help="Override the run's operating threshold.")
@click.option("--out", "-o", type=click.Path(path_type=Path),
              help="Where to write evaluation.json, plots, report [default: RUN/evaluations/<data name>].")
@click.option("--bootstrap", type=int, default=1000, help="Bootstrap resamples for the AUC 95% interval.")
def evaluate_command(run, data, split, labels_csv, threshold, out, bootstrap):
    """Re-evaluate the model of RUN on DATA (any format `medge train` accepts; default: the run's own test split).

    Class names in DATA must be the run's classes. Writes evaluation.json, ROC and confusion-matrix
    plots and evaluation.md. Not for diagnostic use.
    """
    from .reevaluate import evaluate_run

    result = evaluate_run(run, data, split=split, labels_csv=labels_csv, threshold=threshold, out=out,
                          bootstrap=bootstrap, log=click.echo)
    click.echo(f"evaluation written to {result}")
