/* The scalar reference of every kernel: plain C, any CPU. The SIMD files must match it bit
 * for bit, and call it for the elements their vector loops leave over. */
#include <string.h>

#include "kernels.h"
#include "product.h"

static inline uint16_t load_le16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

int zoo_rans_decode_steps_scalar(uint32_t *states, size_t lanes, const uint32_t *table, const uint8_t **cursor,
                                 const uint8_t *end, uint8_t *out, size_t steps) {
    const uint8_t *p = *cursor;
    for (size_t step = 0; step < steps; step++) {
        for (size_t lane = 0; lane < lanes; lane++) {
            uint32_t x = states[lane];
            uint32_t entry = table[x & (RANS_TOTAL - 1)];
            out[lane] = (uint8_t)(entry >> 24);
            x = (entry & 0xfff) * (x >> RANS_PROB_BITS) + ((entry >> 12) & 0xfff);
            if (x < RANS_LOW) {
                if (end - p < 2) return -1;
                x = (x << 16) | load_le16(p);
                p += 2;
            }
            states[lane] = x;
        }
        out += lanes;
    }
    *cursor = p;
    return 0;
}

void zoo_merge_words_scalar(const uint8_t *ranks, const uint16_t *symbol_of_rank, const uint8_t *bits, size_t count, int width,
                            int zeros, int remainder_bits, int word_bytes, int is_float, uint8_t *out) {
    uint32_t width_mask = (uint32_t)((1ull << width) - 1), remainder_mask = (uint32_t)((1ull << remainder_bits) - 1);
    int word_bits = 8 * word_bytes;
    uint32_t word_mask = word_bits == 32 ? 0xffffffffu : (1u << word_bits) - 1;
    uint64_t position = 0;
    for (size_t i = 0; i < count; i++, position += (uint64_t)width) {
        /* read only the bytes this word's bits occupy: at most 4 (24 bits + 7 of offset) */
        size_t byte = (size_t)(position >> 3);
        int shift = (int)(position & 7), needed = (shift + width + 7) >> 3;
        uint64_t window = 0;
        for (int k = 0; k < needed; k++) window |= (uint64_t)bits[byte + (size_t)k] << (8 * k);
        uint32_t value = (uint32_t)(window >> shift) & width_mask;
        uint32_t rest = is_float ? ((value >> 1) << (zeros + 1)) | (value & 1) : value << zeros;
        uint32_t symbol = symbol_of_rank ? symbol_of_rank[ranks[i]] : ranks[i];
        uint32_t key = (symbol << remainder_bits) | (rest & remainder_mask);
        if (is_float) key = ((key >> 1) | (key << (word_bits - 1))) & word_mask;
        if (word_bytes == 1) out[i] = (uint8_t)key;
        else if (word_bytes == 2) {
            uint16_t narrow = (uint16_t)key;
            memcpy(out + 2 * i, &narrow, 2);
        } else
            memcpy(out + 4 * i, &key, 4);
    }
}

static inline uint64_t load_word(const uint8_t *p, int bytes) {
    uint64_t value = 0;
    memcpy(&value, p, (size_t)bytes); /* little-endian hosts only: see setup.py */
    return value;
}

static inline void store_word(uint8_t *p, uint64_t value, int bytes) { memcpy(p, &value, (size_t)bytes); }

static inline uint64_t rotate_left1(uint64_t value, int bits) {
    uint64_t mask = bits == 64 ? ~0ull : ((1ull << bits) - 1);
    return ((value << 1) | (value >> (bits - 1))) & mask;
}

static inline uint64_t rotate_right1(uint64_t value, int bits) {
    uint64_t mask = bits == 64 ? ~0ull : ((1ull << bits) - 1);
    return ((value >> 1) | (value << (bits - 1))) & mask;
}

void zoo_split_planes_scalar(const uint8_t *in, size_t count, int word_bytes, int rotate, uint8_t *const *planes) {
    int bits = 8 * word_bytes;
    for (size_t i = 0; i < count; i++) {
        uint64_t word = load_word(in + i * (size_t)word_bytes, word_bytes);
        if (rotate) word = rotate_left1(word, bits);
        for (int plane = 0; plane < word_bytes; plane++)
            planes[plane][i] = (uint8_t)(word >> (8 * (word_bytes - 1 - plane)));
    }
}

