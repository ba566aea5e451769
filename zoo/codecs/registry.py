"""Every codec, by id. A file names codecs by id only; nothing is imported by path.

The built-in codecs are one explicit list. Outside packages add theirs through the entry-point
group ``zoo.codecs`` (as numcodecs and zarr do), one entry per codec id::

    [project.entry-points."zoo.codecs"]
    mycodec = "mypackage.codec:MyCodec"

An entry is loaded only when a spec or an archive names an id the list lacks, and only the
entry of that name: installed packages cost nothing at import time.
"""

from __future__ import annotations

from typing import Any

from zoo.errors import PipelineError
from zoo.codecs.base import Codec
from zoo.codecs.lossless.bytegroup import ByteGroup
from zoo.codecs.lossy.codebook import Codebook
from zoo.codecs.lossless.fprans import FpRans
from zoo.codecs.lossy.l2 import L2
from zoo.codecs.lossy.lowrank import LowRank
from zoo.codecs.lossy.pranc import Pranc
from zoo.codecs.lossless.rans import Rans
from zoo.codecs.lossy.truncate import Truncate
from zoo.codecs.lossless.zstd import Zstd

ENTRY_POINT_GROUP = "zoo.codecs"

# One explicit list: tests/codecs/test_codecs.py fails when a Codec class in the package is missing here.
CODECS: list[type[Codec]] = [
    ByteGroup,
    FpRans,
    Rans,
    Zstd,
    Truncate,
    Codebook,
    LowRank,
    L2,
    Pranc,
]
_BY_ID = {cls.codec_id: cls for cls in CODECS}
_PLUGINS: dict[str, type[Codec]] = {}  # ids loaded from entry points, kept once loaded


def _from_entry_point(codec_id: str) -> type[Codec] | None:
    if codec_id in _PLUGINS:
        return _PLUGINS[codec_id]
    from importlib.metadata import entry_points  # 8-13 ms of imports: only when a plugin is asked for

    found = entry_points(group=ENTRY_POINT_GROUP, name=codec_id)
    if not found:
        return None
    entry = next(iter(found))
    try:
        cls = entry.load()
    except Exception as error:  # a broken outside package: say which, never a traceback
        raise PipelineError(f"codec {codec_id!r} from entry point {entry.value!r} does not load: "
                            f"{type(error).__name__}: {error}") from None
    if not (isinstance(cls, type) and issubclass(cls, Codec)) or getattr(cls, "codec_id", None) != codec_id:
        raise PipelineError(f"entry point {codec_id!r} ({entry.value}) is not a zoo codec class with codec_id {codec_id!r}")
    _PLUGINS[codec_id] = cls
    return cls


def codec_class(codec_id: str) -> type[Codec]:
    cls = _BY_ID.get(codec_id) or _from_entry_point(codec_id)
    if cls is None:
        known = ", ".join(sorted(_BY_ID))
        raise PipelineError(f"unknown codec {codec_id!r} (known: {known})")
    return cls


def codec_from_config(config: dict[str, Any]) -> Codec:
    if not isinstance(config, dict) or not isinstance(config.get("id"), str):
        raise PipelineError(f"a codec config must be an object with an 'id': {config!r}")
    cls = codec_class(config["id"])
    try:
        return cls.from_config(config)
    except TypeError as error:
        raise PipelineError(f"bad parameters for codec {config['id']!r}: {error}") from None


def progress_stages() -> dict[str, str]:
    """Every stage a built-in codec's survey reports (stage -> what its count counts), in the
    order they run: each codec's own order, merged in registry order."""
    stages: dict[str, str] = {}
    for cls in CODECS:
        for stage, unit in cls.stages.items():
            stages.setdefault(stage, unit)
    return stages
