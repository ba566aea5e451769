"""The numpy reference of the section coder (native/coder.c; format in docs/FORMAT.md).

It encodes to the same bytes as the C coder and decodes everything the C coder writes, so an
archive is the same with or without the extension. rANS is sequential along each lane, so this
loops over steps in Python and works on all lanes of a step at once; sections of many words use
up to 512 lanes to keep that loop short.
"""

from __future__ import annotations

import operator
import struct

import numpy as np

KIND_RAW, KIND_CODED = 0, 1
BLOCK = 128  # words sharing one count of dropped trailing zero bits
MAX_SYMBOLS = 256
SAMPLE_FROM, SAMPLE_STRIDE = 65536, 4  # sections this long count every fourth word's symbol (native/coder.c)
# a long section's uncounted symbols that may count 1 unasked, and 1/SPREAD, the most of its counted words one symbol may hold
# for that (_sampled_histogram; native/coder.c)
GAP_LIMIT, SPREAD = 32, 8
MAX_SYMBOL_BITS = 12
PROB_BITS = 12
TOTAL = 1 << PROB_BITS
LOW = 1 << 16
_WORD = {1: np.dtype("u1"), 2: np.dtype("<u2"), 4: np.dtype("<u4")}


def _check(word_bytes: int) -> None:
    if word_bytes not in _WORD:
        raise ValueError("sections hold 1-, 2- or 4-byte words")


def _keys(words: np.ndarray, word_bytes: int, is_float: bool) -> np.ndarray:
    keys = words.view(_WORD[word_bytes]).astype(np.int64)
    if is_float:
        bits = 8 * word_bytes
        keys = ((keys << 1) | (keys >> (bits - 1))) & ((1 << bits) - 1)
    return keys


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def normalize(counts: np.ndarray) -> np.ndarray:
    """Frequencies summing to TOTAL, each at least 1: exactly native/coder.c's normalize()."""
    counts = counts.astype(np.int64)
    total = int(counts.sum())
    scaled = counts * TOTAL
    freqs, remainders = scaled // total, scaled % total
    remainders[freqs == 0] = 0
    freqs[freqs == 0] = 1
    missing = TOTAL - int(freqs.sum())
    if missing > 0:
        candidates = np.flatnonzero(remainders)
        order = candidates[np.lexsort((candidates, -remainders[candidates]))]
        take = order[:missing]
        freqs[take] += 1
        missing -= len(take)
        if missing > 0:
            freqs[int(np.argmax(freqs))] += missing
    while missing < 0:
        freqs[int(np.argmax(freqs))] -= 1
        missing += 1
    return freqs


def _lane_log2(count: int) -> int:
    """The writer's choice of lanes (the format lets it choose): as native/coder.c chooses."""
    lane_log2 = 5
    while lane_log2 < 9 and (count >> 16) >> (lane_log2 - 4):
        lane_log2 += 1
    return 7 if lane_log2 == 6 else lane_log2  # 64 lanes decode at a step's latency: 128 instead