void zoo_merge_planes_scalar(const uint8_t *const *planes, size_t count, int word_bytes, int rotate, uint8_t *out) {
    int bits = 8 * word_bytes;
    for (size_t i = 0; i < count; i++) {
        uint64_t word = 0;
        for (int plane = 0; plane < word_bytes; plane++)
            word |= (uint64_t)planes[plane][i] << (8 * (word_bytes - 1 - plane));
        if (rotate) word = rotate_right1(word, bits);
        store_word(out + i * (size_t)word_bytes, word, word_bytes);
    }
}

/* -- Philox4x32-10 ------------------------------------------------------------------------ */

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

static void philox_block(uint64_t block, uint64_t stream, uint64_t seed, uint32_t words[4]) {
    uint32_t c0 = (uint32_t)block, c1 = (uint32_t)(block >> 32), c2 = (uint32_t)stream, c3 = (uint32_t)(stream >> 32);
    uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
    for (int round = 0; round < 10; round++) {
        if (round) {
            k0 += PHILOX_W0;
            k1 += PHILOX_W1;
        }
        uint64_t product0 = (uint64_t)PHILOX_M0 * c0, product1 = (uint64_t)PHILOX_M1 * c2;
        uint32_t n0 = (uint32_t)(product1 >> 32) ^ c1 ^ k0, n2 = (uint32_t)(product0 >> 32) ^ c3 ^ k1;
        c1 = (uint32_t)product1;
        c3 = (uint32_t)product0;
        c0 = n0;
        c2 = n2;
    }
    words[0] = c0;
    words[1] = c1;
    words[2] = c2;
    words[3] = c3;
}

static inline float uniform_of(uint32_t word) {
    /* (word >> 8) * 2^-23 - 1: both steps are exact in float32 */
    return (float)(word >> 8) * (1.0f / 8388608.0f) - 1.0f;
}

void zoo_philox_uniform_scalar(uint64_t seed, uint64_t stream, uint64_t offset, size_t count, float *out) {
    size_t done = 0;
    while (done < count) {
        uint64_t position = offset + done;
        uint32_t words[4];
        philox_block(position >> 2, stream, seed, words);
        for (unsigned w = (unsigned)(position & 3); w < 4 && done < count; w++) out[done++] = uniform_of(words[w]);
    }
}

/* -- float conversions, exactly as zoo.dtypes.from_float32 (numpy) ------------------------- */

uint16_t zoo_float_to_bfloat(float value) {
    uint32_t bits;
    memcpy(&bits, &value, 4);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((bits >> 16) | 0x40);
    return (uint16_t)((bits + 0x7fffu + ((bits >> 16) & 1)) >> 16);
}

uint16_t zoo_float_to_half(float value) {
    uint32_t bits;
    memcpy(&bits, &value, 4);
    uint16_t sign = (uint16_t)((bits >> 16) & 0x8000);
    uint32_t magnitude = bits & 0x7fffffffu;
    if (magnitude >= 0x7f800000u) {
        if (magnitude == 0x7f800000u) return sign | 0x7c00;
        uint16_t nan = (uint16_t)(0x7c00 | ((magnitude & 0x7fffff) >> 13));
        return sign | (nan == 0x7c00 ? 0x7c01 : nan); /* keep a NaN a NaN, as numpy does */
    }
    if (magnitude >= 0x477ff000u) return sign | 0x7c00; /* 65520 and up round to infinity */
    if (magnitude < 0x38800000u) {                      /* below 2^-14: a half subnormal or zero */
        uint32_t exponent = magnitude >> 23;
        if (exponent < 102) return sign; /* at most 2^-25: rounds to zero */
        uint32_t mantissa = (magnitude & 0x7fffff) | 0x800000;
        uint32_t shift = 126 - exponent, kept = mantissa >> shift, rest = mantissa & ((1u << shift) - 1);
        uint32_t halfway = 1u << (shift - 1);
        if (rest > halfway || (rest == halfway && (kept & 1))) kept++;
        return sign | (uint16_t)kept;
    }
    uint32_t kept = (magnitude >> 13) - ((127 - 15) << 10), rest = magnitude & 0x1fff;
    if (rest > 0x1000 || (rest == 0x1000 && (kept & 1))) kept++;
    return sign | (uint16_t)kept;
}

