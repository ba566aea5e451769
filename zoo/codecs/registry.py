"""Every codec, by id. A file names codecs by id only; nothing is imported by path."""

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
