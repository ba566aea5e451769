/* The kernel table: one scalar reference (kernels_scalar.c), one file per instruction set
 * (kernels_avx2.c, kernels_avx512.c), each compiled with only its own flags, and a dispatcher
 * (dispatch.c) that fills the table once from what the CPU reports.
 *
 * SIMD kernels handle the bulk and hand the tail to the scalar helper, so there is one truth. */
#ifndef ZOO_KERNELS_H
#define ZOO_KERNELS_H

#include <stddef.h>
#include <stdint.h>

/* rANS: 32-bit states kept in [RANS_LOW, 2^32), 16-bit renormalisation, probabilities in
 * 1/RANS_TOTAL; `lanes` interleaved states (element i belongs to lane i % lanes), a multiple of
 * RANS_MIN_LANES up to RANS_MAX_LANES: more lanes for longer sections, so that the numpy
 * reference can decode one step of all lanes at once. */
#define RANS_PROB_BITS 12
#define RANS_TOTAL (1u << RANS_PROB_BITS)
#define RANS_LOW (1u << 16)
#define RANS_MIN_LANES 32
#define RANS_MAX_LANES 512

/* One encoding-table entry per symbol: frequency (bits 0-11), cumulative frequency (bits 12-23). */
#define RANS_ENCODE_ENTRY(freq, cum) ((uint32_t)(freq) | ((uint32_t)(cum) << 12))
/* Trailing zeros of raw bits are shared per block of this many words. */
#define RANS_BLOCK_LOG2 7
#define RANS_BLOCK (1u << RANS_BLOCK_LOG2)

/* One decoding-table entry per slot: frequency (bits 0-11), slot minus the symbol's cumulative
 * frequency (bits 12-23), the symbol's rank in the used alphabet (bits 24-31). */
#define RANS_ENTRY(freq, bias, rank) ((uint32_t)(freq) | ((uint32_t)(bias) << 12) | ((uint32_t)(rank) << 24))

/* What symbol_range finds: of a section's symbols, the smallest, the smallest nonzero, the largest. */
typedef struct {
    uint32_t smallest, smallest_nonzero, largest;
} zoo_symbol_range;

typedef struct {
    /* Decode `steps` full steps of `lanes` symbols: ranks into out[steps * lanes].
     * Reads little-endian 16-bit words from *cursor, never past `end`; returns 0, or -1 when
     * the stream runs out (the caller reports a damaged payload). */
    int (*rans_decode_steps)(uint32_t *states, size_t lanes, const uint32_t *table, const uint8_t **cursor,
                             const uint8_t *end, uint8_t *out, size_t steps);
    /* Rebuild `count` words of `word_bytes` (1, 2, 4) from their symbols' ranks and raw bits:
     * word = (symbol_of_rank[rank] << remainder_bits) | remainder, where the remainder is
     * `width` raw bits (LSB first, from `bits`, which holds at least ceil(count * width / 8)
     * bytes) with `zeros` zero bits put back below them (above bit 0, the sign, for floats,
     * which are then rotated right one bit). symbol_of_rank has 256 entries: a section's
     * symbols, distinct and ascending, then zeros; every rank is below the section's alphabet size.
     * NULL: each "rank" is its symbol already (sections of at most 8 symbol bits). */
    void (*merge_words)(const uint8_t *ranks, const uint16_t *symbol_of_rank, const uint8_t *bits, size_t count, int width,
                        int zeros, int remainder_bits, int word_bytes, int is_float, uint8_t *out);
    /* Words of `word_bytes` (1, 2, 4, 8) <-> byte planes, most significant first;
     * `rotate`: floats rotated left one bit first, so the sign is the lowest bit. */
    void (*split_planes)(const uint8_t *in, size_t count, int word_bytes, int rotate, uint8_t *const *planes);
    void (*merge_planes)(const uint8_t *const *planes, size_t count, int word_bytes, int rotate, uint8_t *out);
    /* Philox4x32-10 uniforms in [-1, 1), element j taking counter block (offset + j) / 4. */
    void (*philox_uniform)(uint64_t seed, uint64_t stream, uint64_t offset, size_t count, float *out);
    /* out[r][c] = codebooks[row_codebook[r]][index] for `rows` rows of `cols` already-unpacked
     * 16-bit indices, converted to F32 (kind 0), F16 (1) or BF16 (2); inputs are validated. */
    void (*dequantize_rows)(const uint16_t *indices, size_t rows, size_t cols, const int32_t *row_codebook,
                            const float *codebooks, size_t codebook_size, int kind, void *out);
    /* rANS encoding of `count` words (element i in lane i % lanes), last element first, as rANS
     * runs backwards. A word's symbol is its top bits above `remainder_bits` (floats rotated left
     * one bit first); by_symbol[symbol] is RANS_ENCODE_ENTRY(freq, cum), 0 < freq < RANS_TOTAL, for
     * every symbol present. A lane whose state would pass 2^32 first pushes its low 16 bits below
     * *top (moving *top down), so the decoder reads them upward in its own order; at least 32
     * bytes below the lowest word pushed must be writable scratch. */
    void (*rans_encode)(uint32_t *states, size_t lanes, const uint32_t *by_symbol, const uint8_t *words, size_t count,
                        int word_bytes, int is_float, int remainder_bits, uint16_t **top);
    /* The raw bits of a section's words (their low `remainder_bits`, floats rotated first): per
     * block of RANS_BLOCK words, the trailing zero bits all its remainders share into zeros[block]
     * (for floats those above bit 0, the sign, which stays), then each remainder without them, LSB
     * first, into `packed` (room for the packed bits plus 64 bytes; the bytes after the last bit
     * are scratch). Returns the number of bits packed. */
    uint64_t (*pack_remainders)(const uint8_t *words, size_t count, int word_bytes, int is_float, int remainder_bits,
                                uint8_t *zeros, uint8_t *packed);
    /* Of the symbols of `count` words (each word's top `symbol_bits` bits, floats rotated left one
     * bit first; symbol_bits is 8 for 1-byte words, 8 to 12 for wider ones, as the coder's): lowers
     * range->smallest and range->smallest_nonzero to theirs, raises range->largest to theirs. */
    void (*symbol_range)(const uint8_t *words, size_t count, int word_bytes, int is_float, int symbol_bits, zoo_symbol_range *range);
    /* out (rows x cols) = left (rows x rank) times right (rank x cols), float32, summed in double in
     * a fixed order (product.h): the same bits from every table. */
    void (*product)(const float *left, const float *right, size_t rows, size_t rank, size_t cols, float *out);
    /* CRC-32 (the zlib/PNG polynomial): crc32(crc32(0, a), b) == crc32(0, a + b), as zlib.crc32. */
    uint32_t (*crc32)(uint32_t crc, const uint8_t *data, size_t size);
} zoo_kernels;