void zoo_dequantize_rows_scalar(const uint16_t *indices, size_t rows, size_t cols, const int32_t *row_codebook,
                                const float *codebooks, size_t codebook_size, int kind, void *out) {
    for (size_t r = 0; r < rows; r++) {
        const float *book = codebooks + (size_t)row_codebook[r] * codebook_size;
        const uint16_t *index = indices + r * cols;
        if (kind == 0) {
            float *row = (float *)out + r * cols;
            for (size_t c = 0; c < cols; c++) row[c] = book[index[c]];
        } else {
            uint16_t *row = (uint16_t *)out + r * cols;
            for (size_t c = 0; c < cols; c++)
                row[c] = kind == 1 ? zoo_float_to_half(book[index[c]]) : zoo_float_to_bfloat(book[index[c]]);
        }
    }
}

/* -- rANS encoding ------------------------------------------------------------------------ */

static inline uint32_t symbol_key(const uint8_t *p, int word_bytes, int is_float) {
    uint32_t key = word_bytes == 1 ? p[0] : word_bytes == 2 ? load_le16(p) : (uint32_t)load_word(p, 4);
    if (is_float) key = (uint32_t)rotate_left1(key, 8 * word_bytes);
    return key;
}

void zoo_rans_encode_scalar(uint32_t *states, size_t lanes, const uint32_t *by_symbol, const uint8_t *words, size_t count,
                            int word_bytes, int is_float, int remainder_bits, uint16_t **top) {
    if (!count) return;
    /* x / freq as (x * ceil(2^44 / freq)) >> 44, exact for x < 2^32; one reciprocal per symbol used */
    size_t n_symbols = (size_t)1 << (8 * word_bytes - remainder_bits);
    uint64_t reciprocals[1u << 12];
    for (size_t symbol = 0; symbol < n_symbols; symbol++) {
        uint32_t freq = by_symbol[symbol] & (RANS_TOTAL - 1);
        reciprocals[symbol] = freq ? ((1ull << 44) + freq - 1) / freq : 0;
    }
    uint16_t *stack = *top;
    /* Branch-free: whether a lane emits a word is a coin toss, so a branch would mispredict. */
    for (size_t i = count; i-- > 0;) {
        uint32_t symbol = symbol_key(words + i * (size_t)word_bytes, word_bytes, is_float) >> remainder_bits;
        uint32_t entry = by_symbol[symbol], freq = entry & (RANS_TOTAL - 1), cum = entry >> RANS_PROB_BITS;
        uint32_t x = states[i & (lanes - 1)];
        uint32_t emit = x >= (freq << (32 - RANS_PROB_BITS)); /* encoding would carry x past 2^32 */
        stack[-1] = (uint16_t)x;
        stack -= emit;
        x >>= 16 * emit;
        uint32_t quotient = (uint32_t)(((unsigned __int128)x * reciprocals[symbol]) >> 44);
        states[i & (lanes - 1)] = (quotient << RANS_PROB_BITS) + (x - quotient * freq) + cum;
    }
    *top = stack;
}

void zoo_symbol_range_scalar(const uint8_t *words, size_t count, int word_bytes, int is_float, int symbol_bits, zoo_symbol_range *range) {
    int shift = 8 * word_bytes - symbol_bits;
    for (size_t i = 0; i < count; i++) {
        uint32_t symbol = symbol_key(words + i * (size_t)word_bytes, word_bytes, is_float) >> shift;
        if (symbol < range->smallest) range->smallest = symbol;
        if (symbol && symbol < range->smallest_nonzero) range->smallest_nonzero = symbol;
        if (symbol > range->largest) range->largest = symbol;
    }
}

/* Block by block: the shared trailing zeros, then the remainders packed through a 64-bit
 * accumulator flushed 32 bits at a time. */
