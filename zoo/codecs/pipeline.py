"""A pipeline of codecs: its text spec, its JSON form, and how a tensor goes through it.

Spec text: stages separated by ``|``, each ``id`` or ``id:key=value,key=value``. ``lossless``
is an alias for the default leaf stages; a spec with no leaf stages gets them appended, so
``codebook:bits=4`` means ``codebook:bits=4|lossless``, and a bytes stage with no grouping stage
before it gets ``bytegroup``: ``zstd`` means ``bytegroup|zstd``.

Chunk payload (one per chunk of a leaf; see docs/FORMAT.md)::

    u8 n_streams, then per stream: u8 flags, u32 stored_length, u32 decoded_length
    then the streams, concatenated.    flags bit 0: stored raw (the bytes stages were skipped)
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from zoo.codecs.base import ArrayCodec, Arrivals, BytesCodec, Codec, GroupingCodec, LossyCodec, StageProgress, TypedArray
from zoo.codecs.registry import codec_class, codec_from_config
from zoo.codecs.selection import part_label
from zoo.dtypes import DTYPES, EVEN, f8_rounding
from zoo.errors import FormatError, PipelineError

F8_TYPES = ("F8_E4M3", "F8_E5M2")  # the fp8 types lossy stages write, whose nodes say how they round (docs/FORMAT.md)
ALIASES = {"lossless": "fprans"}  # was bytegroup|zstd:level=3; archives name their codecs, so old ones still decode
DEFAULT_SPEC = "lossless"
CHUNK_BYTES = 4 << 20  # per chunk of raw storage: large enough for coder tables, small enough to stream
CHUNK_RECORD_BYTES = 16  # a chunk's index record: u64 offset, u32 length, u32 CRC-32 (docs/FORMAT.md)
BLOB_SPEC = "bytegroup|zstd:level=9"
GROUPING_FOR_BYTES = "bytegroup"  # what a spec's bytes stage with no grouping stage before it gets
MAX_STAGES = 16
MAX_STREAMS = 64

_STREAM_HEADER = struct.Struct("<BII")
_RAW = 1
_ONE_RAW_STREAM = struct.pack("<B", 1) + _STREAM_HEADER.pack(_RAW, 0, 0)  # a chunk's header, its stream's lengths to fill in


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def spec_value(value: Any) -> str:
    """A parameter's value as spec text that parses back to it. Text goes bare, as a user writes it
    (`*attn*;*mlp*`), unless bare it would read as something else: `null` or `1` (JSON, so None
    and a number: `include="null"` was stored as no include at all), `"x"` (the quotes go), ` x`
    (the parser strips it), `a,b` (a separator). That goes as a JSON string, with its separators
    escaped (the parser splits at them before it reads a value)."""
    if not isinstance(value, str):
        return json.dumps(value)
    bare = _parse_value(value.strip())
    if isinstance(bare, str) and bare == value and not any(separator in value for separator in ",|"):
        return value
    return json.dumps(value).replace(",", "\\u002c").replace("|", "\\u007c")


def stage_spec(config: dict[str, Any]) -> str:
    """One stage's spec text, `id:key=value,...`: a parameter left at None (include, exclude) says
    nothing, so the spec reads as the user would write it."""
    arguments = ",".join(f"{key}={spec_value(value)}" for key, value in config.items() if key != "id" and value is not None)
    return config["id"] + (":" + arguments if arguments else "")


def _parse_stage(text: str) -> list[Codec]:
    codec_id, _, arguments = text.strip().partition(":")
    codec_id = codec_id.strip()
    if not codec_id:
        raise PipelineError("empty stage in pipeline spec")
    if codec_id in ALIASES:
        if arguments:
            raise PipelineError(f"{codec_id!r} takes no parameters")
        return [stage for part in ALIASES[codec_id].split("|") for stage in _parse_stage(part)]
    config: dict[str, Any] = {"id": codec_id}
    for item in filter(None, (a.strip() for a in arguments.split(","))):
        key, equals, value = item.partition("=")
        if not equals or not key.strip():
            raise PipelineError(f"bad parameter {item!r} for {codec_id!r}: expected key=value")
        if key.strip() in config:
            raise PipelineError(f"{codec_id}: parameter {key.strip()!r} given twice")
        config[key.strip()] = _parse_value(value.strip())
    cls = codec_class(codec_id)  # unknown ids fail here with the list of known ones
    needed = cls.needs_one_of if issubclass(cls, LossyCodec) else ()
    if needed and not any(config.get(name) is not None for name in needed):
        choices = " or ".join(f"{name}=" for name in needed)
        example = f"{codec_id}:{needed[0]}=..."
        raise PipelineError(f"{codec_id} needs {choices} (for example {example}); its parameters: "
                            f"{', '.join(p.name for p in cls.parameters())}")
    return [codec_from_config(config)]


@dataclass(frozen=True)
class Pipeline:
    array_stages: tuple[ArrayCodec, ...]
    grouping: GroupingCodec
    bytes_stages: tuple[BytesCodec, ...]  # zero or one

    @classmethod
    def from_codecs(cls, codecs: list[Codec]) -> Pipeline:
        if len(codecs) > MAX_STAGES:
            raise PipelineError(f"pipeline has {len(codecs)} stages; at most {MAX_STAGES}")
        index = 0
        array_stages: list[ArrayCodec] = []
        while index < len(codecs) and isinstance(codecs[index], ArrayCodec):
            array_stages.append(codecs[index])
            index += 1
        rest = list(codecs[index:])
        if not rest:
            rest = _parse_stages(DEFAULT_SPEC)
            if len(array_stages) + len(rest) > MAX_STAGES:  # counted with the lossless ending, as the archive records it
                raise PipelineError(f"pipeline has {len(array_stages)} lossy stages and its lossless ending; at most {MAX_STAGES} stages")
        if isinstance(rest[0], BytesCodec):
            raise PipelineError(f"bytes stage {rest[0].codec_id!r} needs a grouping stage before it, "
                                f"such as {GROUPING_FOR_BYTES}: write '{GROUPING_FOR_BYTES}|{rest[0].codec_id}'")
        if not isinstance(rest[0], GroupingCodec):
            raise PipelineError(
                f"stage {rest[0].codec_id!r} cannot follow an array stage; "
                "after the array stages comes one grouping stage (such as bytegroup), then bytes stages"
            )
        for stage in rest[1:]:
            if isinstance(stage, ArrayCodec):
                raise PipelineError(f"stage {stage.codec_id!r} is out of place: the array stages (the lossy ones) come first, "
                                    f"before the lossless ones (write '{stage.codec_id}:...|lossless')")
            if not isinstance(stage, BytesCodec):
                raise PipelineError(f"stage {stage.codec_id!r} is out of place: only a bytes stage may follow {rest[0].codec_id!r}")
        if len(rest) > 2:
            # One bytes stage: a stream's decoded size is then known, which bounds every decoder.
            raise PipelineError("a pipeline takes at most one bytes stage (an entropy coder) after its grouping stage")
        return cls(tuple(array_stages), rest[0], tuple(rest[1:]))

    @classmethod
    def parse(cls, spec: str) -> Pipeline:
        """A pipeline from spec text, completed as the module docstring says."""
        if not isinstance(spec, str):
            raise PipelineError(f"a pipeline is SPEC text such as 'lossless' or 'truncate:bits=3', not {type(spec).__name__} {spec!r}")
        codecs = _parse_stages(spec)
        first_leaf = next((index for index, codec in enumerate(codecs) if not isinstance(codec, ArrayCodec)), len(codecs))
        if first_leaf < len(codecs) and isinstance(codecs[first_leaf], BytesCodec):
            codecs[first_leaf:first_leaf] = _parse_stages(GROUPING_FOR_BYTES)
        return cls.from_codecs(codecs)

    @classmethod
    def from_configs(cls, configs: list[dict[str, Any]]) -> Pipeline:
        if not isinstance(configs, list) or len(configs) > MAX_STAGES:
            raise FormatError("archive names a pipeline that is not a list of at most 16 stages")
        try:
            return cls.from_codecs([codec_from_config(c) for c in configs])
        except PipelineError as error:
            raise FormatError(f"archive pipeline is not usable: {error}") from None

    @property
    def stages(self) -> tuple[Codec, ...]:
        return (*self.array_stages, self.grouping, *self.bytes_stages)

    @property
    def lossless(self) -> bool:
        return all(stage.lossless for stage in self.stages)

    def configs(self) -> list[dict[str, Any]]:
        return [stage.get_config() for stage in self.stages]

    def spec(self) -> str:
        """Spec text that parses back to this pipeline."""
        return "|".join(stage_spec(config) for config in self.configs())

    # -- array stages: whole tensors ------------------------------------------------------

    def survey(self, tensors: Callable[[], Iterator[tuple[str, TypedArray]]], calibration: Any = None,
               progress: StageProgress | None = None, chunk_bytes: int = CHUNK_BYTES) -> list[Any]:
        """Each array stage's whole-model pass (see ArrayCodec.survey), in stage order; sizes are
        measured with this pipeline's own leaf stages at the archive's `chunk_bytes`. Each stage
        surveys what reaches it (Arrivals): after lowrank, its factors, not the matrices."""
        leaf = Pipeline((), self.grouping, self.bytes_stages)

        def measure(array: TypedArray) -> int:
            return leaf.stored_bytes(array, chunk_bytes)

        plans: list[Any] = []
        for index, stage in enumerate(self.array_stages):
            plans.append(stage.survey(Arrivals(self, index, tensors, tuple(plans)), calibration, progress, measure))
        return plans

    def stored_bytes(self, array: TypedArray, chunk_bytes: int) -> int:
        """What the leaf stages store for `array` as it is, in chunks of `chunk_bytes` raw bytes
        (as the archive writer cuts them), chunk index records included."""
        raw = np.ascontiguousarray(array.data).reshape(-1).view(np.uint8)
        bits = DTYPES[array.dtype].bits
        step = max(1, chunk_bytes * 8 // bits) * bits // 8
        pieces = [raw[first:first + step] for first in range(0, raw.size, step)] or [raw]
        return sum(len(self.encode_chunk(piece, array.dtype)) + CHUNK_RECORD_BYTES for piece in pieces)

    def transform(self, name: str, array: TypedArray, plans: list[Any] | None = None) -> tuple[dict[str, Any], list[tuple[dict[str, Any], TypedArray]]]:
        """Run the array stages. Returns the node tree for the header and its leaves, each a
        header dict (to be filled with its chunk index) paired with the array to store.
        `plans` are what survey returned, when it was run."""
        leaves: list[tuple[dict[str, Any], TypedArray]] = []

        def visit(item: TypedArray, first_stage: int, label: str) -> dict[str, Any]:
            for index in range(first_stage, len(self.array_stages)):
                stage = self.array_stages[index]
                if not stage.selects(label, item):
                    continue
                result = stage.encode(item, label, plans[index] if plans else None)
                parts = {}
                for part_name, part in result.parts.items():
                    after = len(self.array_stages) if part_name in result.final else index + 1
                    parts[part_name] = visit(part, after, part_label(label, part_name, part_name in result.inputs))
                node = {"stage": index, "meta": result.meta, "dtype": item.dtype, "shape": list(item.shape), "parts": parts}
                if item.dtype in F8_TYPES:  # decoded by the rounding of today, not of the archives before it
                    node["rounding"] = EVEN
                return node
            leaf = {"dtype": item.dtype, "shape": list(item.shape)}
            leaves.append((leaf, item))
            return {"leaf": leaf}

        return visit(array, 0, name), leaves

    def untransform(self, node: dict[str, Any], read_leaf: Callable[[dict[str, Any]], TypedArray], name: str = "") -> TypedArray:
        """Inverse of transform: decode every leaf with read_leaf, then the array stages. A stage's
        refusal names the tensor, `name`, when it is given."""
        if not isinstance(node, dict):
            raise FormatError("archive holds a malformed encoding node")
        if "leaf" in node:
            return read_leaf(node["leaf"])
        dtype, shape = node.get("dtype"), node.get("shape")
        if not isinstance(dtype, str) or not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise FormatError("archive encoding node lacks its dtype or shape")  # [true] passed for [1]
        stage_index = node.get("stage")
        if type(stage_index) is not int or not 0 <= stage_index < len(self.array_stages):  # not true for 1, as isinstance took it
            raise FormatError(f"archive node names stage {stage_index!r}, which the pipeline lacks")
        stage = self.array_stages[stage_index]
        parts = {}
        for part_name, child in (node.get("parts") or {}).items():
            parts[part_name] = self.untransform(child, read_leaf, name)
        where = f"tensor {name!r}: " if name else ""
        try:
            with f8_rounding(node.get("rounding") if dtype in F8_TYPES else EVEN):  # an older archive's F8: its own rule
                result = stage.decode(parts, node.get("meta") or {}, dtype, tuple(shape))
        except FormatError as error:
            raise type(error)(f"{where}{error}") from None
        except (KeyError, IndexError, TypeError, ValueError, OverflowError) as error:
            # A damaged or hostile header reaches codec code as missing parts or odd meta values.
            raise FormatError(f"{where}stage {stage.codec_id!r} cannot decode this tensor: {error}") from None
        if result.dtype != dtype or tuple(result.shape) != tuple(shape):
            raise FormatError(f"{where}stage {stage.codec_id!r} decoded {result.dtype}{list(result.shape)}, expected {dtype}{list(shape)}")
        return result

    # -- leaf stages: one chunk of raw bytes ----------------------------------------------

    def encode_chunk(self, chunk: np.ndarray, dtype: str) -> bytes:
        if not self.bytes_stages:
            # The grouping codec's one stream goes after the chunk's header, whose lengths the
            # coder fills in: joining header and stream copied the whole chunk once more (MiniLM
            # encoded 1.04-1.10x faster without the copy on one thread, 1.02-1.17x on two;
            # docs/kernels.md). With no bytes stage, a stream is stored as it is (_RAW).
            chunk_bytes = self.grouping.encode_after(_ONE_RAW_STREAM, chunk, dtype)
            if chunk_bytes is not None:
                return chunk_bytes
        streams = self.grouping.encode(chunk, dtype)
        if len(streams) > MAX_STREAMS:
            raise PipelineError(f"{self.grouping.codec_id} made {len(streams)} streams; at most {MAX_STREAMS}")
        headers, bodies = [struct.pack("<B", len(streams))], []
        for stream in streams:
            raw = memoryview(stream).cast("B") if isinstance(stream, np.ndarray) else memoryview(stream)
            coded: bytes | memoryview = self.bytes_stages[0].encode(raw) if self.bytes_stages else raw
            flags = 0
            if len(coded) >= len(raw):
                coded, flags = raw, _RAW
            headers.append(_STREAM_HEADER.pack(flags, len(coded), len(raw)))
            bodies.append(coded)
        return b"".join([*headers, *bodies])

    def decode_chunk(self, payload: bytes, dtype: str, n_elements: int) -> np.ndarray:
        view = memoryview(payload)
        if len(view) < 1:
            raise FormatError("empty chunk")
        n_streams = view[0]
        expected = self.grouping.stream_sizes(dtype, n_elements)
        if n_streams > MAX_STREAMS or (expected is not None and n_streams != len(expected)):
            raise FormatError(f"chunk declares {n_streams} streams")
        position = 1 + n_streams * _STREAM_HEADER.size
        if position > len(view):
            raise FormatError("chunk stream table is truncated")
        streams = []
        for index in range(n_streams):
            flags, stored, decoded = _STREAM_HEADER.unpack_from(view, 1 + index * _STREAM_HEADER.size)
            if expected is not None and decoded != expected[index]:
                raise FormatError(f"chunk stream {index} declares {decoded} bytes, expected {expected[index]}")
            if position + stored > len(view):
                raise FormatError("chunk stream runs past the end of the chunk")
            data = view[position:position + stored]  # a view: no copy of the stream
            position += stored
            if flags & ~_RAW:
                raise FormatError(f"chunk stream has unknown flags {flags:#x}")
            if flags & _RAW:
                if stored != decoded:
                    raise FormatError("raw chunk stream has the wrong length")
            elif self.bytes_stages:
                data = self.bytes_stages[0].decode(data, decoded)
            else:
                raise FormatError("chunk stream is marked coded but the pipeline has no coder")
            streams.append(data)
        if position != len(view):
            raise FormatError("chunk has trailing bytes")
        out = self.grouping.decode(streams, dtype, n_elements)
        return out


def _parse_stages(spec: str) -> list[Codec]:
    if not isinstance(spec, str) or not spec.strip():
        raise PipelineError("empty pipeline spec")
    return [codec for text in spec.split("|") for codec in _parse_stage(text)]
