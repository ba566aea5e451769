"""The numpy reference of every native kernel (the contract is in zoo/kernels/__init__.py).

This is the truth the C code is tested against, and the path used when the extension is not
built or ZOO_KERNELS=numpy. Outputs are bit-identical to the native ones.
"""

from __future__ import annotations

import zlib

import numpy as np

from zoo.dtypes import FLOAT_DTYPES, from_float32, get_dtype

_WORD = {1: np.uint8, 2: np.dtype("<u2"), 4: np.dtype("<u4"), 8: np.dtype("<u8")}
DEQUANTIZE_DTYPES = ("F32", "F16", "BF16")


def _as_bytes(array: np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype != np.uint8 or array.ndim != 1:
        raise ValueError(f"{what} must be a 1-D uint8 array, got {array.dtype}{list(array.shape)}")
    return np.ascontiguousarray(array)


# -- byte planes ----------------------------------------------------------------------------


def split_planes(chunk: np.ndarray, dtype: str) -> list[np.ndarray]:
    """Byte planes of a chunk of raw storage bytes (uint8, whole elements): floats rotated left
    one bit (sign lowest), then one plane per byte, most significant first."""
    chunk = _as_bytes(chunk, "chunk")
    itemsize = get_dtype(dtype).itemsize
    if itemsize not in _WORD:
        return [chunk.copy()]
    if len(chunk) % itemsize:
        raise ValueError(f"chunk of {len(chunk)} bytes is not whole {dtype} elements")
    words = chunk.view(_WORD[itemsize])
    if dtype in FLOAT_DTYPES:
        bits = itemsize * 8
        words = (words << words.dtype.type(1)) | (words >> words.dtype.type(bits - 1))
    if itemsize == 1:
        return [np.ascontiguousarray(words)]
    as_bytes = words.view(np.uint8).reshape(-1, itemsize)
    return [np.ascontiguousarray(as_bytes[:, itemsize - 1 - plane]) for plane in range(itemsize)]


def merge_planes(planes: list[np.ndarray], dtype: str) -> np.ndarray:
    """Inverse of split_planes: the raw storage bytes."""
    planes = [_as_bytes(plane, "plane") for plane in planes]
    itemsize = get_dtype(dtype).itemsize
    expected = itemsize if itemsize in _WORD else 1
    if len(planes) != expected or len({len(plane) for plane in planes}) > 1:
        raise ValueError(f"{dtype} takes {expected} planes of one length, got {[len(p) for p in planes]}")
    if itemsize not in _WORD:
        return planes[0].copy()
    if itemsize == 1:
        words = planes[0].copy()
    else:
        as_bytes = np.empty((len(planes[0]), itemsize), dtype=np.uint8)
        for plane, values in enumerate(planes):
            as_bytes[:, itemsize - 1 - plane] = values
        words = as_bytes.reshape(-1).view(_WORD[itemsize])
    if dtype in FLOAT_DTYPES:
        bits = itemsize * 8
        words = (words >> words.dtype.type(1)) | (words << words.dtype.type(bits - 1))
    return words.view(np.uint8).reshape(-1)


# -- bit packing ----------------------------------------------------------------------------

_PACK_BLOCK = 1 << 16  # elements per step; a multiple of 8, so every block starts on a byte


def _check_bits(bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= 16:
        raise ValueError(f"bits must be an integer in 1..16, got {bits!r}")
    return int(bits)


def packed_size(count: int, bits: int) -> int:
    return (count * bits + 7) // 8


def checked_indices(indices: np.ndarray, bits: int) -> tuple[np.ndarray, int]:
    """The arguments of pack_indices, checked (both paths share this): flat indices and bits."""
    bits = _check_bits(bits)
    indices = np.asarray(indices)
    if indices.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"indices must be uint8 or uint16, got {indices.dtype}")
    indices = np.ascontiguousarray(indices).reshape(-1)
    if indices.size and int(indices.max()) >= 1 << bits:
        raise ValueError(f"an index is {int(indices.max())}, which does not fit in {bits} bits")
    return indices, bits


def pack_indices(indices: np.ndarray, bits: int) -> np.ndarray:
    """LSB-first bit packing: element i takes bits [i*bits, (i+1)*bits) of a little-endian stream."""
    indices, bits = checked_indices(indices, bits)
    out = np.empty(packed_size(indices.size, bits), dtype=np.uint8)
    shifts = np.arange(bits, dtype=np.uint16)
    for start in range(0, indices.size, _PACK_BLOCK):
        block = indices[start:start + _PACK_BLOCK].astype(np.uint16)
        bit_matrix = ((block[:, None] >> shifts) & 1).astype(np.uint8)
        packed = np.packbits(bit_matrix.reshape(-1), bitorder="little")
        first = start * bits // 8
        out[first:first + len(packed)] = packed
    return out


def unpack_indices(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of pack_indices: `count` indices, uint8 for bits <= 8, else uint16."""
    bits = _check_bits(bits)
    packed = _as_bytes(packed, "packed")
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
        raise ValueError(f"count must be a non-negative integer, got {count!r}")
    count = int(count)
    if len(packed) < packed_size(count, bits):
        raise ValueError(f"{count} indices of {bits} bits need {packed_size(count, bits)} bytes, got {len(packed)}")
    out = np.empty(count, dtype=np.uint8 if bits <= 8 else np.uint16)
    weights = (np.uint16(1) << np.arange(bits, dtype=np.uint16)).astype(np.uint16)
    for start in range(0, count, _PACK_BLOCK):
        n = min(_PACK_BLOCK, count - start)
        first = start * bits // 8
        block_bits = np.unpackbits(packed[first:first + packed_size(n, bits)], bitorder="little")
        bit_matrix = block_bits[:n * bits].reshape(n, bits).astype(np.uint16)
        out[start:start + n] = bit_matrix @ weights
    return out


# -- codebook dequantization ----------------------------------------------------------------


def check_dequantize(packed, bits, rows, cols, row_codebook, codebooks, dtype):  # noqa: ANN001, ANN201 - see dequantize
    """The arguments of dequantize, checked (ValueError) and normalised; shared with the native path."""
    bits = _check_bits(bits)
    for name, value in (("rows", rows), ("cols", cols)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    rows, cols = int(rows), int(cols)
    if dtype not in DEQUANTIZE_DTYPES:
        raise ValueError(f"dequantize makes {', '.join(DEQUANTIZE_DTYPES)}, not {dtype!r}")
    packed = _as_bytes(packed, "packed")
    row_codebook = np.asarray(row_codebook)
    codebooks = np.asarray(codebooks)
    if row_codebook.dtype != np.int32 or row_codebook.shape != (rows,):
        raise ValueError(f"row_codebook must be int32 of shape ({rows},), got {row_codebook.dtype}{list(row_codebook.shape)}")
    if codebooks.dtype != np.float32 or codebooks.ndim != 2 or codebooks.shape[1] != 1 << bits:
        raise ValueError(f"codebooks must be float32 of shape (n, {1 << bits}), got {codebooks.dtype}{list(codebooks.shape)}")
    if rows and (int(row_codebook.min()) < 0 or int(row_codebook.max()) >= codebooks.shape[0]):
        raise ValueError(f"row_codebook names a codebook outside 0..{codebooks.shape[0] - 1}")
    if len(packed) < packed_size(rows * cols, bits):
        raise ValueError(f"{rows * cols} indices of {bits} bits need {packed_size(rows * cols, bits)} bytes, got {len(packed)}")
    return packed, bits, rows, cols, np.ascontiguousarray(row_codebook), np.ascontiguousarray(codebooks)


def dequantize(packed: np.ndarray, bits: int, rows: int, cols: int, row_codebook: np.ndarray,
               codebooks: np.ndarray, dtype: str) -> np.ndarray:
    """out[r, c] = codebooks[row_codebook[r], index[r*cols + c]] as `dtype` raw storage (rows, cols),
    rounded to nearest even exactly as zoo.dtypes.from_float32."""
    packed, bits, rows, cols, row_codebook, codebooks = check_dequantize(packed, bits, rows, cols, row_codebook, codebooks, dtype)
    indices = unpack_indices(packed, bits, rows * cols).reshape(rows, cols)
    values = codebooks[row_codebook[:, None], indices]
    with np.errstate(over="ignore"):  # beyond the fp16 range is inf, as the cast intends
        return from_float32(values, dtype).reshape(rows, cols)


# -- the counter-based generator ------------------------------------------------------------

_PHILOX_M0, _PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
_PHILOX_W0, _PHILOX_W1 = 0x9E3779B9, 0xBB67AE85
_MASK32 = 0xFFFFFFFF


def philox4x32_10(counters: np.ndarray, key: tuple[int, int]) -> np.ndarray:
    """Philox4x32-10 on (n, 4) uint32 counters with a 2-word key; (n, 4) uint32 words out."""
    c0, c1, c2, c3 = (counters[:, i].astype(np.uint64) for i in range(4))
    k0, k1 = np.uint64(key[0]), np.uint64(key[1])
    mask, shift = np.uint64(_MASK32), np.uint64(32)
    for round_index in range(10):
        if round_index:
            k0 = np.uint64((int(k0) + _PHILOX_W0) & _MASK32)
            k1 = np.uint64((int(k1) + _PHILOX_W1) & _MASK32)
        product0 = c0 * np.uint64(_PHILOX_M0)
        product1 = c2 * np.uint64(_PHILOX_M1)
        c0, c1, c2, c3 = ((product1 >> shift) ^ c1 ^ k0, product1 & mask, (product0 >> shift) ^ c3 ^ k1, product0 & mask)
    return np.stack([c0, c1, c2, c3], axis=1).astype(np.uint32)


def _check_u64(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < 1 << 64:
        raise ValueError(f"{name} must be an unsigned 64-bit integer, got {value!r}")
    return int(value)


_PHILOX_BLOCK = 1 << 18  # counters per step, to bound memory


def check_philox(seed: int, stream: int, count: int, offset: int) -> tuple[int, int, int, int]:
    seed, stream, offset = _check_u64("seed", seed), _check_u64("stream", stream), _check_u64("offset", offset)
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
        raise ValueError(f"count must be a non-negative integer, got {count!r}")
    count = int(count)
    if offset + count > 1 << 64:
        raise ValueError("offset + count passes 2**64")
    return seed, stream, count, offset


def philox_uniform(seed: int, stream: int, count: int, offset: int = 0) -> np.ndarray:
    """`count` float32 in [-1, 1): element j is word (offset+j) % 4 of Philox4x32-10 at block
    (offset+j) // 4, key (seed lo, seed hi), counter (block lo, block hi, stream lo, stream hi),
    mapped to (word >> 8) * 2**-23 - 1 (exact in float32)."""
    seed, stream, count, offset = check_philox(seed, stream, count, offset)
    out = np.empty(count, dtype=np.float32)
    key = (seed & _MASK32, seed >> 32)
    first_block, skip = offset // 4, offset % 4
    n_blocks = (skip + count + 3) // 4
    done = 0
    for block_start in range(0, n_blocks, _PHILOX_BLOCK):
        blocks = np.arange(block_start, min(n_blocks, block_start + _PHILOX_BLOCK), dtype=np.uint64) + np.uint64(first_block)
        counters = np.empty((len(blocks), 4), dtype=np.uint32)
        counters[:, 0] = blocks & np.uint64(_MASK32)
        counters[:, 1] = blocks >> np.uint64(32)
        counters[:, 2] = stream & _MASK32
        counters[:, 3] = stream >> 32
        words = philox4x32_10(counters, key).reshape(-1)
        if block_start == 0:
            words = words[skip:]
        words = words[:count - done]
        out[done:done + len(words)] = ((words >> np.uint32(8)).astype(np.float64) * 2.0**-23 - 1.0).astype(np.float32)
        done += len(words)
    return out


# -- the lowrank product ----------------------------------------------------------------------

_PRODUCT_BLOCK = 1 << 18  # float64 sums held per step, to bound memory
_QUIET_NAN = np.array([0x7FC00000], dtype=np.uint32).view(np.float32)[0]


def check_product(left: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The arguments of product, checked (ValueError): two float32 matrices, left's columns as many as right's rows."""
    arrays = []
    for name, array in (("left", left), ("right", right)):
        if not isinstance(array, np.ndarray) or array.dtype != np.float32 or array.ndim != 2:
            raise ValueError(f"{name} must be a 2-D float32 array, got {getattr(array, 'dtype', type(array).__name__)}"
                             f"{list(getattr(array, 'shape', []))}")
        arrays.append(np.ascontiguousarray(array))
    if arrays[0].shape[1] != arrays[1].shape[0]:
        raise ValueError(f"left {list(arrays[0].shape)} and right {list(arrays[1].shape)} do not multiply")
    return arrays[0], arrays[1]


def product(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """left (rows x rank) times right (rank x cols), float32: each element's products, exact in
    float64, summed in float64 in index order from the first (0 for rank 0), rounded once to
    float32, a NaN written as 0x7fc00000. One IEEE operation after another in a fixed order, so the
    bits do not depend on the CPU, as a BLAS's do (native/product.h is the same sum)."""
    left, right = check_product(left, right)
    (rows, rank), cols = left.shape, right.shape[1]
    out = np.zeros((rows, cols), dtype=np.float32)
    if rank == 0 or rows == 0 or cols == 0:
        return out
    step = max(1, _PRODUCT_BLOCK // cols)
    with np.errstate(invalid="ignore", over="ignore"):  # a signalling NaN, inf - inf, inf * 0, sums past float32: the spec's NaN and inf
        wide = right.astype(np.float64)
        for first in range(0, rows, step):
            factors = left[first:first + step].astype(np.float64)
            sums = np.multiply(factors[:, :1], wide[0])
            term = np.empty_like(sums)
            for k in range(1, rank):
                np.add(sums, np.multiply(factors[:, k:k + 1], wide[k], out=term), out=sums)
            out[first:first + step] = sums
    out[np.isnan(out)] = _QUIET_NAN
    return out


# -- checksums ------------------------------------------------------------------------------


def crc32(data: bytes | memoryview | np.ndarray, value: int = 0) -> int:
    """CRC-32 of the zlib polynomial, chained like zlib.crc32 (which it is)."""
    return zlib.crc32(data, value) & 0xFFFFFFFF
