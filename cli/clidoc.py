"""Renders the CLI reference (docs/cli.md) from the click commands themselves.

`python -m medge.clidoc > docs/cli.md` regenerates it; tests/test_cli.py fails when the
committed file and the code disagree, so the reference can never drift.
"""
from __future__ import annotations

import click

from medge.main import cli


def _walk(command: click.Command, path: list[str]):
    yield path, command
    if isinstance(command, click.Group):
        context = click.Context(command, info_name=path[-1])
        for name in command.list_commands(context):
            sub = command.get_command(context, name)
            if sub is not None and not sub.hidden:
                yield from _walk(sub, path + [name])


def render_cli_reference() -> str:
    parts = ["# medge CLI reference", "",
             "Generated from the code by `python -m medge.clidoc > docs/cli.md`; a test keeps it in sync.",
             "Options of the workstation commands can also be set from the environment:",
             "`MEDGE_<COMMAND>_<OPTION>`, e.g. `MEDGE_TRAIN_EPOCHS=5`. `medge edge run` and `medge edge check`",
             "read only their configuration's `MEDGE_*` names, shown in each option's help (`[env: ...]`).", ""]
    for path, command in _walk(cli, ["medge"]):
        # A fixed width: the reference must not depend on the terminal it was generated in.
        context = click.Context(command, info_name=" ".join(path), terminal_width=100, max_content_width=100)
        parts += [f"## `{' '.join(path)}`", "", "```", command.get_help(context).rstrip(), "```", ""]
    return "\n".join(parts)


def iter_command_paths() -> list[list[str]]:
    return [path for path, _ in _walk(cli, ["medge"])]


if __name__ == "__main__":
    print(render_cli_reference())
