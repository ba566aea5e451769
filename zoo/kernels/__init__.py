"""The kernels zoo calls, from the native extension when it is built and usable, else numpy.

Contract (every path gives bit-identical results; zoo/kernels/fallback.py is the reference):

- split_planes(chunk uint8, dtype) -> list of uint8 planes; merge_planes(planes, dtype) -> uint8.
- pack_indices(indices uint8|uint16, bits) -> uint8, LSB-first; unpack_indices(packed, bits, count).
- dequantize(packed, bits, rows, cols, row_codebook int32, codebooks float32, dtype) -> storage (rows, cols).
- philox_uniform(seed, stream, count, offset=0) -> float32 in [-1, 1) (docs/FORMAT.md).
- product(left float32 (rows, rank), right float32 (rank, cols)) -> float32 (rows, cols), summed in
  float64 in a fixed order: the same bits on every CPU, as a BLAS's float32 matmul is not.
- crc32(data, value=0) -> int: exactly zlib.crc32 (the archive's chunk checksums).
- encode_section(words uint8, word_bytes, is_float, symbol_bits, prefix=b"", lengths_at=-1) -> prefix + coded
  bytes; with lengths_at >= 0 the two u32 at that offset of `prefix` (a stream header's lengths) are set
  to the length of all that follows them (ValueError where they do not lie within `prefix`), and
  decode_section(payload, offset, count, word_bytes, is_float) -> (uint8 array, end offset):
  the entropy coder of the fprans and rans codecs (zoo/kernels/fallback_coder.py, docs/FORMAT.md).

ZOO_KERNELS=numpy|scalar|avx2|avx2-loads|avx512|avx512-ymm forces a path; unset or `auto` takes the
best the CPU has (on AMD's CPUs, whose gathers are slower, of the two AVX-512 tables avx512-ymm, whose
rANS decoding gathers 8 lanes at a time, and of the two AVX2 tables avx2-loads, whose rANS decoding
looks its slots up by scalar loads; docs/kernels.md).
"""

from __future__ import annotations

import os
from typing import Any

from zoo.kernels import fallback as _fallback, fallback_coder as _fallback_coder
from zoo.errors import ZooError

PATHS = ("auto", "numpy", "scalar", "avx2", "avx2-loads", "avx512", "avx512-ymm")


def _requested() -> str:
    requested = os.environ.get("ZOO_KERNELS", "").strip().lower() or "auto"
    if requested not in PATHS:
        raise ZooError(f"ZOO_KERNELS={requested!r} is not one of {', '.join(PATHS)}")
    return requested


def _load_native(requested: str) -> tuple[Any, str, str]:
    """(module or None, path name, why this path)."""
    if requested == "numpy":
        return None, "numpy", "forced by ZOO_KERNELS"
    try:
        from zoo import _native  # type: ignore[attr-defined]
    except ImportError as error:
        if requested != "auto":
            raise ZooError(f"ZOO_KERNELS={requested} needs the native extension, which is not built here ({error})") from None
        return None, "numpy", f"native extension not built ({error})"
    available = _native.available_isas()
    if requested == "auto":
        return _native, _native.select_isa(_native.best_isa()), "best the CPU supports"
    if requested not in available:
        raise ZooError(f"ZOO_KERNELS={requested}: this CPU supports only {', '.join(available)}")
    return _native, _native.select_isa(requested), "forced by ZOO_KERNELS"


_native_module, PATH, _REASON = _load_native(_requested())

# map_file(fd, size) -> a read-only map of the file that survives its truncation (native/mapping.c),
# or None where the native extension is not in use: readers then copy with pread. maps_guarded()
# says whether that still holds (not while a SIGBUS handler installed later displaces zoo's).
map_file = None if _native_module is None else _native_module.map_file
maps_guarded = None if _native_module is None else _native_module.maps_guarded

if _native_module is None:
    split_planes = _fallback.split_planes
    merge_planes = _fallback.merge_planes
    pack_indices = _fallback.pack_indices
    unpack_indices = _fallback.unpack_indices
    dequantize = _fallback.dequantize
    philox_uniform = _fallback.philox_uniform
    product = _fallback.product
    crc32 = _fallback.crc32
    encode_section = _fallback_coder.encode_section
    decode_section = _fallback_coder.decode_section
else:
    from zoo.kernels.native import (  # noqa: F401 - re-exported
        crc32,
        decode_section,
        dequantize,
        encode_section,
        merge_planes,
        pack_indices,
        philox_uniform,
        product,
        split_planes,
        unpack_indices,
    )


def cpu_model() -> str:
    """The processor's name as the OS reports it ("Intel(R) Xeon(R) Processor", "AMD EPYC 7B13"):
    what every measured figure names beside it."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown CPU"


def info() -> dict[str, Any]:
    """What `zoo env` prints: the CPU, the path in use, why, and what the CPU offers."""
    document: dict[str, Any] = {"cpu": cpu_model(), "kernels": PATH, "reason": _REASON, "requested": _requested()}
    described = _native_module
    if described is None:  # forced to numpy: the extension, when it is built, still says what the CPU offers
        try:
            from zoo import _native as described  # type: ignore[attr-defined, no-redef]
        except ImportError:
            pass
    if described is not None:
        document["cpu_features"] = described.cpu_features()
        document["available"] = list(described.available_isas())
    return document
