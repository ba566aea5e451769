/* The section coder (see coder.h and docs/FORMAT.md). The modelling is plain C; the hot loops
 * of encoding (packing raw bits, rANS) and decoding run through the kernel table, and every
 * table writes the same bytes. Every length and value read from a payload is checked before
 * use: a hostile payload gives an error message, never a crash. */
#include "coder.h"

#include <stdlib.h>
#include <string.h>

#define MAX_SYMBOLS 256
#define MAX_SYMBOL_BITS 12
#define KIND_RAW 0
#define KIND_CODED 1
#define ENCODE_SLICE 32768 /* words counted and packed together: a slice stays in L2 between the two */
/* Sections of at least SAMPLE_FROM words take their frequencies from the symbols of every
 * SAMPLE_STRIDE-th word (those at positions divisible by it), and each symbol that the others hold
 * alone counts 1. Which those are is not asked word by word: the kernels' symbol_range gives the
 * smallest nonzero symbol and the largest, and where at most GAP_LIMIT symbols between them went
 * uncounted, each counts 1, whether it occurs or not, if at most MAX_SYMBOLS result (symbol 0,
 * where it occurs, among them). Each that does not occur costs its slot, 1/4096 of the
 * probabilities: at most GAP_LIMIT * 1.44 / 4096 = 0.011 bits a word, so only where the symbols
 * carry 3 bits a word or more (SPREAD: no symbol holds more than 1/SPREAD of the counted words).
 * Other alphabets take a second pass to find the symbols that occur, unless no symbol between
 * went uncounted. The frequencies are an estimate whose cost in size is small (MiniLM: BF16
 * +0.04%, F16 +0.01%, F32 +0.02%), for a read-modify-write of a histogram entry per four words
 * and a vector pass over them all. zoo/kernels/fallback_coder.py does the same. */
#define SAMPLE_FROM 65536
#define SAMPLE_STRIDE 4
#define GAP_LIMIT 32
#define SPREAD 8
_Static_assert(ENCODE_SLICE % SAMPLE_STRIDE == 0, "a slice starts at a sampled position");
#define DECODE_BATCH 4096 /* words decoded per batch (a multiple of the lanes): ranks stay in L1 between the two passes */

/* -- little helpers ------------------------------------------------------------------------ */

typedef struct {
    uint8_t *data;
    size_t size, capacity;
    int full; /* a write did not fit: the caller stores the section raw */
} writer;

static void put_bytes(writer *w, const void *bytes, size_t n) {
    if (w->full || n > w->capacity - w->size) {
        w->full = 1;
        return;
    }
    memcpy(w->data + w->size, bytes, n);
    w->size += n;
}

static void put_u8(writer *w, unsigned value) {
    uint8_t byte = (uint8_t)value;
    put_bytes(w, &byte, 1);
}

static void put_u16(writer *w, unsigned value) {
    uint8_t bytes[2] = {(uint8_t)value, (uint8_t)(value >> 8)};
    put_bytes(w, bytes, 2);
}

static void put_u32(writer *w, uint32_t value) {
    uint8_t bytes[4] = {(uint8_t)value, (uint8_t)(value >> 8), (uint8_t)(value >> 16), (uint8_t)(value >> 24)};
    put_bytes(w, bytes, 4);
}

static void put_varint(writer *w, uint32_t value) {
    while (value >= 0x80) {
        put_u8(w, (value & 0x7f) | 0x80);
        value >>= 7;
    }
    put_u8(w, value);
}

typedef struct {
    const uint8_t *p, *end;
    const char *error;
} reader;

static int take(reader *r, size_t n, const uint8_t **bytes) {
    if (r->error) return 0;
    if ((size_t)(r->end - r->p) < n) {
        r->error = "coded section is truncated";
        return 0;
    }
    *bytes = r->p;
    r->p += n;
    return 1;
}

static uint32_t get_u8(reader *r) {
    const uint8_t *b;
    return take(r, 1, &b) ? b[0] : 0;
}

static uint32_t get_u16(reader *r) {
    const uint8_t *b;
    return take(r, 2, &b) ? (uint32_t)(b[0] | (b[1] << 8)) : 0;
}

static uint32_t get_u32(reader *r) {
    const uint8_t *b;
    return take(r, 4, &b) ? (uint32_t)b[0] | ((uint32_t)b[1] << 8) | ((uint32_t)b[2] << 16) | ((uint32_t)b[3] << 24) : 0;
}

static uint32_t get_varint(reader *r) {
    uint32_t value = 0;
    for (int shift = 0; shift < 28; shift += 7) {
        uint32_t byte = get_u8(r);
        value |= (byte & 0x7f) << shift;
        if (!(byte & 0x80)) return value;
    }
    if (!r->error) r->error = "coded section has an overlong number";
    return 0;
}

