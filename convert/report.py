"""The conversion table printed on the terminal (the same figures as conversion_report.json)."""
from __future__ import annotations

import math


def _f(value, digits=4, signed=False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def report_table(report: dict):
    """A rich Table: the float reference, then one row per artifact, with PASS/FAIL."""
    from rich.table import Table

    reference = report["reference"]
    threads = sorted({key for record in report["artifacts"] for key in record["latency_ms"]})
    table = Table(title=f"Conversion check on {report['n_images']} images ({report['data']})",
                  caption=f"limits: AUC drop <= {report['limits']['max_auc_drop']}, sensitivity drop <= "
                          f"{report['limits']['max_sensitivity_drop']}, agreement >= {report['limits']['min_agreement']}. "
                          + report["disclaimer"])
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


def print_report(report: dict) -> None:
    from rich.console import Console

    Console(width=160).print(report_table(report))