uint64_t zoo_pack_remainders_scalar(const uint8_t *words, size_t count, int word_bytes, int is_float, int remainder_bits,
                                    uint8_t *zeros, uint8_t *packed) {
    int low_bits = is_float && remainder_bits ? remainder_bits - 1 : remainder_bits;
    uint32_t remainder_mask = remainder_bits ? (uint32_t)((1ull << remainder_bits) - 1) : 0;
    uint64_t accumulator = 0, total_bits = 0;
    int filled = 0;
    size_t written = 0;
    for (size_t first = 0; first < count; first += RANS_BLOCK) {
        size_t n = count - first < RANS_BLOCK ? count - first : RANS_BLOCK;
        uint32_t seen = 0;
        for (size_t k = 0; k < n; k++) seen |= (symbol_key(words + (first + k) * (size_t)word_bytes, word_bytes, is_float) & remainder_mask) >> (remainder_bits - low_bits);
        int shared = seen ? __builtin_ctz(seen) : low_bits;
        if (shared > low_bits) shared = low_bits;
        int width = remainder_bits - shared;
        zeros[first / RANS_BLOCK] = (uint8_t)shared;
        total_bits += (uint64_t)n * (uint64_t)width;
        if (!remainder_bits) continue;
        for (size_t k = 0; k < n; k++) {
            uint32_t rest = symbol_key(words + (first + k) * (size_t)word_bytes, word_bytes, is_float) & remainder_mask;
            uint32_t value = is_float ? (((rest >> 1) >> shared) << 1) | (rest & 1) : rest >> shared;
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
    memcpy(packed + written, &accumulator, 8);
    return total_bits;
}

/* -- CRC-32 ------------------------------------------------------------------------------- */

/* Slice-by-8 tables: crc_table[k][b] is byte b's CRC pushed through k more zero bytes, so eight
 * input bytes cost eight independent lookups instead of a chain of eight. */
static uint32_t crc_table[8][256];

__attribute__((constructor)) static void build_crc_table(void) {
    for (uint32_t byte = 0; byte < 256; byte++) {
        uint32_t crc = byte;
        for (int bit = 0; bit < 8; bit++) crc = crc & 1 ? (crc >> 1) ^ 0xedb88320u : crc >> 1;
        crc_table[0][byte] = crc;
    }
    for (uint32_t byte = 0; byte < 256; byte++)
        for (int k = 1; k < 8; k++) crc_table[k][byte] = (crc_table[k - 1][byte] >> 8) ^ crc_table[0][crc_table[k - 1][byte] & 0xff];
}

uint32_t zoo_crc32_scalar(uint32_t crc, const uint8_t *data, size_t size) {
    crc = ~crc;
    for (; size >= 8; size -= 8, data += 8) {
        uint64_t word;
        memcpy(&word, data, 8); /* little-endian hosts only: see setup.py */
        word ^= crc;
        crc = crc_table[7][word & 0xff] ^ crc_table[6][(word >> 8) & 0xff] ^ crc_table[5][(word >> 16) & 0xff] ^
              crc_table[4][(word >> 24) & 0xff] ^ crc_table[3][(word >> 32) & 0xff] ^ crc_table[2][(word >> 40) & 0xff] ^
              crc_table[1][(word >> 48) & 0xff] ^ crc_table[0][word >> 56];
    }
    while (size--) crc = (crc >> 8) ^ crc_table[0][(crc ^ *data++) & 0xff];
    return ~crc;
}

static void product(const float *left, const float *right, size_t rows, size_t rank, size_t cols, float *out) {
    zoo_product_rows(left, right, rows, rank, cols, out);
}

const zoo_kernels zoo_kernels_scalar = {
    .rans_decode_steps = zoo_rans_decode_steps_scalar,
    .merge_words = zoo_merge_words_scalar,
    .split_planes = zoo_split_planes_scalar,
    .merge_planes = zoo_merge_planes_scalar,
    .philox_uniform = zoo_philox_uniform_scalar,
    .dequantize_rows = zoo_dequantize_rows_scalar,
    .rans_encode = zoo_rans_encode_scalar,
    .pack_remainders = zoo_pack_remainders_scalar,
    .symbol_range = zoo_symbol_range_scalar,
    .product = product,
    .crc32 = zoo_crc32_scalar,
};