static inline uint32_t load_word(const uint8_t *p, const int word_bytes) {
    if (word_bytes == 1) return p[0];
    if (word_bytes == 2) {
        uint16_t value;
        memcpy(&value, p, 2);
        return value;
    }
    uint32_t value;
    memcpy(&value, p, 4);
    return value;
}

static inline uint32_t rotate_left1(uint32_t value, int bits) {
    uint32_t mask = bits == 32 ? 0xffffffffu : ((1u << bits) - 1);
    return ((value << 1) | (value >> (bits - 1))) & mask;
}

size_t zoo_section_bound(size_t count, int word_bytes) { return 1 + count * (size_t)word_bytes; }

/* -- the symbol model ---------------------------------------------------------------------- */

/* keys (remainder << 8 | 255 - rank), largest first: remainders are below 2^32 */
static int descending(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x > y ? -1 : x < y;
}

/* heap of ranks, largest frequency on top, the lower rank first among equals */
static int heap_above(const uint32_t *freqs, uint8_t i, uint8_t j) { return freqs[i] > freqs[j] || (freqs[i] == freqs[j] && i < j); }

static void heap_sift_down(uint8_t *heap, int size, int at, const uint32_t *freqs) {
    for (;;) {
        int left = 2 * at + 1, right = left + 1, top = at;
        if (left < size && heap_above(freqs, heap[left], heap[top])) top = left;
        if (right < size && heap_above(freqs, heap[right], heap[top])) top = right;
        if (top == at) return;
        uint8_t swap = heap[at];
        heap[at] = heap[top];
        heap[top] = swap;
        at = top;
    }
}

/* Frequencies summing to RANS_TOTAL from counts, each used symbol at least 1; integer-only so
 * the numpy encoder (zoo/_fallback_coder.py) reproduces it exactly. Largest remainders first
 * (the lower rank first among equals) take the slots flooring leaves; slots given to rare
 * symbols come back one at a time from the then largest frequency (the lower rank first).
 * Sorting and a heap do in n log n what one scan per slot did in n^2. */
static void normalize(const uint64_t *counts, int n_used, uint32_t *freqs) {
    uint64_t total = 0;
    for (int i = 0; i < n_used; i++) total += counts[i];
    int64_t assigned = 0;
    uint64_t remainders[MAX_SYMBOLS], order[MAX_SYMBOLS];
    int n_remaining = 0;
    for (int i = 0; i < n_used; i++) {
        uint64_t scaled = counts[i] * RANS_TOTAL;
        freqs[i] = (uint32_t)(scaled / total);
        remainders[i] = scaled % total;
        if (freqs[i] == 0) {
            freqs[i] = 1;
            remainders[i] = 0; /* already rounded up */
        }
        if (remainders[i]) order[n_remaining++] = remainders[i] << 8 | (uint64_t)(255 - i);
        assigned += freqs[i];
    }
    int64_t missing = (int64_t)RANS_TOTAL - assigned;
    if (missing > 0) { /* at most one per symbol: flooring lost less than one each */
        qsort(order, (size_t)n_remaining, sizeof(uint64_t), descending);
        for (int k = 0; k < n_remaining && missing > 0; k++, missing--) freqs[255 - (order[k] & 0xff)]++;
    }
    if (missing > 0) { /* every remainder used: the largest symbol takes the rest */
        int best = 0;
        for (int i = 1; i < n_used; i++)
            if (freqs[i] > freqs[best]) best = i;
        freqs[best] += (uint32_t)missing;
        missing = 0;
    }
    if (missing < 0) { /* rare symbols took too many: one back at a time from the largest */
        uint8_t heap[MAX_SYMBOLS];
        for (int i = 0; i < n_used; i++) heap[i] = (uint8_t)i;
        for (int at = n_used / 2 - 1; at >= 0; at--) heap_sift_down(heap, n_used, at, freqs);
        for (; missing < 0; missing++) {
            freqs[heap[0]]--;
            heap_sift_down(heap, n_used, 0, freqs);
        }
    }
}

/* -- encoding ------------------------------------------------------------------------------ */

static size_t store_raw(const uint8_t *words, size_t count, int word_bytes, uint8_t *out, size_t capacity) {
    size_t bytes = count * (size_t)word_bytes;
    if (capacity < 1 + bytes) return 0;
    out[0] = KIND_RAW;
    memcpy(out + 1, words, bytes);
    return 1 + bytes;
}

/* rANS over the words' symbols (their top bits), into w: the lane count, the final states, then
 * the 16-bit refill words in the order the decoder reads them. `by_symbol` is indexed by
 * symbol, not rank: no rank pass is needed. */
