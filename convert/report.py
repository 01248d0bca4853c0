"""The conversion table printed on the terminal (the same figures as conversion_report.json)."""
from __future__ import annotations

import math

from .gate import LABELS, TESTED


def _f(value, digits=4, signed=False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if abs(value) < 0.5 * 10 ** -digits:
        value = 0.0  # no "-0.0000" for a change that rounds to nothing
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def report_table(report: dict):
    """A rich Table: the float reference, then one row per artifact, with PASS/FAIL."""
    from rich.table import Table

    reference = report["reference"]
    threads = sorted({key for record in report["artifacts"] for key in record["latency_ms"]})
    table = Table(title=f"Conversion check on {report['n_images']} images ({report['data']})",
                  caption=report["disclaimer"])
    for column in ("format", "runtime", "size KiB", "AUC", "dAUC", "acc", "sens", "spec", "agree",
                   "max|d|", "mean|d|", *[f"ms {t.replace('threads_', 't')}" for t in threads], "gate"):
        table.add_column(column, justify="left" if column in ("format", "runtime", "gate") else "right")
    table.add_row("keras-f32", reference["runtime"], "-", _f(reference["auc"]), "-", _f(reference["accuracy"]),
                  _f(reference["sensitivity"]), _f(reference["specificity"]), "-", "-", "-",
                  *["-" for _ in threads], "reference")
    for record in report["artifacts"]:
        table.add_row(
            record["format"], record["runtime"], f"{record['size_bytes'] / 1024:.1f}", _f(record["auc"]),
            _f(record["auc_delta"], signed=True), _f(record["accuracy"]), _f(record["sensitivity"]),
            _f(record["specificity"]), f"{record['agreement']:.2%}", _f(record["max_abs_score_diff"]),
            _f(record["mean_abs_score_diff"]), *[_f(record["latency_ms"].get(t), 3) for t in threads],
            "[green]PASS[/green]" if record["passed"] else "[red]FAIL[/red]")
    return table


VERDICTS = {"pass": "[green]pass[/green]", "noise": "[yellow]pass (noise)[/yellow]", "fail": "[red]FAIL[/red]"}


def tests_table(report: dict):
    """The gate's decision per artifact and tested metric: the change, its paired 95% interval and
    test, the tolerance and the cap. "pass (noise)": beyond the tolerance, but the paired test
    cannot tell it from chance and it is within the cap."""
    from rich.table import Table

    limits = report["limits"]
    table = Table(title="Accuracy gate: paired tests against the float model (positive change = worse)",
                  caption=f"fail if change > cap, or change > tolerance and p < {limits.get('significance', '-')}; "
                          f"{limits.get('bootstrap', '-')} paired bootstrap resamples")
    for column in ("format", "metric", "change", "95% CI", "flips -/+", "test", "p", "tolerance", "cap", "verdict"):
        table.add_column(column, justify="left" if column in ("format", "metric", "test", "verdict") else "right")
    for record in report["artifacts"]:
        tests = record.get("tests") or {}
        for name in TESTED:
            label, test = LABELS[name], tests.get(name)
            if not test:
                continue
            interval = test.get("ci95")
            flips = f"{test['lost']}/{test['gained']}" if "lost" in test else (
                f"{test['count']}/{test['n']}" if "count" in test else "-")
            kind = ("McNemar" if "McNemar" in test["test"] else "bootstrap" if "bootstrap" in test["test"]
                    else "binomial")
            table.add_row(record["format"], label, _f(test["change"], signed=True),
                          f"{interval[0]:+.4f}..{interval[1]:+.4f}" if interval else "-", flips, kind,
                          _f(test.get("p_value"), 3), _f(test["tolerance"]), _f(test["cap"]),
                          VERDICTS.get(test["verdict"], test["verdict"]))
    return table


def print_report(report: dict) -> None:
    from rich.console import Console

    console = Console(width=160)
    console.print(report_table(report))
    if any(record.get("tests") for record in report["artifacts"]):
        console.print(tests_table(report))
