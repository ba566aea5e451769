"""Every codec, by id. A file names codecs by id only; nothing is imported by path."""

from __future__ import annotations

from typing import Any

from ..errors import PipelineError
from .base import Codec
from .bytegroup import ByteGroup
from .codebook import Codebook
from .fprans import FpRans
from .l2 import L2
from .lowrank import LowRank
from .pranc import Pranc
from .rans import Rans
from .truncate import Truncate
from .zstd import Zstd

# One explicit list: tests/test_codecs.py fails when a Codec class in the package is missing here.
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


def codec_class(codec_id: str) -> type[Codec]:
    try:
        return _BY_ID[codec_id]
    except KeyError:
        known = ", ".join(sorted(_BY_ID))
        raise PipelineError(f"unknown codec {codec_id!r} (known: {known})") from None


def codec_from_config(config: dict[str, Any]) -> Codec:
    if not isinstance(config, dict) or not isinstance(config.get("id"), str):
        raise PipelineError(f"a codec config must be an object with an 'id': {config!r}")
    cls = codec_class(config["id"])
    try:
        return cls.from_config(config)
    except TypeError as error:
        raise PipelineError(f"bad parameters for codec {config['id']!r}: {error}") from None