static void rans_encode(writer *w, const uint8_t *words, size_t count, int word_bytes, int is_float, int remainder_bits,
                        const uint32_t *by_symbol, int lane_log2, const zoo_kernels *kernels) {
    size_t lanes = (size_t)1 << lane_log2;
    /* at most one word per symbol, and scratch below the last for the kernels' vector stores */
    uint16_t *stack = malloc((count + 64) * sizeof(uint16_t));
    if (!stack) {
        w->full = 1;
        return;
    }
    uint16_t *top = stack + count + 64;
    uint32_t states[RANS_MAX_LANES];
    for (size_t lane = 0; lane < lanes; lane++) states[lane] = RANS_LOW;
    kernels->rans_encode(states, lanes, by_symbol, words, count, word_bytes, is_float, remainder_bits, &top);
    size_t n_words = (size_t)(stack + count + 64 - top);
    put_u8(w, (unsigned)lane_log2);
    put_u32(w, (uint32_t)(4 * lanes + 2 * n_words));
    for (size_t lane = 0; lane < lanes; lane++) put_u32(w, states[lane]);
    put_bytes(w, top, 2 * n_words); /* little-endian host: the words as stored */
    free(stack);
}

enum { COUNT_ALL, COUNT_SAMPLED, MARK_PRESENT };

/* Adds the symbols (top `symbol_bits` of each rotated word) of `count` words to `tables`
 * interleaved histograms: a run of one symbol would otherwise wait on its own stores. A float's
 * symbol lies below its sign (rotated to bit 0) whenever bits remain, so it is a plain field.
 * COUNT_SAMPLED: only words at positions divisible by SAMPLE_STRIDE (`words` starts at one) are
 * counted; MARK_PRESENT: none is counted, each word's symbol is marked in `present` instead. */
static inline __attribute__((always_inline)) void count_symbols(const uint8_t *words, size_t count, const int word_bytes, const int is_float,
                                                                int symbol_bits, uint32_t *histograms, size_t tables, const int mode,
                                                                uint8_t *present) {
    int bits = 8 * word_bytes;
    size_t n_symbols = (size_t)1 << symbol_bits;
    size_t i = 0;
    if (mode == COUNT_SAMPLED) {
        const size_t per_line = 64 / (size_t)word_bytes; /* words of a cache line, a multiple of SAMPLE_STRIDE */
        for (; i + per_line <= count; i += per_line) {
            __builtin_prefetch(words + i * (size_t)word_bytes + 2048); /* the first pass over the chunk: it comes from memory */
            for (size_t k = 0; k < per_line; k += SAMPLE_STRIDE) {
                uint32_t key = load_word(words + (i + k) * (size_t)word_bytes, word_bytes);
                if (is_float) key = rotate_left1(key, bits);
                histograms[((k / SAMPLE_STRIDE) % tables) * n_symbols + (key >> (bits - symbol_bits))]++;
            }
        }
        for (; i < count; i += SAMPLE_STRIDE) {
            uint32_t key = load_word(words + i * (size_t)word_bytes, word_bytes);
            if (is_float) key = rotate_left1(key, bits);
            histograms[(key >> (bits - symbol_bits))]++;
        }
        return;
    }
    if (!is_float || symbol_bits < bits) { /* from two 64-bit loads at a time */
        int field = is_float ? bits - symbol_bits - 1 : bits - symbol_bits;
        uint64_t symbol_mask = n_symbols - 1;
        size_t per_load = 8 / (size_t)word_bytes;
        for (; i + 2 * per_load <= count; i += 2 * per_load) {
            __builtin_prefetch(words + i * (size_t)word_bytes + 2048); /* the first pass over the chunk: it comes from memory */
            uint64_t first, second;
            memcpy(&first, words + i * (size_t)word_bytes, 8);
            memcpy(&second, words + (i + per_load) * (size_t)word_bytes, 8);
            for (size_t k = 0; k < per_load; k++) {
                size_t a = (first >> (bits * (int)k + field)) & symbol_mask, b = (second >> (bits * (int)k + field)) & symbol_mask;
                if (mode == MARK_PRESENT) {
                    present[a] = present[b] = 1;
                } else {
                    histograms[((2 * k) % tables) * n_symbols + a]++;
                    histograms[((2 * k + 1) % tables) * n_symbols + b]++;
                }
            }
        }
    }
    for (; i < count; i++) {
        uint32_t key = load_word(words + i * (size_t)word_bytes, word_bytes);
        if (is_float) key = rotate_left1(key, bits);
        if (mode == MARK_PRESENT) present[key >> (bits - symbol_bits)] = 1;
        else histograms[(i % tables) * n_symbols + (key >> (bits - symbol_bits))]++;
    }
}

