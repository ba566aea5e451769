"""Options used by several commands, defined once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

Threads = Annotated[Optional[int], typer.Option("--threads", "-t", min=1, help="Worker threads (default: up to 8, one per core).")]
Force = Annotated[bool, typer.Option("--force", "-f", help="Replace an existing output (a file, or a model the command stores; never a folder, a device or a pipe).")]
ForceFiles = Annotated[bool, typer.Option("--force", "-f", help="Into an existing folder: replace the files of the model that are "
                                                              "there (other files stay; a folder is never removed).")]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout instead of tables.")]
Output = Annotated[Optional[Path], typer.Option("--output", "-o", help="Where to write the result.")]
ArchiveArg = Annotated[Path, typer.Argument(help="A .zoo archive or a zoo name: NAME[@REVISION][:VARIANT] (see `zoo ls`).",
                                            show_default=False)]
Base = Annotated[Optional[Path], typer.Option("--base", help="The base model the archive's differences are added to (safetensors "
                                                            "file or folder, .zoo archive or zoo name).", show_default=False)]


def refuse_stdout(output: str, instead: str) -> None:
    """`-o -` is stdout by the Unix convention, and zoo took it for a path: a file or folder named
    `-` in the current folder. Its outputs are files and folders written beside their destination
    and renamed into place (an archive's header goes in front of its payload once that is coded),
    and its stdout carries the report, so `-` is refused; `./-` still names a path called `-`."""
    if output == "-":
        from zoo.errors import InputError

        raise InputError(f"-o -: zoo writes its output to a path, not to stdout (which carries the report); use -o {instead} "
                         "instead (-o ./- for a path named -)")
