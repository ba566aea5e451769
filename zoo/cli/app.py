"""Assembles the app from one module per command group; each command is thin over the library."""

from __future__ import annotations

import typer

from zoo.cli import archive_commands, eval_commands, native_commands, sweep_commands, zoo_commands

app = typer.Typer(
    name="zoo",
    help="A model zoo and checkpoint compressor.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

for module in (archive_commands, zoo_commands, sweep_commands, eval_commands, native_commands):
    module.register(app)