/* How many interleaved histograms count symbols of `symbol_bits` (12-bit ones take 16 KiB each):
 * the one rule for allocating, filling and summing them. */
static inline size_t histogram_tables(int symbol_bits) { return symbol_bits <= 10 ? 8 : 4; }

/* count_symbols with the usual symbol widths as constants: its shifts and table offsets become
 * immediates (a shift by a register count is three micro-ops on Intel). In perf samples of AVX2
 * BF16 encoding, zoo_encode_section (mostly this counting) went from 31% to 23% with the
 * constants; counting one word in four (COUNT_SAMPLED, sections of SAMPLE_FROM words or more)
 * made encoding 1.05-1.07x faster, and dropping its presence store per word 1.09-1.13x more
 * (docs/kernels.md). `histograms` holds histogram_tables(symbol_bits) of them. */
#define COUNT_AT_WIDTH(mode)                                                                                                           \
    switch (symbol_bits) {                                                                                                             \
    case 8: count_symbols(words, count, word_bytes, is_float, 8, histograms, histogram_tables(8), mode, present); break;               \
    case 10: count_symbols(words, count, word_bytes, is_float, 10, histograms, histogram_tables(10), mode, present); break;            \
    case 12: count_symbols(words, count, word_bytes, is_float, 12, histograms, histogram_tables(12), mode, present); break;            \
    default: count_symbols(words, count, word_bytes, is_float, symbol_bits, histograms, histogram_tables(symbol_bits), mode, present); \
        break;                                                                                                                         \
    }
static inline __attribute__((always_inline)) void count_slice(const uint8_t *words, size_t count, const int word_bytes, const int is_float,
                                                              int symbol_bits, uint32_t *histograms, int mode, uint8_t *present) {
    switch (mode) {
    case COUNT_SAMPLED: COUNT_AT_WIDTH(COUNT_SAMPLED) break;
    case MARK_PRESENT: COUNT_AT_WIDTH(MARK_PRESENT) break;
    default: COUNT_AT_WIDTH(COUNT_ALL)
    }
}
#undef COUNT_AT_WIDTH

/* A sampled section's uncounted symbols count 1, as SAMPLE_FROM says, from `range` (symbol_range's).
 * Inlined into each encode_words, so that the pass over the words has their layout as constants.
 * 0 where memory ran out. */
static inline __attribute__((always_inline)) int count_uncounted(uint64_t *histogram, zoo_symbol_range range, const uint8_t *words,
                                                                 size_t count, const int word_bytes, const int is_float, int symbol_bits) {
    uint32_t first = range.smallest_nonzero, last = range.largest;
    int zero = range.smallest == 0; /* the symbol 0 occurs */
    uint64_t total = 0, most = 0;
    for (size_t s = 0; s < ((size_t)1 << symbol_bits); s++) {
        total += histogram[s];
        if (histogram[s] > most) most = histogram[s];
    }
    if (zero && !histogram[0]) histogram[0] = 1;
    size_t gaps = 0;
    for (uint32_t s = first; s <= last; s++) gaps += !histogram[s]; /* none where no symbol but 0 occurs (first > last) */
    if (gaps == 0) return 1; /* the counted symbols are all that occur */
    if (gaps <= GAP_LIMIT && last - first + 1 + (size_t)zero <= MAX_SYMBOLS && most * SPREAD <= total) {
        for (uint32_t s = first; s <= last; s++)
            if (!histogram[s]) histogram[s] = 1;
        return 1;
    }
    uint8_t *present = calloc((size_t)1 << symbol_bits, 1);
    if (!present) return 0;
    count_slice(words, count, word_bytes, is_float, symbol_bits, NULL, MARK_PRESENT, present);
    for (size_t s = 0; s < ((size_t)1 << symbol_bits); s++)
        if (present[s] && !histogram[s]) histogram[s] = 1;
    free(present);
    return 1;
}

/* Inlined once per (word size, float) pair from zoo_encode_section, so loads and rotations are
 * constant-size instructions rather than calls. */
