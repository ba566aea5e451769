/* The section coder (see coder.h and docs/FORMAT.md). Encoding is scalar and the same on every
 * CPU; decoding runs its hot loop through the kernel table. Every length and value read from a
 * payload is checked before use: a hostile payload gives an error message, never a crash. */
#include "coder.h"

#include <stdlib.h>
#include <string.h>

#define BLOCK_LOG2 7 /* trailing zeros are shared per block of 128 words */
#define MAX_SYMBOLS 256
#define MAX_SYMBOL_BITS 12
#define KIND_RAW 0
#define KIND_CODED 1
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

static inline void store_word(uint8_t *p, uint32_t value, const int word_bytes) {
    if (word_bytes == 1) {
        p[0] = (uint8_t)value;
    } else if (word_bytes == 2) {
        uint16_t narrow = (uint16_t)value;
        memcpy(p, &narrow, 2);
    } else {
        memcpy(p, &value, 4);
    }
}

static inline uint32_t rotate_left1(uint32_t value, int bits) {
    uint32_t mask = bits == 32 ? 0xffffffffu : ((1u << bits) - 1);
    return ((value << 1) | (value >> (bits - 1))) & mask;
}

static inline uint32_t rotate_right1(uint32_t value, int bits) {
    uint32_t mask = bits == 32 ? 0xffffffffu : ((1u << bits) - 1);
    return ((value >> 1) | (value << (bits - 1))) & mask;
}

static inline int trailing_zeros(uint32_t value, int limit) {
    return value ? (__builtin_ctz(value) < limit ? __builtin_ctz(value) : limit) : limit;
}

size_t zoo_section_bound(size_t count, int word_bytes) { return 1 + count * (size_t)word_bytes; }

/* -- the symbol model ---------------------------------------------------------------------- */

/* Frequencies summing to RANS_TOTAL from counts, each used symbol at least 1; integer-only so
 * the numpy encoder (zoo/_fallback.py) reproduces it exactly. Largest remainders first take
 * the slots flooring leaves; slots given to rare symbols come back from the largest ones. */
static void normalize(const uint64_t *counts, int n_used, uint32_t *freqs) {
    uint64_t total = 0;
    for (int i = 0; i < n_used; i++) total += counts[i];
    int64_t assigned = 0;
    uint64_t remainders[MAX_SYMBOLS];
    for (int i = 0; i < n_used; i++) {
        uint64_t scaled = counts[i] * RANS_TOTAL;
        freqs[i] = (uint32_t)(scaled / total);
        remainders[i] = scaled % total;
        if (freqs[i] == 0) {
            freqs[i] = 1;
            remainders[i] = 0; /* already rounded up */
        }
        assigned += freqs[i];
    }
    int64_t missing = (int64_t)RANS_TOTAL - assigned;
    while (missing > 0) { /* at most one pass per symbol: flooring lost less than one each */
        int best = -1;
        for (int i = 0; i < n_used; i++)
            if (remainders[i] && (best < 0 || remainders[i] > remainders[best])) best = i;
        if (best < 0) break;
        freqs[best]++;
        remainders[best] = 0;
        missing--;
    }
    while (missing > 0) { /* every remainder used: the largest symbol takes the rest */
        int best = 0;
        for (int i = 1; i < n_used; i++)
            if (freqs[i] > freqs[best]) best = i;
        freqs[best] += (uint32_t)missing;
        missing = 0;
    }
    while (missing < 0) { /* rare symbols took too many: take one back from the largest */
        int best = 0;
        for (int i = 1; i < n_used; i++)
            if (freqs[i] > freqs[best]) best = i;
        freqs[best]--;
        missing++;
    }
}

/* -- encoding ------------------------------------------------------------------------------ */

typedef struct {
    uint32_t freq, cum;
    uint64_t reciprocal; /* ceil(2^44 / freq): x / freq == (x * reciprocal) >> 44 for x < 2^32 */
} encode_symbol;

static size_t store_raw(const uint8_t *words, size_t count, int word_bytes, uint8_t *out, size_t capacity) {
    size_t bytes = count * (size_t)word_bytes;
    if (capacity < 1 + bytes) return 0;
    out[0] = KIND_RAW;
    memcpy(out + 1, words, bytes);
    return 1 + bytes;
}

