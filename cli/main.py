"""The `medge` command line: one click group whose subcommands load lazily.

Subcommands live beside the code they drive (`medge.train.cli`, `medge.edge.cli`, ...).
Loading them lazily keeps `medge --help` fast and lets a device that installed only
`medge[edge]` run `medge edge ...` without TensorFlow ever being imported.
"""
from __future__ import annotations

import importlib
import os

import click

from medge import __version__
from medge.edge.errors import MedgeError

# name -> "module:attribute"; the table is the single place a subcommand is registered.
COMMANDS = {
    "train": "medge.train.cli:train_command",
    "evaluate": "medge.train.cli:evaluate_command",
    "convert": "medge.convert.cli:convert_command",
    "keys": "medge.convert.cli:keys_group",
    "bundle": "medge.edge.cli:bundle_group",
    "predict": "medge.edge.cli:predict_command",
    "edge": "medge.edge.daemon_cli:edge_group",
    "dashboard": "medge.dashboard.cli:dashboard_command",
    "monitor": "medge.dashboard.cli:monitor_command",
    "demo": "medge.demo:demo_command",
    "fleet": "medge.fleet.cli:fleet_group",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        target = COMMANDS.get(name)
        if target is None:
            return None
        module_name, attribute = target.split(":")
        return getattr(importlib.import_module(module_name), attribute)

    def invoke(self, ctx):
        # Expected failures (bad data, bad bundle, bad config) end as one line and exit 1,
        # never as a traceback.
        try:
            return super().invoke(ctx)
        except MedgeError as error:
            raise click.ClickException(str(error)) from None


# auto_envvar_prefix gives the workstation commands MEDGE_<COMMAND>_<OPTION>; medge edge run/check
# switch it off for their options (allow_from_autoenv=False in edge/daemon_cli.py), so the daemon
# has exactly one environment scheme, edge/config.py's.
@click.group(
    cls=LazyGroup,
    context_settings={"auto_envvar_prefix": "MEDGE", "help_option_names": ["-h", "--help"]},
)
@click.version_option(__version__, prog_name="medge")
def cli():
    """medge: train, quantize and run medical-image classifiers at the point of care.

    Options of the workstation commands can also be set from the environment as
    MEDGE_<COMMAND>_<OPTION>, e.g. MEDGE_TRAIN_EPOCHS=5. The edge daemon (medge edge
    run/check) has one scheme of its own: its configuration keys' MEDGE_* names, e.g.
    MEDGE_SITE (shown in its help). Results are decision support, not for diagnostic use.
    """


def main():
    # TensorFlow's C++ INFO/WARNING chatter buries medge's own progress and tables.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    cli()


if __name__ == "__main__":
    main()