static inline __attribute__((always_inline)) size_t encode_words(const uint8_t *words, size_t count, const int word_bytes,
                                                                 const int is_float, int symbol_bits, uint8_t *out,
                                                                 size_t capacity, const zoo_kernels *kernels) {
    int bits = 8 * word_bytes;
    size_t raw_size = 1 + count * (size_t)word_bytes;
    if (count == 0 || count > 0xffffffffu || symbol_bits < 8 || symbol_bits > bits || symbol_bits > MAX_SYMBOL_BITS)
        return store_raw(words, count, word_bytes, out, capacity);
    size_t n_symbols = (size_t)1 << symbol_bits;
    size_t tables = histogram_tables(symbol_bits);
    uint32_t *histograms = calloc(tables * n_symbols, sizeof(uint32_t));
    int sampled = count >= SAMPLE_FROM;
    uint64_t *histogram = calloc(n_symbols, sizeof(uint64_t));
    size_t n_blocks = (count + RANS_BLOCK - 1) >> RANS_BLOCK_LOG2;
    uint8_t *block_zeros = calloc(n_blocks, 1);
    /* room for the widest remainders merging symbols can leave (symbols keep at least 8 bits),
     * and 64 bytes for the kernels' vector stores past the end */
    uint8_t *packed = malloc((size_t)(((uint64_t)count * (uint64_t)(bits - 8) + 7) / 8) + 64);
    if (!histogram || !histograms || !block_zeros || !packed) {
        free(histogram);
        free(histograms);
        free(block_zeros);
        free(packed);
        return store_raw(words, count, word_bytes, out, capacity);
    }
    /* One pass over slices that stay in L2: count the symbols (and, in a sampled section, find
     * their range), pack the raw bits (assuming the symbols need not merge, which they rarely do). */
    int remainder_bits = bits - symbol_bits;
    uint64_t total_bits = 0;
    zoo_symbol_range range = {UINT32_MAX, UINT32_MAX, 0}; /* a sampled section's */
    for (size_t first = 0; first < count; first += ENCODE_SLICE) {
        size_t n = count - first < ENCODE_SLICE ? count - first : ENCODE_SLICE;
        const uint8_t *slice = words + first * (size_t)word_bytes;
        count_slice(slice, n, word_bytes, is_float, symbol_bits, histograms, sampled ? COUNT_SAMPLED : COUNT_ALL, NULL);
        if (sampled) kernels->symbol_range(slice, n, word_bytes, is_float, symbol_bits, &range);
        total_bits += kernels->pack_remainders(slice, n, word_bytes, is_float, remainder_bits, block_zeros + first / RANS_BLOCK, packed + total_bits / 8);
    }
    for (size_t table = 0; table < tables; table++)
        for (size_t s = 0; s < n_symbols; s++) histogram[s] += histograms[table * n_symbols + s];
    free(histograms);
    if (sampled && !count_uncounted(histogram, range, words, count, word_bytes, is_float, symbol_bits)) {
        free(histogram);
        free(block_zeros);
        free(packed);
        return store_raw(words, count, word_bytes, out, capacity);
    }
    /* fewer top bits until at most MAX_SYMBOLS are used (8 always are) */
    int n_used;
    for (;;) {
        n_used = 0;
        for (size_t s = 0; s < ((size_t)1 << symbol_bits); s++) n_used += histogram[s] != 0;
        if (n_used <= MAX_SYMBOLS) break;
        for (size_t s = 0; s < ((size_t)1 << (symbol_bits - 1)); s++) histogram[s] = histogram[2 * s] + histogram[2 * s + 1];
        symbol_bits--;
    }
    if (bits - symbol_bits != remainder_bits) {
        remainder_bits = bits - symbol_bits;
        total_bits = kernels->pack_remainders(words, count, word_bytes, is_float, remainder_bits, block_zeros, packed);
    }

    uint64_t counts[MAX_SYMBOLS];
    uint16_t symbol_of_rank[MAX_SYMBOLS];
    int rank = 0;
    for (size_t s = 0; s < ((size_t)1 << symbol_bits); s++)
        if (histogram[s]) {
            symbol_of_rank[rank] = (uint16_t)s;
            counts[rank++] = histogram[s];
        }
    int any_zeros = 0;
    for (size_t block = 0; block < n_blocks; block++) any_zeros |= block_zeros[block];

    writer w = {out, 0, capacity < raw_size ? capacity : raw_size, 0};
    put_u8(&w, KIND_CODED);
    put_u8(&w, (unsigned)symbol_bits);
    put_u16(&w, (unsigned)n_used);
    if (n_used == 1) {
        put_u16(&w, symbol_of_rank[0]);
    } else {
        uint32_t freqs[MAX_SYMBOLS];
        uint32_t *by_symbol = calloc((size_t)1 << symbol_bits, sizeof(uint32_t));
        if (!by_symbol) w.full = 1;
        normalize(counts, n_used, freqs);
        uint32_t cum = 0;
        for (int r = 0; r < n_used; r++) {
            put_varint(&w, r ? (uint32_t)(symbol_of_rank[r] - symbol_of_rank[r - 1] - 1) : symbol_of_rank[0]);
            put_varint(&w, freqs[r] - 1);
            if (by_symbol) by_symbol[symbol_of_rank[r]] = RANS_ENCODE_ENTRY(freqs[r], cum);
            cum += freqs[r];
        }
        /* 32 lanes, doubled for every doubling of the section past 64 Ki words, up to 512; never
         * 64: those decode at the latency of a step (0.34 ns a word against 0.25 with 128 or
         * more), for 256 more bytes of final states */
        int lane_log2 = 5;
        while (lane_log2 < 9 && (count >> 16) >> (lane_log2 - 4)) lane_log2++;
        if (lane_log2 == 6) lane_log2 = 7;
        if (!w.full) rans_encode(&w, words, count, word_bytes, is_float, remainder_bits, by_symbol, lane_log2, kernels);
        free(by_symbol);
    }

    if (remainder_bits && !w.full) {
        put_u8(&w, any_zeros ? 1 : 0);
        if (any_zeros && !w.full) {
            size_t used = zoo_encode_section(block_zeros, n_blocks, 1, 0, 8, w.data + w.size, w.capacity - w.size, kernels);
            if (used) w.size += used;
            else w.full = 1;
        }
        /* the raw bits, packed above */
        size_t bit_bytes = (size_t)((total_bits + 7) / 8);
        put_u32(&w, (uint32_t)bit_bytes);
        put_bytes(&w, packed, bit_bytes);
    }

    free(histogram);
    free(block_zeros);
    free(packed);
    if (w.full || w.size >= raw_size) return store_raw(words, count, word_bytes, out, capacity);
    return w.size;
}

