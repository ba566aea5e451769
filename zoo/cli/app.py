"""Assembles the app from one module per command group; each command is thin over the library."""

from __future__ import annotations

import copy
from typing import Any

import typer
from typer.core import TyperArgument, TyperCommand, TyperOption
from typer.models import TyperPath

from zoo.cli import archive_commands, eval_commands, native_commands, sweep_commands, zoo_commands
from zoo.cli.options import refuse_stdout
from zoo.cli.stopping import Stopped
from zoo.errors import InputError


def _is_url(value: str) -> bool:
    from zoo.hub.remote import is_url  # only for a value that holds "://": not on every command's start

    return is_url(value)


class _GivenPath(TyperPath):
    """A path parameter that refuses an empty value, which pathlib reads as the current folder:
    `zoo decompress "" -o out` answered that `.` was no archive, and `-o ""` wrote into `.`; and a
    URL, which pathlib reads as a local path of one slash. An output option given `-` (stdout, to a
    Unix user) is refused before pathlib makes `./-` the same path as `-` (zoo.cli.options)."""

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        named = param.human_readable_name if isinstance(param, TyperArgument) else param.opts[0]
        if isinstance(value, str) and not value:
            raise InputError(f"{named} is empty")
        if isinstance(value, str) and "://" in value and _is_url(value):  # a Path made s3://b/x.zoo the file s3:/b/x.zoo
            raise InputError(f"{named} {value}: a URL, where this command takes a local path")
        if isinstance(param, TyperOption) and param.name == "output" and isinstance(value, str):
            refuse_stdout(value, param.metavar or "PATH")
        return super().convert(value, param, ctx)


class Command(TyperCommand):
    """A command whose arguments read as words in its usage line and help (`zoo info ARCHIVE`),
    not as template slots (`{archive}`), whose paths are never empty, and that, stopped by a
    signal, leaves its exit status to zoo.cli.main (zoo.cli.stopping)."""

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003 - click's own signature
        super().__init__(*args, **kwargs)
        for param in self.params:
            if isinstance(param, TyperArgument) and param.metavar is None:
                param.metavar = (param.name or "").upper()
            if type(param.type) is TyperPath:
                param.type = copy.copy(param.type)
                param.type.__class__ = _GivenPath

    def make_parser(self, ctx: Any) -> Any:
        """click's parser, refusing an option of one value given twice: click kept the last, so
        `compress -p truncate:bits=3 -p codebook:bits=4` stored codebook alone, with no word."""
        parser = super().make_parser(ctx)
        parse = parser.parse_args

        def parse_args(args: list[str]) -> Any:
            opts, rest, order = parse(args=args)
            single = [param for param in order if isinstance(param, TyperOption) and not param.multiple and not param.is_flag
                      and not param.count]
            for param in single:
                if single.count(param) > 1:
                    raise InputError(f"{param.opts[0]} is given more than once; it takes one value")
            return opts, rest, order

        parser.parse_args = parse_args
        return parser

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as interrupt:  # its cleanup has run: the signal's own status and message (zoo.cli.main)
            raise Stopped.by(interrupt) from None

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                word = (param.metavar or param.name or "").upper() + ("..." if param.nargs != 1 else "")
                pieces.append(word if param.required else f"[{word}]")
        return pieces


HELP = "A model zoo and checkpoint compressor."


def _new_app() -> typer.Typer:
    return typer.Typer(name="zoo", help=HELP, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                       rich_markup_mode=None)


app = _new_app()
for module in (archive_commands, zoo_commands, sweep_commands, eval_commands, native_commands):
    module.register(app)
for registered in app.registered_commands:
    if registered.cls in (None, TyperCommand):
        registered.cls = Command


def _name(registered: typer.models.CommandInfo) -> str:
    return registered.name or registered.callback.__name__.lower().replace("_", "-")  # typer's own rule


def app_for(argv: list[str]) -> typer.Typer:
    """The app to run for `argv`: where it names a command, an app holding that command alone, which
    parses and runs it as the whole app would. typer makes every command's click object from the
    signature and annotations of its function before it parses anything, about 11 ms for all of
    zoo's commands; one command needs only its own."""
    chosen = [registered for registered in app.registered_commands if argv[1:2] == [_name(registered)]]
    if len(chosen) != 1:
        return app
    single = _new_app()
    single.callback(help=HELP)(lambda: None)  # a group still, so that the command's name is a word of the command line
    single.registered_commands = chosen
    return single