def _rans_encode(ranks: np.ndarray, freqs: np.ndarray, lane_log2: int) -> bytes:
    lanes = 1 << lane_log2
    cums = np.concatenate([[0], np.cumsum(freqs)[:-1]]).astype(np.int64)
    states = np.full(lanes, LOW, dtype=np.int64)
    emitted: list[np.ndarray] = []
    count = len(ranks)
    for start in range((count - 1) // lanes * lanes, -1, -lanes):
        rank = ranks[start:start + lanes]
        k = len(rank)
        x, f = states[:k], freqs[rank]
        emit = x >= (f << (32 - PROB_BITS))
        emitted.append((x[emit] & 0xFFFF).astype("<u2"))
        x = np.where(emit, x >> 16, x)
        quotient = x // f
        states[:k] = (quotient << PROB_BITS) + (x - quotient * f) + cums[rank]
    words = np.concatenate(emitted[::-1]) if emitted else np.zeros(0, "<u2")
    return struct.pack("<BI", lane_log2, 4 * lanes + 2 * len(words)) + states.astype("<u4").tobytes() + words.tobytes()


_BITS_STEP = 8192  # values per step of the bit (un)packers: a multiple of 8, so each step is whole bytes


def _pack_bits(values: np.ndarray, width: int) -> bytes:
    if width == 0 or len(values) == 0:
        return b""
    shifts = np.arange(width, dtype=np.uint32)
    pieces = []
    for start in range(0, len(values), _BITS_STEP):
        step = values[start:start + _BITS_STEP].astype(np.uint32)
        pieces.append(np.packbits(((step[:, None] >> shifts) & 1).astype(np.uint8).reshape(-1), bitorder="little").tobytes())
    return b"".join(pieces)


def _unpack_bits(data: np.ndarray, width: int, count: int) -> np.ndarray:
    out = np.zeros(count, dtype=np.uint32)
    if width == 0:
        return out
    weights = np.uint32(1) << np.arange(width, dtype=np.uint32)
    for start in range(0, count, _BITS_STEP):
        n = min(_BITS_STEP, count - start)
        first = start * width // 8
        bits = np.unpackbits(data[first:first + (n * width + 7) // 8], bitorder="little")[:n * width].reshape(n, width)
        out[start:start + n] = (bits * weights).sum(axis=1, dtype=np.uint32)
    return out


def _runs(block_zeros: np.ndarray, count: int) -> list[tuple[int, int, int]]:
    """(first word, word count, zeros) for each run of blocks that drop the same number of bits."""
    if count == 0:
        return []
    edges = np.flatnonzero(np.diff(block_zeros)) + 1
    starts = np.concatenate([[0], edges]) * BLOCK
    stops = np.minimum(np.concatenate([edges * BLOCK, [count]]), count)
    return [(int(a), int(b - a), int(block_zeros[a // BLOCK])) for a, b in zip(starts, stops)]


def encode_section(words: np.ndarray | bytes | memoryview, word_bytes: int, is_float: bool, symbol_bits: int, prefix: bytes = b"",
                   lengths_at: int = -1) -> bytes:
    """`prefix` + the coded section (the native coder writes both into one buffer, without a copy).
    With `lengths_at`, the two u32 at that offset of `prefix` are set to the length of what follows
    them (a stream header's, docs/FORMAT.md)."""
    prefix = bytes(memoryview(prefix).cast("B"))  # counted in bytes, as the native coder counts it
    lengths_at = operator.index(lengths_at)
    if not -(1 << 63) <= lengths_at < 1 << 63:
        raise OverflowError("lengths_at does not fit a C ssize_t")
    section = _encode_section(words, word_bytes, is_float, symbol_bits)
    if lengths_at == -1:
        return prefix + section
    if not 0 <= lengths_at <= len(prefix) - 8:
        raise ValueError("the prefix holds no two lengths there")
    length = len(prefix) - (lengths_at + 8) + len(section)
    if length > 0xFFFFFFFF:
        raise ValueError("the stream is too long for its header's lengths")
    return prefix[:lengths_at] + struct.pack("<II", length, length) + prefix[lengths_at + 8:] + section


def _sampled_histogram(symbols: np.ndarray, present: np.ndarray, symbol_bits: int) -> np.ndarray:
    """As native/coder.c counts a long section: every fourth word's symbol, and count 1 for each
    symbol the others alone hold. Where at most GAP_LIMIT of the symbols between the smallest
    nonzero one and the largest go uncounted (and at most MAX_SYMBOLS result, 0 among them where
    it occurs), and no symbol holds more than 1/SPREAD of the counted words, each of those gets
    count 1 without asking whether it occurs; else only those that occur."""
    sampled = np.bincount(symbols[::SAMPLE_STRIDE], minlength=1 << symbol_bits)
    nonzero = np.flatnonzero(present[1:]) + 1
    if len(nonzero) and int(sampled.max()) * SPREAD <= int(sampled.sum()):
        first, last = int(nonzero[0]), int(nonzero[-1])
        if last - first + 1 + int(present[0]) <= MAX_SYMBOLS and np.count_nonzero(sampled[first:last + 1] == 0) <= GAP_LIMIT:
            present = present.copy()
            present[first:last + 1] = True
    return np.where(present, np.maximum(sampled, 1), 0)


def _encode_section(words: np.ndarray | bytes | memoryview, word_bytes: int, is_float: bool, symbol_bits: int) -> bytes:
    _check(word_bytes)
    words = np.frombuffer(words, dtype=np.uint8) if not isinstance(words, np.ndarray) else words.reshape(-1).view(np.uint8)
    if len(words) % word_bytes:
        raise ValueError("section input is not whole words")
    count, bits = len(words) // word_bytes, 8 * word_bytes
    raw = bytes([KIND_RAW]) + words.tobytes()
    if count == 0 or count > 0xFFFFFFFF or not 8 <= symbol_bits <= min(bits, MAX_SYMBOL_BITS):
        return raw
    keys = _keys(words, word_bytes, is_float)
    symbols = keys >> (bits - symbol_bits)
    histogram = np.bincount(symbols, minlength=1 << symbol_bits)
    if count >= SAMPLE_FROM:
        histogram = _sampled_histogram(symbols, histogram > 0, symbol_bits)
    while np.count_nonzero(histogram) > MAX_SYMBOLS:
        histogram = histogram[0::2] + histogram[1::2]
        symbol_bits -= 1
    remainder_bits = bits - symbol_bits
    low_bits = remainder_bits - 1 if is_float and remainder_bits else remainder_bits
    used = np.flatnonzero(histogram)
    parts = [struct.pack("<BBH", KIND_CODED, symbol_bits, len(used))]
    if len(used) == 1:
        parts.append(struct.pack("<H", int(used[0])))
    else:
        freqs = normalize(histogram[used])
        previous = -1
        for symbol, freq in zip(used.tolist(), freqs.tolist()):
            parts.append(_varint(symbol if previous < 0 else symbol - previous - 1) + _varint(freq - 1))
            previous = symbol
        rank_of = np.zeros(1 << symbol_bits, dtype=np.int64)
        rank_of[used] = np.arange(len(used))
        parts.append(_rans_encode(rank_of[keys >> remainder_bits], freqs, _lane_log2(count)))
    if remainder_bits:
        remainders = keys & ((1 << remainder_bits) - 1)
        low = remainders >> (remainder_bits - low_bits)
        seen = np.bitwise_or.reduceat(low, np.arange(0, count, BLOCK))
        lowest = seen & -seen
        zeros = np.where(seen == 0, low_bits, np.minimum(np.log2(np.maximum(lowest, 1)).astype(np.int64), low_bits))
        parts.append(bytes([1 if zeros.any() else 0]))
        if zeros.any():
            parts.append(_encode_section(zeros.astype(np.uint8), 1, False, 8))
        packed = []
        for first, n, dropped in _runs(zeros, count):
            rest = remainders[first:first + n]
            values = (((rest >> 1) >> dropped) << 1) | (rest & 1) if is_float else rest >> dropped
            packed.append(_pack_bits(values, remainder_bits - dropped))
        body = b"".join(packed)
        parts.append(struct.pack("<I", len(body)) + body)
    coded = b"".join(parts)
    return raw if len(coded) >= len(raw) else coded


class _Reader:
    def __init__(self, payload: memoryview, offset: int) -> None:
        self.payload, self.position = payload, offset

    def take(self, n: int, what: str = "coded section is truncated") -> memoryview:
        if n < 0 or self.position + n > len(self.payload):
            raise ValueError(what)
        self.position += n
        return self.payload[self.position - n:self.position]

    def number(self, fmt: str) -> int:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def varint(self) -> int:
        value = 0
        for shift in range(0, 28, 7):
            byte = self.number("<B")
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
        raise ValueError("coded section has an overlong number")


def _rans_decode(reader: _Reader, freqs: np.ndarray, count: int) -> np.ndarray:
    lane_log2, length = reader.number("<B"), reader.number("<I")
    if not 5 <= lane_log2 <= 9:
        raise ValueError("section names a bad number of rANS lanes")
    lanes = 1 << lane_log2
    if length < 4 * lanes or length & 1:
        raise ValueError("section's rANS stream is truncated")
    data = reader.take(length, "section's rANS stream is truncated")
    states = np.frombuffer(data[:4 * lanes], dtype="<u4").astype(np.int64)
    if (states < LOW).any():
        raise ValueError("section's rANS state is out of range")
    stream = np.frombuffer(data[4 * lanes:], dtype="<u2")
    slot_rank = np.repeat(np.arange(len(freqs)), freqs)
    slot_freq = freqs[slot_rank]
    slot_bias = np.arange(TOTAL) - np.concatenate([[0], np.cumsum(freqs)[:-1]])[slot_rank]
    ranks = np.empty(count, dtype=np.uint8)  # at most 256 symbols
    position = 0
    for start in range(0, count, lanes):
        k = min(lanes, count - start)
        x = states[:k]
        slot = x & (TOTAL - 1)
        ranks[start:start + k] = slot_rank[slot]
        x = slot_freq[slot] * (x >> PROB_BITS) + slot_bias[slot]
        refill = x < LOW
        n = int(np.count_nonzero(refill))
        if position + n > len(stream):
            raise ValueError("section's rANS stream is truncated")
        x[refill] = (x[refill] << 16) | stream[position:position + n].astype(np.int64)
        position += n
        states[:k] = x
    if (states != LOW).any():
        raise ValueError("section's rANS stream does not check out")
    if position != len(stream):
        raise ValueError("section's rANS stream has trailing words")
    return ranks


def decode_section(payload: bytes | memoryview, offset: int, count: int, word_bytes: int, is_float: bool,
                   nested: bool = False) -> tuple[np.ndarray, int]:
    """The `count` words (as bytes) of the section at payload[offset:], and where it ends.
    `nested`: this section holds another's block zeros, which never carry block zeros of their own
    (the encoder writes them with whole bytes as symbols); refusing that bounds the recursion."""
    _check(word_bytes)
    reader = _Reader(memoryview(payload).cast("B"), offset)
    bits = 8 * word_bytes
    kind = reader.number("<B")
    if kind == KIND_RAW:
        data = reader.take(count * word_bytes, "raw section is truncated")
        return np.frombuffer(data, dtype=np.uint8).copy(), reader.position
    if kind != KIND_CODED:
        raise ValueError("section has an unknown kind")
    symbol_bits, n_used = reader.number("<B"), reader.number("<H")
    if not 1 <= symbol_bits <= min(bits, MAX_SYMBOL_BITS):
        raise ValueError("section names a bad symbol width")
    if not 1 <= n_used <= min(MAX_SYMBOLS, 1 << symbol_bits):
        raise ValueError("section names a bad alphabet size")
    if count == 0:
        raise ValueError("coded section holds no words")
    remainder_bits = bits - symbol_bits
    low_bits = remainder_bits - 1 if is_float and remainder_bits else remainder_bits
    if n_used == 1:
        symbols = np.array([reader.number("<H")], dtype=np.uint32)
        if symbols[0] >> symbol_bits:
            raise ValueError("section's only symbol is out of range")
        ranks = np.zeros(count, dtype=np.uint8)
    else:
        symbol, table = -1, []
        for _ in range(n_used):
            delta, freq = reader.varint(), reader.varint() + 1
            symbol = delta if symbol < 0 else symbol + 1 + delta
            if symbol >> symbol_bits or delta >> symbol_bits:
                raise ValueError("section's symbol table is out of range")
            if freq >= TOTAL:
                raise ValueError("section's symbol table has a bad frequency")
            table.append((symbol, freq))
        symbols = np.array([s for s, _ in table], dtype=np.uint32)
        freqs = np.array([f for _, f in table], dtype=np.int64)
        if int(freqs.sum()) != TOTAL:
            raise ValueError("section's frequencies do not add up")
        ranks = _rans_decode(reader, freqs, count)
    keys = symbols[ranks] << np.uint32(remainder_bits)  # uint32 throughout: words are at most 32 bits
    if remainder_bits:
        n_blocks = (count + BLOCK - 1) // BLOCK
        zeros_kind = reader.number("<B")
        if zeros_kind > 1:
            raise ValueError("section has an unknown zeros kind")
        block_zeros = np.zeros(n_blocks, dtype=np.int64)
        if zeros_kind == 1 and nested:
            raise ValueError("section's block zeros carry block zeros of their own")
        if zeros_kind == 1:
            decoded, reader.position = decode_section(reader.payload, reader.position, n_blocks, 1, False, nested=True)
            block_zeros = decoded.astype(np.int64)
            if (block_zeros > low_bits).any():
                raise ValueError("section drops more bits than a word has")
        sizes = np.minimum(BLOCK, count - np.arange(n_blocks) * BLOCK)
        total_bits = int((sizes * (remainder_bits - block_zeros)).sum())
        length = reader.number("<I")
        if length != (total_bits + 7) // 8:
            raise ValueError("section's raw bits have the wrong length")
        raw_bits = np.frombuffer(reader.take(length, "section's raw bits have the wrong length"), dtype=np.uint8)
        byte = 0
        for first, n, dropped in _runs(block_zeros, count):
            width = remainder_bits - dropped
            values = _unpack_bits(raw_bits[byte:byte + (n * width + 7) // 8], width, n)
            byte += n * width // 8
            one, kept = np.uint32(1), np.uint32(dropped)
            rest = (((values >> one) << (kept + one)) | (values & one)) if is_float else values << kept
            keys[first:first + n] |= rest & np.uint32((1 << remainder_bits) - 1)
    if is_float:
        keys = (keys >> np.uint32(1)) | (keys << np.uint32(bits - 1))
    return keys.astype(_WORD[word_bytes]).view(np.uint8), reader.position