/* -- decoding ------------------------------------------------------------------------------ */

/* Slot -> RANS_ENTRY(freq, slot - cum, rank) for every slot; with `symbols`, the rank's symbol
 * in place of the rank (symbols of at most 8 bits). Kept out of decode_words, whose six inlined
 * copies left it a scalar loop (half the fixed cost of a 147456-word section); here the compiler
 * vectorises each symbol's run of slots. */
static void fill_decode_table(uint32_t *restrict table, const uint32_t *restrict freqs, int n_used, const uint16_t *restrict symbols) {
    for (int k = 0; k < n_used; k++) {
        uint32_t first = RANS_ENTRY(freqs[k], 0, symbols ? symbols[k] : (uint32_t)k), length = freqs[k];
        for (uint32_t j = 0; j < length; j++) table[j] = first + (j << 12);
        table += length;
    }
}

static const char *decode_section(const uint8_t **cursor, const uint8_t *end, uint8_t *out, size_t count, int word_bytes,
                                  int is_float, const zoo_kernels *kernels, int nested);

/* `nested`: this section holds another section's block zeros. The encoder writes those with whole
   bytes as symbols, so they never carry block zeros of their own; refusing that here bounds the
   recursion a hostile payload could ask for. */
static inline __attribute__((always_inline)) const char *decode_words(const uint8_t **cursor, const uint8_t *end, uint8_t *out,
                                                                       size_t count, const int word_bytes, const int is_float,
                                                                       const zoo_kernels *kernels, const int nested) {
    reader r = {*cursor, end, NULL};
    int bits = 8 * word_bytes;
    unsigned kind = get_u8(&r);
    if (r.error) return r.error;
    if (kind == KIND_RAW) {
        const uint8_t *bytes;
        if (count > SIZE_MAX / (size_t)word_bytes || !take(&r, count * (size_t)word_bytes, &bytes)) return "raw section is truncated";
        memcpy(out, bytes, count * (size_t)word_bytes);
        *cursor = r.p;
        return NULL;
    }
    if (kind != KIND_CODED) return "section has an unknown kind";
    int symbol_bits = (int)get_u8(&r);
    int n_used = (int)get_u16(&r);
    if (r.error) return r.error;
    if (symbol_bits < 1 || symbol_bits > bits || symbol_bits > MAX_SYMBOL_BITS) return "section names a bad symbol width";
    if (n_used < 1 || n_used > MAX_SYMBOLS || n_used > (1 << symbol_bits)) return "section names a bad alphabet size";
    if (count == 0) return "coded section holds no words";
    int remainder_bits = bits - symbol_bits;
    int low_bits = is_float && remainder_bits ? remainder_bits - 1 : remainder_bits;

    uint16_t symbol_of_rank[MAX_SYMBOLS] = {0}; /* all 256 entries: kernels look up whole vectors */
    /* Symbols of a byte or less stand in for their ranks from the rANS table on: the kernels
     * rebuild words without a lookup (F16's 8-bit symbols, FP8, the block zeros). */
    const int direct = symbol_bits <= 8;
    uint32_t *table = NULL;
    const uint8_t *rans = NULL, *rans_end = NULL;
    uint32_t states[RANS_MAX_LANES];
    size_t lanes = RANS_MIN_LANES;
    if (n_used == 1) {
        symbol_of_rank[0] = (uint16_t)get_u16(&r);
        if (r.error) return r.error;
        if (symbol_of_rank[0] >> symbol_bits) return "section's only symbol is out of range";
    } else {
        uint32_t freqs[MAX_SYMBOLS], total = 0, symbol = 0;
        for (int k = 0; k < n_used; k++) {
            uint32_t delta = get_varint(&r), freq = get_varint(&r) + 1;
            symbol = k ? symbol + 1 + delta : delta;
            if (r.error) return r.error;
            if (symbol >> symbol_bits || delta >> symbol_bits) return "section's symbol table is out of range";
            if (freq >= RANS_TOTAL) return "section's symbol table has a bad frequency";
            symbol_of_rank[k] = (uint16_t)symbol;
            freqs[k] = freq;
            total += freq;
        }
        if (total != RANS_TOTAL) return "section's frequencies do not add up";
        unsigned lane_log2 = get_u8(&r);
        uint32_t length = get_u32(&r);
        if (r.error) return r.error;
        if (lane_log2 < 5 || lane_log2 > 9) return "section names a bad number of rANS lanes";
        lanes = (size_t)1 << lane_log2;
        if (length < 4 * lanes || (length & 1) || !take(&r, length, &rans)) return "section's rANS stream is truncated";
        rans_end = rans + length;
        for (size_t lane = 0; lane < lanes; lane++) {
            states[lane] = (uint32_t)rans[0] | ((uint32_t)rans[1] << 8) | ((uint32_t)rans[2] << 16) | ((uint32_t)rans[3] << 24);
            rans += 4;
            if (states[lane] < RANS_LOW) return "section's rANS state is out of range";
        }
        table = malloc(RANS_TOTAL * sizeof(uint32_t));
        if (!table) return "out of memory";
        fill_decode_table(table, freqs, n_used, direct ? symbol_of_rank : NULL);
    }

    /* the remainder: per-block trailing zeros, then the packed raw bits */
    size_t n_blocks = (count + (1u << RANS_BLOCK_LOG2) - 1) >> RANS_BLOCK_LOG2;
    uint8_t *block_zeros = calloc(n_blocks, 1);
    static const uint8_t no_bits[1];
    const uint8_t *raw_bits = no_bits; /* never NULL: kernels offset into it even when no bits exist */
    size_t raw_length = 0;
    const char *error = NULL;
    if (!block_zeros) error = "out of memory";
    if (!error && remainder_bits) {
        unsigned zeros_kind = get_u8(&r);
        if (r.error) error = r.error;
        else if (zeros_kind > 1) error = "section has an unknown zeros kind";
        else if (zeros_kind == 1 && nested) error = "section's block zeros carry block zeros of their own";
        else if (zeros_kind == 1) {
            error = decode_section(&r.p, r.end, block_zeros, n_blocks, 1, 0, kernels, 1);
            for (size_t block = 0; !error && block < n_blocks; block++)
                if (block_zeros[block] > low_bits) error = "section drops more bits than a word has";
        }
        if (!error) {
            uint64_t total_bits = 0;
            for (size_t block = 0; block < n_blocks; block++) {
                size_t first = block << RANS_BLOCK_LOG2, last = first + ((size_t)1 << RANS_BLOCK_LOG2) < count ? first + ((size_t)1 << RANS_BLOCK_LOG2) : count;
                total_bits += (uint64_t)(last - first) * (uint64_t)(remainder_bits - block_zeros[block]);
            }
            raw_length = get_u32(&r);
            if (r.error) error = r.error;
            else if (raw_length != (total_bits + 7) / 8 || !take(&r, raw_length, &raw_bits)) error = "section's raw bits have the wrong length";
        }
    }

    /* A section of bytes whose symbol is the whole byte (fprans's byte planes, rans's streams, block
     * zeros): each rank is its byte, decoded into place. merge_words rebuilt every byte from a bit
     * window of width 0, about ten times the rANS step's time, and a plane of one symbol cost that
     * alone (hunt114: a 4 MiB chunk of zeros as byte planes took 5.7 ms, now a memset). FP8's
     * 8-bit symbols are the byte rotated left one bit: rotated back in place. The kernels store
     * exactly `lanes` bytes a step, so `out` takes them as the batch buffer does. */
    const int in_place = word_bytes == 1 && remainder_bits == 0;
    uint8_t *ranks = error || in_place ? NULL : malloc(DECODE_BATCH);
    if (!error && !in_place && !ranks) error = "out of memory";
    size_t bits_offset = 0; /* in bytes: every block but the last holds a multiple of 8 bits */
    for (size_t first = 0; !error && first < count; first += DECODE_BATCH) {
        size_t n = count - first < DECODE_BATCH ? count - first : DECODE_BATCH;
        uint8_t *into = in_place ? out + first : ranks;
        if (n_used == 1) {
            memset(into, direct ? symbol_of_rank[0] : 0, n);
        } else {
            size_t steps = n / lanes;
            if (kernels->rans_decode_steps(states, lanes, table, &rans, rans_end, into, steps)) {
                error = "section's rANS stream is truncated";
                break;
            }
            size_t tail = n - steps * lanes; /* only the last batch has one */
            for (size_t lane = 0; lane < tail; lane++) {
                uint32_t x = states[lane], entry = table[x & (RANS_TOTAL - 1)];
                into[steps * lanes + lane] = (uint8_t)(entry >> 24);
                x = (entry & 0xfff) * (x >> RANS_PROB_BITS) + ((entry >> 12) & 0xfff);
                if (x < RANS_LOW) {
                    if (rans_end - rans < 2) {
                        error = "section's rANS stream is truncated";
                        break;
                    }
                    x = (x << 16) | (uint32_t)(rans[0] | (rans[1] << 8));
                    rans += 2;
                }
                states[lane] = x;
            }
            if (error) break;
        }
        if (in_place) {
            if (is_float)
                for (size_t i = 0; i < n; i++) into[i] = (uint8_t)((into[i] >> 1) | (into[i] << 7));
            continue;
        }
        /* runs of blocks that drop the same number of zero bits go to the kernel together */
        for (size_t start = first; start < first + n;) {
            int zeros = block_zeros[start >> RANS_BLOCK_LOG2];
            size_t stop = start;
            while (stop < first + n && block_zeros[stop >> RANS_BLOCK_LOG2] == zeros) stop = ((stop >> RANS_BLOCK_LOG2) + 1) << RANS_BLOCK_LOG2;
            if (stop > first + n) stop = first + n;
            int width = remainder_bits - zeros;
            kernels->merge_words(ranks + (start - first), direct ? NULL : symbol_of_rank, raw_bits + bits_offset, stop - start, width, zeros,
                                 remainder_bits, word_bytes, is_float, out + start * (size_t)word_bytes);
            bits_offset += (stop - start) * (size_t)width / 8;
            start = stop;
        }
    }
    if (!error && n_used > 1) {
        for (size_t lane = 0; lane < lanes; lane++)
            if (states[lane] != RANS_LOW) error = "section's rANS stream does not check out";
        if (rans != rans_end) error = "section's rANS stream has trailing words";
    }
    free(ranks);
    free(block_zeros);
    free(table);
    if (!error) *cursor = r.p;
    return error;
}