/* rANS over the words' symbols (their top bits), into w: the lane count, the final states, then
 * the 16-bit refill words in the order the decoder reads them. Encodes backwards, so words are
 * collected from the end. `by_symbol` is indexed by symbol, not rank: no rank pass is needed. */
static inline __attribute__((always_inline)) void rans_encode(writer *w, const uint8_t *words, size_t count, const int word_bytes,
                                                              const int is_float, int remainder_bits, const encode_symbol *by_symbol,
                                                              int lane_log2) {
    size_t lanes = (size_t)1 << lane_log2;
    int bits = 8 * word_bytes;
    uint16_t *stack = malloc((count + 2) * sizeof(uint16_t));
    if (!stack) {
        w->full = 1;
        return;
    }
    uint16_t *top = stack + count + 2; /* one spare slot: a word is stored before it is kept */
    uint32_t states[RANS_MAX_LANES];
    for (size_t lane = 0; lane < lanes; lane++) states[lane] = RANS_LOW;
    /* Branch-free: whether a lane emits a word is a coin toss, so a branch would mispredict. */
    for (size_t i = count; i-- > 0;) {
        uint32_t key = load_word(words + i * (size_t)word_bytes, word_bytes);
        if (is_float) key = rotate_left1(key, bits);
        const encode_symbol *s = &by_symbol[key >> remainder_bits];
        uint32_t x = states[i & (lanes - 1)];
        uint32_t emit = x >= (s->freq << (32 - RANS_PROB_BITS)); /* encoding would carry x past 2^32 */
        top[-1] = (uint16_t)x;
        top -= emit;
        x >>= 16 * emit;
        uint32_t quotient = (uint32_t)(((unsigned __int128)x * s->reciprocal) >> 44);
        states[i & (lanes - 1)] = (quotient << RANS_PROB_BITS) + (x - quotient * s->freq) + s->cum;
    }
    size_t n_words = (size_t)(stack + count + 2 - top);
    put_u8(w, (unsigned)lane_log2);
    put_u32(w, (uint32_t)(4 * lanes + 2 * n_words));
    for (size_t lane = 0; lane < lanes; lane++) put_u32(w, states[lane]);
    put_bytes(w, top, 2 * n_words); /* little-endian host: the words as stored */
    free(stack);
}

/* Inlined once per (word size, float) pair from zoo_encode_section, so loads and rotations are
 * constant-size instructions rather than calls. */