extern const zoo_kernels zoo_kernels_scalar;
#if defined(__x86_64__) || defined(_M_X64)
extern const zoo_kernels zoo_kernels_avx2;
extern const zoo_kernels zoo_kernels_avx512;
extern const zoo_kernels zoo_kernels_avx2_loads; /* AVX2, rANS decoding's slots by scalar loads */
extern const zoo_kernels zoo_kernels_avx512_ymm; /* AVX-512, rANS decoding with 8-lane gathers */
#endif

/* Scalar helpers the SIMD files call for tails. */
int zoo_rans_decode_steps_scalar(uint32_t *states, size_t lanes, const uint32_t *table, const uint8_t **cursor,
                                 const uint8_t *end, uint8_t *out, size_t steps);
void zoo_merge_words_scalar(const uint8_t *ranks, const uint16_t *symbol_of_rank, const uint8_t *bits, size_t count, int width,
                            int zeros, int remainder_bits, int word_bytes, int is_float, uint8_t *out);
void zoo_split_planes_scalar(const uint8_t *in, size_t count, int word_bytes, int rotate, uint8_t *const *planes);
void zoo_merge_planes_scalar(const uint8_t *const *planes, size_t count, int word_bytes, int rotate, uint8_t *out);
void zoo_philox_uniform_scalar(uint64_t seed, uint64_t stream, uint64_t offset, size_t count, float *out);
void zoo_dequantize_rows_scalar(const uint16_t *indices, size_t rows, size_t cols, const int32_t *row_codebook,
                                const float *codebooks, size_t codebook_size, int kind, void *out);
void zoo_rans_encode_scalar(uint32_t *states, size_t lanes, const uint32_t *by_symbol, const uint8_t *words, size_t count,
                            int word_bytes, int is_float, int remainder_bits, uint16_t **top);
uint64_t zoo_pack_remainders_scalar(const uint8_t *words, size_t count, int word_bytes, int is_float, int remainder_bits,
                                    uint8_t *zeros, uint8_t *packed);
uint32_t zoo_crc32_scalar(uint32_t crc, const uint8_t *data, size_t size);
void zoo_symbol_range_scalar(const uint8_t *words, size_t count, int word_bytes, int is_float, int symbol_bits, zoo_symbol_range *range);
#if defined(__x86_64__) || defined(_M_X64)
/* carry-less multiplication folding (crc32_pclmul.c, compiled with -mpclmul -msse4.1) */
uint32_t zoo_crc32_pclmul(uint32_t crc, const uint8_t *data, size_t size);
#endif
uint16_t zoo_float_to_half(float value);
uint16_t zoo_float_to_bfloat(float value);

#endif