size_t zoo_encode_section(const uint8_t *words, size_t count, int word_bytes, int is_float, int symbol_bits,
                          uint8_t *out, size_t capacity, const zoo_kernels *kernels) {
    switch (word_bytes * 2 + (is_float != 0)) {
    case 2: return encode_words(words, count, 1, 0, symbol_bits, out, capacity, kernels);
    case 3: return encode_words(words, count, 1, 1, symbol_bits, out, capacity, kernels);
    case 4: return encode_words(words, count, 2, 0, symbol_bits, out, capacity, kernels);
    case 5: return encode_words(words, count, 2, 1, symbol_bits, out, capacity, kernels);
    case 8: return encode_words(words, count, 4, 0, symbol_bits, out, capacity, kernels);
    case 9: return encode_words(words, count, 4, 1, symbol_bits, out, capacity, kernels);
    default: return 0;
    }
}

static const char *decode_section(const uint8_t **cursor, const uint8_t *end, uint8_t *out, size_t count, int word_bytes,
                                  int is_float, const zoo_kernels *kernels, int nested) {
    switch (word_bytes * 2 + (is_float != 0)) {
    case 2: return decode_words(cursor, end, out, count, 1, 0, kernels, nested);
    case 3: return decode_words(cursor, end, out, count, 1, 1, kernels, nested);
    case 4: return decode_words(cursor, end, out, count, 2, 0, kernels, nested);
    case 5: return decode_words(cursor, end, out, count, 2, 1, kernels, nested);
    case 8: return decode_words(cursor, end, out, count, 4, 0, kernels, nested);
    case 9: return decode_words(cursor, end, out, count, 4, 1, kernels, nested);
    default: return "section words must be 1, 2 or 4 bytes";
    }
}

const char *zoo_decode_section(const uint8_t **cursor, const uint8_t *end, uint8_t *out, size_t count,
                               int word_bytes, int is_float, const zoo_kernels *kernels) {
    return decode_section(cursor, end, out, count, word_bytes, is_float, kernels, 0);
}