static inline __attribute__((always_inline)) size_t encode_words(const uint8_t *words, size_t count, const int word_bytes,
                                                                 const int is_float, int symbol_bits, uint8_t *out,
                                                                 size_t capacity) {
    int bits = 8 * word_bytes;
    size_t raw_size = 1 + count * (size_t)word_bytes;
    if (count == 0 || count > 0xffffffffu || symbol_bits < 8 || symbol_bits > bits || symbol_bits > MAX_SYMBOL_BITS)
        return store_raw(words, count, word_bytes, out, capacity);
    /* Histogram of the top bits; fewer of them until at most MAX_SYMBOLS are used (8 always are). */
    size_t n_symbols = (size_t)1 << symbol_bits;
    /* four interleaved histograms: runs of one symbol would otherwise wait on their own stores */
    uint32_t *histogram4 = calloc(4 * n_symbols, sizeof(uint32_t));
    uint64_t *histogram = calloc(n_symbols, sizeof(uint64_t));
    if (!histogram || !histogram4) {
        free(histogram);
        free(histogram4);
        return store_raw(words, count, word_bytes, out, capacity);
    }
    size_t i4 = 0;
    for (; i4 + 4 <= count; i4 += 4)
        for (int k = 0; k < 4; k++) {
            uint32_t key = load_word(words + (i4 + (size_t)k) * (size_t)word_bytes, word_bytes);
            if (is_float) key = rotate_left1(key, bits);
            histogram4[(size_t)k * n_symbols + (key >> (bits - symbol_bits))]++;
        }
    for (; i4 < count; i4++) {
        uint32_t key = load_word(words + i4 * (size_t)word_bytes, word_bytes);
        if (is_float) key = rotate_left1(key, bits);
        histogram4[key >> (bits - symbol_bits)]++;
    }
    for (size_t s = 0; s < n_symbols; s++)
        histogram[s] = (uint64_t)histogram4[s] + histogram4[n_symbols + s] + histogram4[2 * n_symbols + s] + histogram4[3 * n_symbols + s];
    free(histogram4);
    int n_used;
    for (;;) {
        n_used = 0;
        for (size_t s = 0; s < ((size_t)1 << symbol_bits); s++) n_used += histogram[s] != 0;
        if (n_used <= MAX_SYMBOLS) break;
        for (size_t s = 0; s < ((size_t)1 << (symbol_bits - 1)); s++) histogram[s] = histogram[2 * s] + histogram[2 * s + 1];
        symbol_bits--;
    }
    int remainder_bits = bits - symbol_bits;
    int low_bits = is_float && remainder_bits ? remainder_bits - 1 : remainder_bits; /* float: the sign is bit 0 */
    uint32_t remainder_mask = remainder_bits ? (1u << remainder_bits) - 1 : 0;

    uint64_t counts[MAX_SYMBOLS];
    uint16_t symbol_of_rank[MAX_SYMBOLS];
    size_t n_blocks = (count + (1u << BLOCK_LOG2) - 1) >> BLOCK_LOG2;
    uint8_t *block_zeros = calloc(n_blocks, 1);
    if (!block_zeros) {
        free(histogram);
        return store_raw(words, count, word_bytes, out, capacity);
    }
    int rank = 0;
    for (size_t s = 0; s < ((size_t)1 << symbol_bits); s++)
        if (histogram[s]) {
            symbol_of_rank[rank] = (uint16_t)s;
            counts[rank++] = histogram[s];
        }
    /* One pass in blocks: the trailing zeros the block's low bits share, then
     * the block's remainders packed LSB first without those zeros (64-bit stores; 8 spare bytes
     * take the overshoot). The block's keys stay in L1 between the two loops. */
    int any_zeros = 0;
    uint8_t *packed = malloc((size_t)(((uint64_t)count * (uint64_t)remainder_bits + 7) / 8) + 8);
    uint64_t accumulator = 0, total_bits = 0;
    int filled = 0;
    size_t written = 0;
    uint32_t keys[1u << BLOCK_LOG2];
    for (size_t block = 0; packed && block < n_blocks; block++) {
        size_t first = block << BLOCK_LOG2, last = first + ((size_t)1 << BLOCK_LOG2) < count ? first + ((size_t)1 << BLOCK_LOG2) : count;
        uint32_t seen = 0;
        for (size_t i = first; i < last; i++) {
            uint32_t key = load_word(words + i * (size_t)word_bytes, word_bytes);
            if (is_float) key = rotate_left1(key, bits);
            keys[i - first] = key;
            seen |= (key & remainder_mask) >> (remainder_bits - low_bits);
        }
        int zeros = trailing_zeros(seen, low_bits), width = remainder_bits - zeros;
        block_zeros[block] = (uint8_t)zeros;
        any_zeros |= zeros;
        total_bits += (uint64_t)(last - first) * (uint64_t)width;
        if (!remainder_bits) continue;
        for (size_t k = 0; k < last - first; k++) {
            uint32_t rest = keys[k] & remainder_mask;
            uint32_t value = is_float ? (((rest >> 1) >> zeros) << 1) | (rest & 1) : rest >> zeros;
            accumulator |= (uint64_t)value << filled;
            filled += width;
            if (filled >= 32) {
                memcpy(packed + written, &accumulator, 8);
                written += 4;
                accumulator >>= 32;
                filled -= 32;
            }
        }
    }
    if (packed) memcpy(packed + written, &accumulator, 8);

    writer w = {out, 0, capacity < raw_size ? capacity : raw_size, !packed};
    put_u8(&w, KIND_CODED);
    put_u8(&w, (unsigned)symbol_bits);
    put_u16(&w, (unsigned)n_used);
    if (n_used == 1) {
        put_u16(&w, symbol_of_rank[0]);
    } else {
        uint32_t freqs[MAX_SYMBOLS];
        encode_symbol *by_symbol = calloc((size_t)1 << symbol_bits, sizeof(encode_symbol));
        if (!by_symbol) w.full = 1;
        normalize(counts, n_used, freqs);
        uint32_t cum = 0;
        for (int r = 0; r < n_used; r++) {
            put_varint(&w, r ? (uint32_t)(symbol_of_rank[r] - symbol_of_rank[r - 1] - 1) : symbol_of_rank[0]);
            put_varint(&w, freqs[r] - 1);
            if (by_symbol) {
                encode_symbol *entry = &by_symbol[symbol_of_rank[r]];
                entry->freq = freqs[r];
                entry->cum = cum;
                entry->reciprocal = ((1ull << 44) + freqs[r] - 1) / freqs[r];
            }
            cum += freqs[r];
        }
        /* 32 lanes, doubled for every doubling of the section past 64 Ki words, up to 512 */
        int lane_log2 = 5;
        while (lane_log2 < 9 && (count >> 16) >> (lane_log2 - 4)) lane_log2++;
        if (!w.full) rans_encode(&w, words, count, word_bytes, is_float, remainder_bits, by_symbol, lane_log2);
        free(by_symbol);
    }

    if (remainder_bits && !w.full) {
        put_u8(&w, any_zeros ? 1 : 0);
        if (any_zeros && !w.full) {
            size_t used = zoo_encode_section(block_zeros, n_blocks, 1, 0, 8, w.data + w.size, w.capacity - w.size);
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
        uint32_t slot = 0;
        for (int k = 0; k < n_used; k++)
            for (uint32_t j = 0; j < freqs[k]; j++, slot++) table[slot] = RANS_ENTRY(freqs[k], j, k);
    }

    /* the remainder: per-block trailing zeros, then the packed raw bits */
    size_t n_blocks = (count + (1u << BLOCK_LOG2) - 1) >> BLOCK_LOG2;
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
                size_t first = block << BLOCK_LOG2, last = first + ((size_t)1 << BLOCK_LOG2) < count ? first + ((size_t)1 << BLOCK_LOG2) : count;
                total_bits += (uint64_t)(last - first) * (uint64_t)(remainder_bits - block_zeros[block]);
            }
            raw_length = get_u32(&r);
            if (r.error) error = r.error;
            else if (raw_length != (total_bits + 7) / 8 || !take(&r, raw_length, &raw_bits)) error = "section's raw bits have the wrong length";
        }
    }

    uint8_t *ranks = error ? NULL : malloc(DECODE_BATCH);
    if (!error && !ranks) error = "out of memory";
    size_t bits_offset = 0; /* in bytes: every block but the last holds a multiple of 8 bits */
    for (size_t first = 0; !error && first < count; first += DECODE_BATCH) {
        size_t n = count - first < DECODE_BATCH ? count - first : DECODE_BATCH;
        if (n_used == 1) {
            memset(ranks, 0, n);
        } else {
            size_t steps = n / lanes;
            if (kernels->rans_decode_steps(states, lanes, table, &rans, rans_end, ranks, steps)) {
                error = "section's rANS stream is truncated";
                break;
            }
            size_t tail = n - steps * lanes; /* only the last batch has one */
            for (size_t lane = 0; lane < tail; lane++) {
                uint32_t x = states[lane], entry = table[x & (RANS_TOTAL - 1)];
                ranks[steps * lanes + lane] = (uint8_t)(entry >> 24);
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
        /* runs of blocks that drop the same number of zero bits go to the kernel together */
        for (size_t start = first; start < first + n;) {
            int zeros = block_zeros[start >> BLOCK_LOG2];
            size_t stop = start;
            while (stop < first + n && block_zeros[stop >> BLOCK_LOG2] == zeros) stop = ((stop >> BLOCK_LOG2) + 1) << BLOCK_LOG2;
            if (stop > first + n) stop = first + n;
            int width = remainder_bits - zeros;
            kernels->merge_words(ranks + (start - first), symbol_of_rank, raw_bits + bits_offset, stop - start, width, zeros,
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
                          uint8_t *out, size_t capacity) {
    switch (word_bytes * 2 + (is_float != 0)) {
    case 2: return encode_words(words, count, 1, 0, symbol_bits, out, capacity);
    case 3: return encode_words(words, count, 1, 1, symbol_bits, out, capacity);
    case 4: return encode_words(words, count, 2, 0, symbol_bits, out, capacity);
    case 5: return encode_words(words, count, 2, 1, symbol_bits, out, capacity);
    case 8: return encode_words(words, count, 4, 0, symbol_bits, out, capacity);
    case 9: return encode_words(words, count, 4, 1, symbol_bits, out, capacity);
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
