"""The pieces a source file is cut into, shared by the readers of each format."""

from __future__ import annotations

import codecs
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from zoo.errors import InputError


def is_utf8(text: str) -> bool:
    """Whether `text` encodes as UTF-8: a name read from a file system holds Python's surrogate
    escapes where its bytes are not UTF-8, and a str from JSON or a pickle may hold a lone surrogate."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def refuse_names_the_locale_would_change(names: Iterable[str]) -> None:
    """Archives hold names as UTF-8 (docs/FORMAT.md), and Python reads and writes the file system's
    names in the locale's encoding. Under a locale of another one (ISO-8859-1, KOI8-R) a name past
    ASCII would be stored, or written back, as other bytes than the file's, without a word: such a
    name is refused, with the way out. The CLI runs itself in UTF-8 mode (zoo.cli.main)."""
    encoding = sys.getfilesystemencoding()
    if codecs.lookup(encoding).name == "utf-8":
        return
    for name in names:
        if not name.isascii():
            raise InputError(f"{name!r}: names past ASCII are read and written here in {encoding}, not UTF-8 as archives hold them: "
                             "run Python in UTF-8 mode (PYTHONUTF8=1 or python -X utf8)")


@dataclass
class Segment:
    offset: int
    size: int
    tensor: str | None = None  # None: an opaque blob
    dtype: str = "U8"
    shape: tuple[int, ...] = ()
    weight: bool = True  # False: optimizer moments and the like, never selected by a lossy stage on its own
    storage: bool = False  # a torch storage that no tensor of the checkpoint covers whole (named for one, or for its key)
    # The names of the checkpoint's tensors that view this one (tied weights, slices): a lossy stage
    # touches it only where it would touch each of them (exclude=lm_head* keeps a tied lm_head exact)
    viewed_as: tuple[str, ...] = ()


@dataclass
class SourceFile:
    relpath: str
    path: Path
    size: int
    kind: str = "blob"
    segments: list[Segment] = field(default_factory=list)
    reason: str | None = None  # why a file of a tensor format is kept as opaque bytes
    # a link kept as a link (kind "link"): where it points, relative to its folder; a hard link (kind
    # "hardlink", a second name of a file): the path inside the folder of the name that holds its bytes
    target: str | None = None
    # Tensors that view another tensor's storage (a torch checkpoint's tied weights, slices):
    # {"name", "of" (the segment tensor it views), "dtype", "shape", "stride", "offset"} in elements
    # (bytes of two values for F4, as torch counts them).
    views: list[dict[str, Any]] = field(default_factory=list)
    mode: int | None = None  # a regular file's or folder's permission bits (stat.S_IMODE), given back by decompress
    empty: bool = True  # kind "folder": an empty folder, made by decompress; else one that only carries its mode
    # A file's device, inode, size and modification time (ns) when it was scanned: a build refuses a
    # file whose stamp has moved by its end, as one written while it was read (Builder.build).
    stamp: tuple[int, int, int, int, int] | None = None


def stamp_of(status: os.stat_result) -> tuple[int, int, int, int, int]:
    """What moves when a file is written: its change time too, which a writer that puts the
    modification time back (rsync --inplace -t, touch -r) cannot set."""
    return status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns


def check_relpath(relpath: str) -> str:
    """A path inside a model folder: relative, no '..', no empty or odd parts."""
    if not isinstance(relpath, str) or not relpath:
        raise InputError(f"refusing file name {relpath!r}")
    if "\\" in relpath or "\x00" in relpath:
        raise InputError(f"refusing file name {relpath!r}: a backslash (a folder separator on Windows, where the model may be "
                         "read) or a NUL in a name is not stored; rename the file, or leave it out with --exclude")
    posix = PurePosixPath(relpath)
    if posix.is_absolute() or any(part in ("", ".", "..") for part in relpath.split("/")):
        raise InputError(f"refusing file name {relpath!r}: it would land outside the output folder")
    return relpath
