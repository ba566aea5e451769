/* AVX-512 kernels (F, BW, VL, DQ, VBMI, with VPCLMULQDQ). This file alone is compiled with those
 * flags; the dispatcher calls it only on a CPU that has them. Tails go to the scalar reference. */
#include <immintrin.h>
#include <string.h>

#include "kernels.h"
#include "product.h"

/* The table entries of 16 slots: one 16-lane gather, or (`narrow`) two 8-lane ones. AMD's Zen
 * cores run the 16-lane gather slower than two 8-lane ones: on a Zen 5, 5.0 against 3.9 ns for 16
 * slots of a 16 KiB table, independent gathers back to back; `zoo_kernels_avx512_ymm` is the
 * table with narrow gathers, which the dispatcher picks on AMD's CPUs (docs/kernels.md). */
static inline __m512i gather_entries(__m512i slot, const uint32_t *table, const int narrow) {
    if (!narrow) return _mm512_i32gather_epi32(slot, (const void *)table, 4);
    __m256i low = _mm256_i32gather_epi32((const int *)table, _mm512_castsi512_si256(slot), 4);
    __m256i high = _mm256_i32gather_epi32((const int *)table, _mm512_extracti64x4_epi64(slot, 1), 4);
    return _mm512_inserti64x4(_mm512_castsi256_si512(low), high, 1);
}

/* The first half of a rANS step of 16 lanes: their ranks to out, and the states before refills. */
static inline __m512i decode_16(__m512i x, const uint32_t *table, uint8_t *out, const int narrow) {
    const __m512i mask12 = _mm512_set1_epi32(RANS_TOTAL - 1);
    __m512i entry = gather_entries(_mm512_and_si512(x, mask12), table, narrow);
    /* the ranks (each entry's top byte) gathered into the low 16 bytes by one byte permute */
    const __m512i top_bytes = _mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x3f3b3733, 0x2f2b2723, 0x1f1b1713, 0x0f0b0703);
    _mm_storeu_si128((__m128i *)out, _mm512_castsi512_si128(_mm512_permutexvar_epi8(top_bytes, entry)));
    __m512i freq = _mm512_and_si512(entry, mask12), bias = _mm512_and_si512(_mm512_srli_epi32(entry, 12), mask12);
    return _mm512_add_epi32(_mm512_mullo_epi32(freq, _mm512_srli_epi32(x, RANS_PROB_BITS)), bias);
}

/* The second half: lanes below RANS_LOW take the next 16-bit words, in lane order. */
static inline int refill_16(__m512i *lanes, const uint8_t **cursor, const uint8_t *end) {
    __m512i x = *lanes;
    __mmask16 refill = _mm512_cmplt_epu32_mask(x, _mm512_set1_epi32((int)RANS_LOW));
    unsigned n = (unsigned)__builtin_popcount(refill);
    if ((size_t)(end - *cursor) < 2 * (size_t)n) return -1;
    /* far from the end a plain load (the expand uses only the first n words); near it a masked
     * load that touches only the n words that exist */
    __m256i packed = end - *cursor >= 32 ? _mm256_loadu_si256((const __m256i *)*cursor)
                                         : _mm256_maskz_loadu_epi16((__mmask16)((1u << n) - 1), *cursor);
    __m512i words = _mm512_cvtepu16_epi32(packed);
    *lanes = _mm512_mask_or_epi32(x, refill, _mm512_slli_epi32(x, 16), _mm512_maskz_expand_epi32(refill, words));
    *cursor += 2 * n;
    return 0;
}

/* Four groups of 16 lanes at a time are looked up, refilled and stored, all in registers.
 * The refills' only chain is the stream cursor (an add per group), so the gathers of the next
 * groups overlap it; a pass of lookups over all lanes then a pass of refills was 1.3x slower
 * (each state stored and loaded again between the two), and so was one or two groups at a
 * time; more than eight spill registers. With 8-lane gathers (`narrow`, AMD's CPUs), eight
 * groups at a time where the lanes allow: 1.02-1.10x on a Zen 5 (docs/kernels.md). */
#define DECODE_GROUPS 4
#define DECODE_GROUPS_NARROW 8
/* `groups` x 16 lanes whose states stay in registers for all the steps. */
static inline __attribute__((always_inline)) int decode_in_registers(uint32_t *states, const int groups, const uint32_t *table,
                                                                     const uint8_t **cursor, const uint8_t *end, uint8_t *out, size_t steps,
                                                                     const int narrow) {
    __m512i x[DECODE_GROUPS];
    for (int g = 0; g < groups; g++) x[g] = _mm512_loadu_si512(states + 16 * g);
    for (size_t step = 0; step < steps; step++, out += 16 * groups) {
        for (int g = 0; g < groups; g++) x[g] = decode_16(x[g], table, out + 16 * g, narrow);
        for (int g = 0; g < groups; g++)
            if (refill_16(&x[g], cursor, end)) return -1;
    }
    for (int g = 0; g < groups; g++) _mm512_storeu_si512(states + 16 * g, x[g]);
    return 0;
}

static inline __attribute__((always_inline)) int decode_steps(uint32_t *states, size_t lanes, const uint32_t *table,
                                                              const uint8_t **cursor, const uint8_t *end, uint8_t *out, size_t steps,
                                                              const int narrow) {
    const uint8_t *p = *cursor;
    if (lanes == 2 * 16) { /* small sections: the states stay in registers from step to step */
        if (decode_in_registers(states, 2, table, &p, end, out, steps, narrow)) return -1;
    } else if (lanes == 4 * 16) {
        if (decode_in_registers(states, 4, table, &p, end, out, steps, narrow)) return -1;
    } else {
        for (size_t step = 0; step < steps; step++, out += lanes) {
            _mm_prefetch((const char *)p + 2048, _MM_HINT_T0); /* a step reads up to 2 * lanes bytes of stream */
            _mm_prefetch((const char *)p + 2048 + 64 * (lanes / 64), _MM_HINT_T0);
            const int groups = narrow ? DECODE_GROUPS_NARROW : DECODE_GROUPS;
            size_t lane = 0;
            for (; lane + 16 * (size_t)groups <= lanes; lane += 16 * (size_t)groups) {
                __m512i x[DECODE_GROUPS_NARROW];
                for (int g = 0; g < groups; g++) x[g] = decode_16(_mm512_loadu_si512(states + lane + 16 * g), table, out + lane + 16 * g, narrow);
                for (int g = 0; g < groups; g++)
                    if (refill_16(&x[g], &p, end)) return -1;
                for (int g = 0; g < groups; g++) _mm512_storeu_si512(states + lane + 16 * g, x[g]);
            }
            for (; lane < lanes; lane += 16) { /* lanes that are not a multiple of the groups */
                __m512i x = decode_16(_mm512_loadu_si512(states + lane), table, out + lane, narrow);
                if (refill_16(&x, &p, end)) return -1;
                _mm512_storeu_si512(states + lane, x);
            }
        }
    }
    *cursor = p;
    return 0;
}

static int rans_decode_steps(uint32_t *states, size_t lanes, const uint32_t *table, const uint8_t **cursor, const uint8_t *end,
                             uint8_t *out, size_t steps) {
    return decode_steps(states, lanes, table, cursor, end, out, steps, 0);
}

static int rans_decode_steps_ymm(uint32_t *states, size_t lanes, const uint32_t *table, const uint8_t **cursor, const uint8_t *end,
                                 uint8_t *out, size_t steps) {
    return decode_steps(states, lanes, table, cursor, end, out, steps, 1);
}

/* table[rank] for 32 ranks in 16-bit lanes: one two-register lookup per 64 ranks in use
 * (`quarters` of them; a section's ranks stay below its alphabet size) */
static inline __m512i lookup_symbols(__m512i rank, const __m512i table[8], int quarters) {
    __m512i q0 = _mm512_permutex2var_epi16(table[0], rank, table[1]);
    if (quarters == 1) return q0;
    __m512i q1 = _mm512_permutex2var_epi16(table[2], rank, table[3]);
    __mmask32 second = _mm512_test_epi16_mask(rank, _mm512_set1_epi16(64));
    if (quarters == 2) return _mm512_mask_mov_epi16(q0, second, q1);
    __m512i q2 = _mm512_permutex2var_epi16(table[4], rank, table[5]), q3 = _mm512_permutex2var_epi16(table[6], rank, table[7]);
    __mmask32 upper = _mm512_test_epi16_mask(rank, _mm512_set1_epi16(128));
    return _mm512_mask_mov_epi16(_mm512_mask_mov_epi16(q0, second, q1), upper, _mm512_mask_mov_epi16(q2, second, q3));
}

/* How many 64-entry quarters of symbol_of_rank hold symbols: past the alphabet it is all zeros
 * (and ranks 1 on are nonzero symbols, as symbols are distinct and ascending). */
static inline int quarters_used(const uint16_t *symbol_of_rank) {
    int quarters = 1;
    for (int k = 2; k < 8; k++)
        if (_mm512_test_epi16_mask(_mm512_loadu_si512(symbol_of_rank + 32 * k), _mm512_loadu_si512(symbol_of_rank + 32 * k))) quarters = k / 2 + 1;
    return quarters == 3 ? 4 : quarters;
}

/* 32 2-byte words from their symbols (in place) and the raw bits of a group of 32 fields. A group's
 * bits never reach past its own bytes (32 * width is a multiple of 8), so the masked load reads
 * exactly those: zeros stand in for the rest. */
static inline __m512i words_32(__m512i symbol, const uint8_t *bits, size_t group_bytes, __m512i gather_bytes, __m512i shifts, __m512i width_mask,
                               __m128i put_back, int is_float) {
    __m512i source = _mm512_maskz_loadu_epi8((1ull << group_bytes) - 1, bits);
    __m512i value = _mm512_and_si512(_mm512_srlv_epi16(_mm512_permutexvar_epi8(gather_bytes, source), shifts), width_mask);
    return is_float ? _mm512_ternarylogic_epi32(symbol, _mm512_sll_epi16(_mm512_srli_epi16(value, 1), put_back), _mm512_slli_epi16(value, 15), 0xfe) /* three-way OR */
                    : _mm512_or_si512(symbol, _mm512_sll_epi16(value, put_back));
}

static void merge_words(const uint8_t *ranks, const uint16_t *symbol_of_rank, const uint8_t *bits, size_t count, int width,
                        int zeros, int remainder_bits, int word_bytes, int is_float, uint8_t *out) {
    size_t i = 0;
    const int direct = symbol_of_rank == NULL; /* the ranks are the symbols: no lookup */
    const uint8_t *end = bits + (count * (size_t)width + 7) / 8;
    if ((word_bytes == 2 && width <= 9) || (word_bytes == 4 && width <= 25)) {
        __m512i table[8];
        for (int k = 0; k < 8; k++) table[k] = direct ? _mm512_setzero_si512() : _mm512_loadu_si512(symbol_of_rank + 32 * k);
        /* where each lane's bits start: byte index into the group's bytes, and bit shift */
        uint8_t byte_index[64];
        uint16_t shift16[32];
        uint32_t shift32[16];
        int lanes = word_bytes == 2 ? 32 : 16;
        for (int j = 0; j < lanes; j++) {
            int position = j * width;
            for (int b = 0; b < word_bytes; b++) byte_index[word_bytes * j + b] = (uint8_t)((position >> 3) + b);
            if (word_bytes == 2) shift16[j] = (uint16_t)(position & 7);
            else shift32[j] = (uint32_t)(position & 7);
        }
        const __m512i gather_bytes = _mm512_loadu_si512(byte_index);
        const __m128i keep_low = _mm_cvtsi32_si128(zeros + 1), put_back = _mm_cvtsi32_si128(zeros);
        const __m128i symbol_shift = _mm_cvtsi32_si128(remainder_bits);
        /* a group's bits never reach past its own bytes (lanes * width is a multiple of 8), so the
         * masked load reads exactly those: zeros stand in for the rest */
        size_t group_bytes = (size_t)(lanes * width) / 8;
        int quarters = direct ? 1 : quarters_used(symbol_of_rank);
        if (word_bytes == 2) {
            /* Symbols come from the table already in place: shifted above the remainder and, for
             * floats, rotated right one bit with the key (the sign, bit 0 of the remainder, goes
             * to bit 15). */
            const __m128i place = _mm_cvtsi32_si128(remainder_bits - (is_float ? 1 : 0));
            __m512i placed[8];
            for (int k = 0; k < 8; k++) placed[k] = _mm512_sll_epi16(table[k], place);
            const __m512i shifts = _mm512_loadu_si512(shift16);
            const __m512i width_mask = _mm512_set1_epi16((short)((1u << width) - 1));
            if (count >= 64 && quarters > 1) {
                /* Past 64 ranks, 64 symbols at a time from byte tables: the placed symbols' low
                 * and high bytes each looked up by one two-register byte permute per 128 ranks,
                 * then interleaved into words, costs less than a word permute per 64 ranks
                 * (MiniLM BF16, 65 to 128 symbols: 0.075 -> 0.066 ns a word in cache). */
                __m512i low_bytes[4], high_bytes[4];
                for (int j = 0; j < 4; j++) {
                    low_bytes[j] = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi16_epi8(placed[2 * j])), _mm512_cvtepi16_epi8(placed[2 * j + 1]), 1);
                    high_bytes[j] = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi16_epi8(_mm512_srli_epi16(placed[2 * j], 8))),
                                                       _mm512_cvtepi16_epi8(_mm512_srli_epi16(placed[2 * j + 1], 8)), 1);
                }
                uint8_t interleave[2][64]; /* word k of half h: low byte from low[32h + k], high byte from high[32h + k] */
                for (int b = 0; b < 64; b++)
                    for (int h = 0; h < 2; h++) interleave[h][b] = (uint8_t)((b & 1 ? 64 : 0) + 32 * h + b / 2);
                const __m512i interleave_first = _mm512_loadu_si512(interleave[0]), interleave_second = _mm512_loadu_si512(interleave[1]);
                for (; i + 64 <= count; i += 64) {
                    _mm_prefetch((const char *)bits + 1024, _MM_HINT_T0);
                    __m512i rank = _mm512_loadu_si512(ranks + i);
                    __m512i low = _mm512_permutex2var_epi8(low_bytes[0], rank, low_bytes[1]);
                    __m512i high = _mm512_permutex2var_epi8(high_bytes[0], rank, high_bytes[1]);
                    if (quarters > 2) { /* ranks 128 on */
                        __mmask64 upper = _mm512_movepi8_mask(rank);
                        low = _mm512_mask_mov_epi8(low, upper, _mm512_permutex2var_epi8(low_bytes[2], rank, low_bytes[3]));
                        high = _mm512_mask_mov_epi8(high, upper, _mm512_permutex2var_epi8(high_bytes[2], rank, high_bytes[3]));
                    }
                    __m512i symbols[2] = {_mm512_permutex2var_epi8(low, interleave_first, high), _mm512_permutex2var_epi8(low, interleave_second, high)};
                    for (int half = 0; half < 2; half++, bits += group_bytes)
                        _mm512_storeu_si512(out + 2 * (i + 32 * (size_t)half), words_32(symbols[half], bits, group_bytes, gather_bytes, shifts, width_mask, put_back, is_float));
                }
            }
            if (direct) { /* the ranks are the symbols: widened and shifted, no lookup */
                for (; i + 32 <= count; i += 32, bits += group_bytes) {
                    _mm_prefetch((const char *)bits + 1024, _MM_HINT_T0);
                    __m512i symbol = _mm512_sll_epi16(_mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(ranks + i))), place);
                    _mm512_storeu_si512(out + 2 * i, words_32(symbol, bits, group_bytes, gather_bytes, shifts, width_mask, put_back, is_float));
                }
            }
            for (; i + 32 <= count; i += 32, bits += group_bytes) {
                _mm_prefetch((const char *)bits + 1024, _MM_HINT_T0);
                __m512i symbol = lookup_symbols(_mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(ranks + i))), placed, quarters);
                _mm512_storeu_si512(out + 2 * i, words_32(symbol, bits, group_bytes, gather_bytes, shifts, width_mask, put_back, is_float));
            }
        } else {
            const __m512i shifts = _mm512_loadu_si512(shift32);
            const __m512i width_mask = _mm512_set1_epi32((int)((1u << width) - 1)), one = _mm512_set1_epi32(1);
            const __m512i remainder_mask = _mm512_set1_epi32((int)((1u << remainder_bits) - 1));
            for (; i + 32 <= count; i += 32) {
                __m512i rank = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(ranks + i)));
                __m512i symbols = direct ? rank : lookup_symbols(rank, table, quarters);
                for (int half = 0; half < 2; half++, bits += group_bytes) {
                    /* the 64 bytes at `bits` while they lie within the stream (the fields take
                     * only their own bytes), else a masked load of the group's: the masked load
                     * was 80% of the samples of F32 word rebuilding on an AMD EPYC (Zen 5), where
                     * this load made F32 decoding 1.4x faster (2-byte words: no change) */
                    __m512i source = bits + 64 <= end ? _mm512_loadu_si512(bits) : _mm512_maskz_loadu_epi8((1ull << group_bytes) - 1, bits);
                    __m512i value = _mm512_and_si512(_mm512_srlv_epi32(_mm512_permutexvar_epi8(gather_bytes, source), shifts), width_mask);
                    __m512i rest = is_float ? _mm512_or_si512(_mm512_sll_epi32(_mm512_srli_epi32(value, 1), keep_low), _mm512_and_si512(value, one))
                                            : _mm512_sll_epi32(value, put_back);
                    __m512i symbol = _mm512_cvtepu16_epi32(half ? _mm512_extracti64x4_epi64(symbols, 1) : _mm512_castsi512_si256(symbols));
                    __m512i key = _mm512_or_si512(_mm512_sll_epi32(symbol, symbol_shift), _mm512_and_si512(rest, remainder_mask));
                    if (is_float) key = _mm512_ror_epi32(key, 1);
                    _mm512_storeu_si512(out + 4 * (i + 16 * (size_t)half), key);
                }
            }
        }
    }
    if (i < count) zoo_merge_words_scalar(ranks + i, symbol_of_rank, bits, count - i, width, zeros, remainder_bits, word_bytes, is_float, out + i * (size_t)word_bytes);
}

static void split_planes(const uint8_t *in, size_t count, int word_bytes, int rotate, uint8_t *const *planes) {
    size_t i = 0;
    if (word_bytes == 2) {
        for (; i + 32 <= count; i += 32) {
            __m512i x = _mm512_loadu_si512(in + 2 * i);
            if (rotate) x = _mm512_or_si512(_mm512_slli_epi16(x, 1), _mm512_srli_epi16(x, 15));
            _mm256_storeu_si256((__m256i *)(planes[0] + i), _mm512_cvtepi16_epi8(_mm512_srli_epi16(x, 8)));
            _mm256_storeu_si256((__m256i *)(planes[1] + i), _mm512_cvtepi16_epi8(x));
        }
    } else if (word_bytes == 4) {
        for (; i + 16 <= count; i += 16) {
            __m512i x = _mm512_loadu_si512(in + 4 * i);
            if (rotate) x = _mm512_rol_epi32(x, 1);
            for (int plane = 0; plane < 4; plane++)
                _mm_storeu_si128((__m128i *)(planes[plane] + i), _mm512_cvtepi32_epi8(_mm512_srli_epi32(x, 8 * (3 - plane))));
        }
    }
    if (i < count) {
        uint8_t *rest[8];
        for (int plane = 0; plane < word_bytes; plane++) rest[plane] = planes[plane] + i;
        zoo_split_planes_scalar(in + i * (size_t)word_bytes, count - i, word_bytes, rotate, rest);
    }
}

static void merge_planes(const uint8_t *const *planes, size_t count, int word_bytes, int rotate, uint8_t *out) {
    size_t i = 0;
    if (word_bytes == 2) {
        for (; i + 32 <= count; i += 32) {
            __m512i high = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(planes[0] + i)));
            __m512i low = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(planes[1] + i)));
            __m512i x = _mm512_or_si512(_mm512_slli_epi16(high, 8), low);
            if (rotate) x = _mm512_or_si512(_mm512_srli_epi16(x, 1), _mm512_slli_epi16(x, 15));
            _mm512_storeu_si512(out + 2 * i, x);
        }
    } else if (word_bytes == 4) {
        for (; i + 16 <= count; i += 16) {
            __m512i x = _mm512_setzero_si512();
            for (int plane = 0; plane < 4; plane++)
                x = _mm512_or_si512(x, _mm512_slli_epi32(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(planes[plane] + i))),
                                                         8 * (3 - plane)));
            if (rotate) x = _mm512_ror_epi32(x, 1);
            _mm512_storeu_si512(out + 4 * i, x);
        }
    }
    if (i < count) {
        const uint8_t *rest[8];
        for (int plane = 0; plane < word_bytes; plane++) rest[plane] = planes[plane] + i;
        zoo_merge_planes_scalar(rest, count - i, word_bytes, rotate, out + i * (size_t)word_bytes);
    }
}

/* high and low 32 bits of a * b for 16 lanes */
static inline void multiply_wide(__m512i a, uint32_t b, __m512i *high, __m512i *low) {
    const __m512i factor = _mm512_set1_epi64(b);
    __m512i even = _mm512_mul_epu32(a, factor), odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), factor);
    *low = _mm512_mask_blend_epi32(0xaaaa, even, _mm512_slli_epi64(odd, 32));
    *high = _mm512_mask_blend_epi32(0xaaaa, _mm512_srli_epi64(even, 32), odd);
}

static void philox_uniform(uint64_t seed, uint64_t stream, uint64_t offset, size_t count, float *out) {
    size_t done = 0;
    size_t head = (size_t)((4 - (offset & 3)) & 3);
    if (head > count) head = count;
    zoo_philox_uniform_scalar(seed, stream, offset, head, out);
    done = head;
    const __m512i lane_index = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512 scale = _mm512_set1_ps(1.0f / 8388608.0f), one = _mm512_set1_ps(1.0f);
    for (; done + 64 <= count; done += 64) {
        uint64_t block = (offset + done) >> 2;
        /* 16 consecutive blocks; the 64-bit block number may carry into its high word */
        __m512i c0 = _mm512_add_epi32(_mm512_set1_epi32((int)(uint32_t)block), lane_index);
        __mmask16 carried = _mm512_cmplt_epu32_mask(c0, _mm512_set1_epi32((int)(uint32_t)block));
        __m512i c1 = _mm512_mask_add_epi32(_mm512_set1_epi32((int)(uint32_t)(block >> 32)), carried,
                                           _mm512_set1_epi32((int)(uint32_t)(block >> 32)), _mm512_set1_epi32(1));
        __m512i c2 = _mm512_set1_epi32((int)(uint32_t)stream), c3 = _mm512_set1_epi32((int)(uint32_t)(stream >> 32));
        uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
        for (int round = 0; round < 10; round++) {
            if (round) {
                k0 += 0x9E3779B9u;
                k1 += 0xBB67AE85u;
            }
            __m512i high0, low0, high1, low1;
            multiply_wide(c0, 0xD2511F53u, &high0, &low0);
            multiply_wide(c2, 0xCD9E8D57u, &high1, &low1);
            c0 = _mm512_xor_si512(_mm512_xor_si512(high1, c1), _mm512_set1_epi32((int)k0));
            c2 = _mm512_xor_si512(_mm512_xor_si512(high0, c3), _mm512_set1_epi32((int)k1));
            c1 = low1;
            c3 = low0;
        }
        /* transpose: block b's four words are outputs 4b .. 4b+3 */
        __m512i t0 = _mm512_unpacklo_epi32(c0, c1), t1 = _mm512_unpackhi_epi32(c0, c1);
        __m512i t2 = _mm512_unpacklo_epi32(c2, c3), t3 = _mm512_unpackhi_epi32(c2, c3);
        __m512i u0 = _mm512_unpacklo_epi64(t0, t2), u1 = _mm512_unpackhi_epi64(t0, t2);
        __m512i u2 = _mm512_unpacklo_epi64(t1, t3), u3 = _mm512_unpackhi_epi64(t1, t3);
        __m512i w0 = _mm512_shuffle_i32x4(u0, u1, _MM_SHUFFLE(2, 0, 2, 0)), w1 = _mm512_shuffle_i32x4(u2, u3, _MM_SHUFFLE(2, 0, 2, 0));
        __m512i w2 = _mm512_shuffle_i32x4(u0, u1, _MM_SHUFFLE(3, 1, 3, 1)), w3 = _mm512_shuffle_i32x4(u2, u3, _MM_SHUFFLE(3, 1, 3, 1));
        __m512i ordered[4] = {_mm512_shuffle_i32x4(w0, w1, _MM_SHUFFLE(2, 0, 2, 0)), _mm512_shuffle_i32x4(w2, w3, _MM_SHUFFLE(2, 0, 2, 0)),
                              _mm512_shuffle_i32x4(w0, w1, _MM_SHUFFLE(3, 1, 3, 1)), _mm512_shuffle_i32x4(w2, w3, _MM_SHUFFLE(3, 1, 3, 1))};
        for (int k = 0; k < 4; k++) {
            __m512 value = _mm512_cvtepi32_ps(_mm512_srli_epi32(ordered[k], 8));
            _mm512_storeu_ps(out + done + 16 * k, _mm512_sub_ps(_mm512_mul_ps(value, scale), one));
        }
    }
    zoo_philox_uniform_scalar(seed, stream, offset + done, count - done, out + done);
}

static void dequantize_rows(const uint16_t *indices, size_t rows, size_t cols, const int32_t *row_codebook,
                            const float *codebooks, size_t codebook_size, int kind, void *out) {
    for (size_t r = 0; r < rows; r++) {
        const float *book = codebooks + (size_t)row_codebook[r] * codebook_size;
        const uint16_t *index = indices + r * cols;
        size_t c = 0;
        for (; c + 16 <= cols; c += 16) {
            __m512i position = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(index + c)));
            __m512 value = _mm512_i32gather_ps(position, book, 4);
            if (kind == 0) {
                _mm512_storeu_ps((float *)out + r * cols + c, value);
                continue;
            }
            __m512i bits = _mm512_castps_si512(value);
            __mmask16 nan = _mm512_cmp_ps_mask(value, value, _CMP_UNORD_Q);
            __m512i result;
            if (kind == 2) {
                __m512i rounded = _mm512_srli_epi32(
                    _mm512_add_epi32(bits, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1)))), 16);
                result = _mm512_mask_or_epi32(rounded, nan, _mm512_srli_epi32(bits, 16), _mm512_set1_epi32(0x40));
            } else {
                /* the hardware rounds to nearest even like numpy; NaNs keep numpy's payload rule */
                result = _mm512_cvtepu16_epi32(_mm512_cvtps_ph(value, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
                __m512i payload = _mm512_and_si512(_mm512_srli_epi32(bits, 13), _mm512_set1_epi32(0x3ff));
                payload = _mm512_mask_mov_epi32(payload, _mm512_cmpeq_epi32_mask(payload, _mm512_setzero_si512()), _mm512_set1_epi32(1));
                __m512i nan_half = _mm512_or_si512(_mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(0x8000)),
                                                                   _mm512_set1_epi32(0x7c00)), payload);
                result = _mm512_mask_mov_epi32(result, nan, nan_half);
            }
            _mm256_storeu_si256((__m256i *)((uint16_t *)out + r * cols + c), _mm512_cvtepi32_epi16(result));
        }
        if (c < cols) {
            void *rest = kind == 0 ? (void *)((float *)out + r * cols + c) : (void *)((uint16_t *)out + r * cols + c);
            zoo_dequantize_rows_scalar(index + c, 1, cols - c, row_codebook + r, codebooks, codebook_size, kind, rest);
        }
    }
}


/* -- rANS encoding ------------------------------------------------------------------------ */

/* 16 words' keys in 32-bit lanes (floats rotated left one bit) */
static inline __m512i load_keys(const uint8_t *p, int word_bytes, int is_float) {
    if (word_bytes == 1) {
        __m512i key = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p));
        return is_float ? _mm512_and_si512(_mm512_or_si512(_mm512_slli_epi32(key, 1), _mm512_srli_epi32(key, 7)), _mm512_set1_epi32(0xff)) : key;
    }
    if (word_bytes == 2) {
        __m512i key = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p));
        return is_float ? _mm512_and_si512(_mm512_or_si512(_mm512_slli_epi32(key, 1), _mm512_srli_epi32(key, 15)), _mm512_set1_epi32(0xffff)) : key;
    }
    __m512i key = _mm512_loadu_si512(p);
    return is_float ? _mm512_rol_epi32(key, 1) : key;
}

/* One encoding step of 16 lanes. The quotient x / freq comes from single precision, less a
 * quarter: float(x) is within 2^-24 of x relatively, the reciprocal (an estimate within 2^-14 and
 * a Newton step) within 2^-23 + 2^-28 of 1/freq, so for x < freq * 2^20 (always so after
 * renormalisation) their exact product lies within 0.19 of x / freq, and the fused multiply-
 * subtract rounds it by at most 2^-5: the estimate lies between x / freq - 0.47 and x / freq - 0.03.
 * Its floor is the quotient or one below, which one correction upward makes exact (checked for
 * every frequency against 1.8 billion x, every quotient's neighbours at both ends among them). */
static inline __m512i encode_16(__m512i x, __m512i entry, uint16_t **top) {
    const __m512i mask12 = _mm512_set1_epi32(RANS_TOTAL - 1);
    __m512i freq = _mm512_and_si512(entry, mask12), cum = _mm512_srli_epi32(entry, RANS_PROB_BITS);
    __mmask16 emit = _mm512_cmpge_epu32_mask(x, _mm512_slli_epi32(freq, 32 - RANS_PROB_BITS));
    unsigned n = (unsigned)__builtin_popcount(emit);
    /* the emitting lanes' low halves, in lane order, just below *top */
    __m256i low_halves = _mm512_cvtepi32_epi16(_mm512_maskz_compress_epi32(emit, x));
    *top -= n;
    _mm256_mask_storeu_epi16(*top, (__mmask16)((1u << n) - 1), low_halves);
    x = _mm512_mask_srli_epi32(x, emit, x, 16);
    __m512 frequency = _mm512_cvtepi32_ps(freq), reciprocal = _mm512_rcp14_ps(frequency);
    reciprocal = _mm512_mul_ps(reciprocal, _mm512_fnmadd_ps(frequency, reciprocal, _mm512_set1_ps(2.0f))); /* one Newton step */
    __m512i quotient = _mm512_cvttps_epu32(_mm512_fmsub_ps(_mm512_cvtepu32_ps(x), reciprocal, _mm512_set1_ps(0.25f)));
    __m512i remainder = _mm512_sub_epi32(x, _mm512_mullo_epi32(quotient, freq));
    __mmask16 under = _mm512_cmpge_epu32_mask(remainder, freq); /* one too low */
    quotient = _mm512_mask_add_epi32(quotient, under, quotient, _mm512_set1_epi32(1));
    remainder = _mm512_mask_sub_epi32(remainder, under, remainder, freq);
    return _mm512_add_epi32(_mm512_add_epi32(_mm512_slli_epi32(quotient, RANS_PROB_BITS), remainder), cum);
}

/* The entries of a section whose symbols lie within 128 consecutive values, held in eight
 * registers: a lookup is four two-register permutes and three blends in place of a gather (on
 * AMD's Zen 4 a 16-lane gather takes 5.8-6.0 ns, however it is split; docs/kernels.md). Symbol 0
 * (zeros and the smallest subnormals) may lie outside the window, with an entry of its own. */
typedef struct {
    __m512i table[8];
    __m512i first; /* the window's first symbol */
    __m512i zero;  /* the entry of symbol 0, where it lies outside */
} entry_window;

/* How encode_pairs looks its entries up: gathered from the table, or from the window */
enum { GATHER, WINDOW, WINDOW_AND_ZERO };

static inline __m512i window_entries(const entry_window *window, __m512i symbol, const int zero_outside) {
    __m512i index = _mm512_sub_epi32(symbol, window->first);
    __m512i r0 = _mm512_permutex2var_epi32(window->table[0], index, window->table[1]);
    __m512i r1 = _mm512_permutex2var_epi32(window->table[2], index, window->table[3]);
    __m512i r2 = _mm512_permutex2var_epi32(window->table[4], index, window->table[5]);
    __m512i r3 = _mm512_permutex2var_epi32(window->table[6], index, window->table[7]);
    __mmask16 bit5 = _mm512_test_epi32_mask(index, _mm512_set1_epi32(32)), bit6 = _mm512_test_epi32_mask(index, _mm512_set1_epi32(64));
    __m512i entry = _mm512_mask_blend_epi32(bit6, _mm512_mask_blend_epi32(bit5, r0, r1), _mm512_mask_blend_epi32(bit5, r2, r3));
    return zero_outside ? _mm512_mask_mov_epi32(entry, _mm512_testn_epi32_mask(symbol, symbol), window->zero) : entry;
}

static inline __m512i entries_16(__m512i symbol, const uint32_t *by_symbol, const entry_window *window, const int lookup) {
    if (lookup == GATHER) return _mm512_i32gather_epi32(symbol, (const void *)by_symbol, 4);
    return window_entries(window, symbol, lookup == WINDOW_AND_ZERO);
}

/* One step of all lanes, from the last down, two groups of 16 at a time: both groups' entries are
 * looked up before either is encoded. One group at a time was 1.16-1.26x slower on an AMD EPYC
 * (Zen 5); four at a time, a few percent slower for BF16 and F16 and faster for F32
 * (docs/kernels.md). Lanes are a multiple of 32. */
static inline __attribute__((always_inline)) void encode_pairs(uint32_t *states, size_t lanes, const uint32_t *by_symbol,
                                                               const entry_window *window, const int lookup, const uint8_t *words,
                                                               int word_bytes, int is_float, __m128i shift, uint16_t **top) {
    for (size_t lane = lanes; lane > 0;) {
        lane -= 32;
        const uint8_t *p = words + lane * (size_t)word_bytes;
        _mm_prefetch((const char *)p - 2048, _MM_HINT_T0); /* the words run backwards: help the prefetcher */
        __m512i high_entry = entries_16(_mm512_srl_epi32(load_keys(p + 16 * word_bytes, word_bytes, is_float), shift), by_symbol, window, lookup);
        __m512i low_entry = entries_16(_mm512_srl_epi32(load_keys(p, word_bytes, is_float), shift), by_symbol, window, lookup);
        _mm512_storeu_si512(states + lane + 16, encode_16(_mm512_loadu_si512(states + lane + 16), high_entry, top));
        _mm512_storeu_si512(states + lane, encode_16(_mm512_loadu_si512(states + lane), low_entry, top));
    }
}

/* How a section's entries are to be looked up: WINDOW where the symbols that occur (their entries
 * are not 0) lie within 128 consecutive values, WINDOW_AND_ZERO where they do but for symbol 0,
 * with `window` filled then; else GATHER. */
static int lookup_for(const uint32_t *by_symbol, size_t n_symbols, entry_window *window) {
    size_t first = 0, last = n_symbols;
    while (first < n_symbols && !by_symbol[first]) first++;
    while (last > first && !by_symbol[last - 1]) last--;
    int lookup = WINDOW;
    if (last - first > 128 && first == 0) {
        lookup = WINDOW_AND_ZERO;
        for (first = 1; first < last && !by_symbol[first]; first++) {
        }
    }
    if (last - first > 128) return GATHER;
    uint32_t entries[128] = {0};
    memcpy(entries, by_symbol + first, (last - first) * sizeof(uint32_t));
    for (int t = 0; t < 8; t++) window->table[t] = _mm512_loadu_si512(entries + 16 * t);
    window->first = _mm512_set1_epi32((int)first);
    window->zero = _mm512_set1_epi32((int)by_symbol[0]);
    return lookup;
}

static void rans_encode(uint32_t *states, size_t lanes, const uint32_t *by_symbol, const uint8_t *words, size_t count, int word_bytes,
                        int is_float, int remainder_bits, uint16_t **top) {
    size_t steps = count / lanes;
    /* the last, partial step comes first */
    zoo_rans_encode_scalar(states, lanes, by_symbol, words + steps * lanes * (size_t)word_bytes, count - steps * lanes, word_bytes, is_float,
                           remainder_bits, top);
    if (!steps) return;
    const __m128i shift = _mm_cvtsi32_si128(remainder_bits);
    entry_window window = {{_mm512_setzero_si512()}, _mm512_setzero_si512(), _mm512_setzero_si512()}; /* used only where lookup_for fills it */
    int lookup = lookup_for(by_symbol, (size_t)1 << (8 * word_bytes - remainder_bits), &window);
    for (size_t step = steps; step-- > 0;) {
        const uint8_t *p = words + step * lanes * (size_t)word_bytes;
        switch (lookup) { /* one loop per way, each with its lookup inlined */
        case WINDOW: encode_pairs(states, lanes, by_symbol, &window, WINDOW, p, word_bytes, is_float, shift, top); break;
        case WINDOW_AND_ZERO: encode_pairs(states, lanes, by_symbol, &window, WINDOW_AND_ZERO, p, word_bytes, is_float, shift, top); break;
        default: encode_pairs(states, lanes, by_symbol, &window, GATHER, p, word_bytes, is_float, shift, top);
        }
    }
}

/* -- raw bits ----------------------------------------------------------------------------- */

/* 32 values of `width` <= 8 bits (16-bit lanes) packed LSB first: pairs merge into 32-bit lanes,
 * those into 64-bit lanes, then pairs of those into the even 64-bit lanes, which then hold eight
 * values, `width` whole bytes each; `gather` moves those bytes together. Returns 4 * width bytes
 * (in the low bytes). */
static inline __m512i pack_32(__m512i values, __m128i width, __m128i width2, __m128i width4, __m512i gather) {
    __m512i v = _mm512_or_si512(_mm512_and_si512(values, _mm512_set1_epi32(0xffff)), _mm512_sll_epi32(_mm512_srli_epi32(values, 16), width));
    v = _mm512_or_si512(_mm512_and_si512(v, _mm512_set1_epi64(0xffffffff)), _mm512_sll_epi64(_mm512_srli_epi64(v, 32), width2));
    v = _mm512_or_si512(v, _mm512_sll_epi64(_mm512_bsrli_epi128(v, 8), width4));
    return _mm512_permutexvar_epi8(gather, v);
}

/* 16 values of 9 to 24 bits (32-bit lanes) packed LSB first into 2 * width bytes: pairs merge
 * into 64-bit lanes of 2 * width bits, each shifted left to its bit offset within its first
 * output byte; the even lanes' bytes never share an output byte with each other (nor the odd
 * ones'), so two masked byte permutes place them and an OR joins them. */
static inline __m512i pack_16_wide(__m512i values, __m128i width, const __m512i gather[3], const __mmask64 keep[2]) {
    __m512i v = _mm512_or_si512(_mm512_and_si512(values, _mm512_set1_epi64(0xffffffff)), _mm512_sll_epi64(_mm512_srli_epi64(values, 32), width));
    v = _mm512_sllv_epi64(v, gather[2]);
    return _mm512_or_si512(_mm512_maskz_permutexvar_epi8(keep[0], gather[0], v), _mm512_maskz_permutexvar_epi8(keep[1], gather[1], v));
}

static void wide_pack_tables(int width, __m512i gather[3], __mmask64 keep[2]) {
    uint8_t index[2][64] = {{0}};
    uint64_t shifts[8];
    keep[0] = keep[1] = 0;
    for (int lane = 0; lane < 8; lane++) {
        int start = 2 * width * lane, first = start / 8, length = (start % 8 + 2 * width + 7) / 8;
        shifts[lane] = (uint64_t)(start % 8);
        for (int b = 0; b < length; b++) {
            index[lane & 1][first + b] = (uint8_t)(8 * lane + b);
            keep[lane & 1] |= 1ull << (first + b);
        }
    }
    gather[0] = _mm512_loadu_si512(index[0]);
    gather[1] = _mm512_loadu_si512(index[1]);
    gather[2] = _mm512_loadu_si512(shifts);
}

/* Whole blocks of 2- or 4-byte words go through pack_32 when their packed width is at most 8
 * bits, else (4-byte words) through pack_16_wide; the partial last block goes to the scalar code
 * (whole blocks end on a byte). */
static uint64_t pack_remainders(const uint8_t *words, size_t count, int word_bytes, int is_float, int remainder_bits, uint8_t *zeros,
                                uint8_t *packed) {
    if (word_bytes == 1 || remainder_bits == 0) return zoo_pack_remainders_scalar(words, count, word_bytes, is_float, remainder_bits, zeros, packed);
    int low_bits = is_float ? remainder_bits - 1 : remainder_bits;
    __m512i gathers[9];
    for (int width = 1; width <= 8; width++) {
        uint8_t index[64] = {0};
        for (int j = 0; j < 4 * width; j++) index[j] = (uint8_t)(16 * (j / width) + j % width);
        gathers[width] = _mm512_loadu_si512(index);
    }
    __m512i wide_gather[3] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512()}; /* even, odd lanes' bytes; shifts */
    __mmask64 wide_keep[2] = {0, 0};
    int wide_width = 0;
    uint64_t total_bits = 0;
    size_t block = 0, blocks = count / RANS_BLOCK;
    for (; block < blocks; block++) {
        const uint8_t *p = words + block * RANS_BLOCK * (size_t)word_bytes;
        __m512i rest[8]; /* the block's remainders: 4 registers of 16-bit lanes or 8 of 32-bit ones */
        __m512i seen = _mm512_setzero_si512();
        int registers = 2 * word_bytes;
        for (int k = 0; k < registers; k++) {
            __m512i key = _mm512_loadu_si512(p + 64 * k);
            if (word_bytes == 2) {
                if (is_float) key = _mm512_or_si512(_mm512_slli_epi16(key, 1), _mm512_srli_epi16(key, 15));
                rest[k] = _mm512_and_si512(key, _mm512_set1_epi16((short)((1u << remainder_bits) - 1)));
            } else {
                if (is_float) key = _mm512_rol_epi32(key, 1);
                rest[k] = _mm512_and_si512(key, _mm512_set1_epi32((int)((1ull << remainder_bits) - 1)));
            }
            seen = _mm512_or_si512(seen, rest[k]);
        }
        uint32_t any = (uint32_t)_mm512_reduce_or_epi32(seen);
        if (word_bytes == 2) any = (any | (any >> 16)) & 0xffff;
        any >>= is_float;
        int shared = any ? __builtin_ctz(any) : low_bits;
        if (shared > low_bits) shared = low_bits;
        int width = remainder_bits - shared;
        if (width > 8 && word_bytes == 2) { /* (2-byte words' remainders have at most 8 bits) */
            total_bits += zoo_pack_remainders_scalar(p, RANS_BLOCK, word_bytes, is_float, remainder_bits, zeros + block, packed + total_bits / 8);
            continue;
        }
        zeros[block] = (uint8_t)shared;
        if (width > 8) {
            if (width != wide_width) {
                wide_width = width;
                wide_pack_tables(width, wide_gather, wide_keep);
            }
            const __m128i drop = _mm_cvtsi32_si128(shared), w1 = _mm_cvtsi32_si128(width);
            uint8_t *out = packed + total_bits / 8;
            for (int k = 0; k < 8; k++) {
                __m512i r = rest[k];
                __m512i value = is_float ? _mm512_or_si512(_mm512_slli_epi32(_mm512_srl_epi32(_mm512_srli_epi32(r, 1), drop), 1),
                                                           _mm512_and_si512(r, _mm512_set1_epi32(1)))
                                         : _mm512_srl_epi32(r, drop);
                _mm512_storeu_si512(out + 2 * width * k, pack_16_wide(value, w1, wide_gather, wide_keep));
            }
            total_bits += (uint64_t)RANS_BLOCK * (uint64_t)width;
            continue;
        }
        const __m128i drop = _mm_cvtsi32_si128(shared), w1 = _mm_cvtsi32_si128(width), w2 = _mm_cvtsi32_si128(2 * width), w4 = _mm_cvtsi32_si128(4 * width);
        uint8_t *out = packed + total_bits / 8;
        for (int k = 0; k < 4; k++) {
            __m512i value;
            if (word_bytes == 2) {
                value = is_float ? _mm512_or_si512(_mm512_slli_epi16(_mm512_srl_epi16(_mm512_srli_epi16(rest[k], 1), drop), 1),
                                                   _mm512_and_si512(rest[k], _mm512_set1_epi16(1)))
                                 : _mm512_srl_epi16(rest[k], drop);
            } else { /* the values fit 8 bits once the zeros are gone: narrow to 16-bit lanes then */
                __m512i wide[2];
                for (int half = 0; half < 2; half++) {
                    __m512i r = rest[2 * k + half];
                    wide[half] = is_float ? _mm512_or_si512(_mm512_slli_epi32(_mm512_srl_epi32(_mm512_srli_epi32(r, 1), drop), 1),
                                                            _mm512_and_si512(r, _mm512_set1_epi32(1)))
                                          : _mm512_srl_epi32(r, drop);
                }
                value = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi32_epi16(wide[0])), _mm512_cvtepi32_epi16(wide[1]), 1);
            }
            _mm512_storeu_si512(out + 4 * width * k, pack_32(value, w1, w2, w4, gathers[width]));
        }
        total_bits += (uint64_t)RANS_BLOCK * (uint64_t)width;
    }
    if (block * RANS_BLOCK < count)
        total_bits += zoo_pack_remainders_scalar(words + block * RANS_BLOCK * (size_t)word_bytes, count - block * RANS_BLOCK, word_bytes, is_float,
                                                 remainder_bits, zeros + block, packed + total_bits / 8);
    return total_bits;
}

/* CRC-32 with VPCLMULQDQ: one 512-bit accumulator folds 64 bytes a step (four 128-bit lanes,
 * each 512 bits ahead: the constants of crc32_pclmul.c), then its lanes fold into one, and the
 * 128-bit code finishes. Below 256 bytes the 128-bit code alone is as fast. */
static uint32_t crc32(uint32_t crc, const uint8_t *data, size_t size) {
    if (size < 256) return zoo_crc32_pclmul(crc, data, size);
    const __m512i by512 = _mm512_broadcast_i32x4(_mm_set_epi64x(0x1c6e41596ll, 0x154442bd4ll));
    __m512i a = _mm512_xor_si512(_mm512_loadu_si512(data), _mm512_castsi128_si512(_mm_cvtsi32_si128((int)~crc)));
    for (data += 64, size -= 64; size >= 64; data += 64, size -= 64) {
        __m512i low = _mm512_clmulepi64_epi128(a, by512, 0x00), high = _mm512_clmulepi64_epi128(a, by512, 0x11);
        a = _mm512_ternarylogic_epi64(low, high, _mm512_loadu_si512(data), 0x96); /* three-way XOR */
    }
    /* lanes 0, 1, 2 are 384, 256 and 128 bits ahead of lane 3: x^(D+32) and x^(D-32) for each */
    const __m512i to_last = _mm512_set_epi64(0, 0, 0x0ccaa009ell, 0x1751997d0ll, 0x15a546366ll, 0x0f1da05aall, 0x174359406ll, 0x03db1ecdcll);
    __m512i low = _mm512_clmulepi64_epi128(a, to_last, 0x00), high = _mm512_clmulepi64_epi128(a, to_last, 0x11);
    __m512i moved = _mm512_mask_mov_epi64(_mm512_xor_si512(low, high), 0xc0, a); /* lane 3 stays as it is */
    __m256i halves = _mm256_xor_si256(_mm512_castsi512_si256(moved), _mm512_extracti64x4_epi64(moved, 1));
    __m128i last = _mm_xor_si128(_mm256_castsi256_si128(halves), _mm256_extracti128_si256(halves, 1));
    /* `last` stands for everything read so far as 16 bytes of a message whose CRC starts at 0 */
    uint8_t folded[16];
    _mm_storeu_si128((__m128i *)folded, last);
    return zoo_crc32_pclmul(zoo_crc32_scalar(0xffffffffu, folded, 16), data, size);
}

/* -- symbol ranges ------------------------------------------------------------------------ */

/* The symbols of 32 words as 16-bit lanes, in some order (only their extremes are wanted): a
 * 2- or 4-byte float's symbol is the field below its sign (it has fewer bits than the word), a
 * byte's the whole byte, rotated for FP8. */
static inline __m512i word_symbols_32(const uint8_t *p, int word_bytes, int is_float, __m128i field, __m512i mask) {
    if (word_bytes == 1) {
        __m512i byte = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)p));
        return is_float ? _mm512_and_si512(_mm512_or_si512(_mm512_slli_epi16(byte, 1), _mm512_srli_epi16(byte, 7)), mask) : byte;
    }
    if (word_bytes == 2) return _mm512_and_si512(_mm512_srl_epi16(_mm512_loadu_si512(p), field), mask);
    __m512i low = _mm512_srl_epi32(_mm512_loadu_si512(p), field), high = _mm512_srl_epi32(_mm512_loadu_si512(p + 64), field);
    return _mm512_packus_epi32(_mm512_and_si512(low, mask), _mm512_and_si512(high, mask));
}

static void symbol_range(const uint8_t *words, size_t count, int word_bytes, int is_float, int symbol_bits, zoo_symbol_range *range) {
    size_t i = 0;
    int shift = 8 * word_bytes - symbol_bits;
    __m128i field = _mm_cvtsi32_si128(is_float && shift ? shift - 1 : shift);
    __m512i mask = word_bytes == 4 ? _mm512_set1_epi32((1 << symbol_bits) - 1) : _mm512_set1_epi16((short)((1 << symbol_bits) - 1));
    __m512i low = _mm512_set1_epi16(-1), low_nonzero = low, high = _mm512_setzero_si512(), one = _mm512_set1_epi16(1);
    for (; i + 32 <= count; i += 32) {
        __m512i symbol = word_symbols_32(words + i * (size_t)word_bytes, word_bytes, is_float, field, mask);
        low = _mm512_min_epu16(low, symbol);
        low_nonzero = _mm512_min_epu16(low_nonzero, _mm512_sub_epi16(symbol, one)); /* 0 wraps to the top */
        high = _mm512_max_epu16(high, symbol);
    }
    if (i) {
        uint16_t lanes[3][32];
        _mm512_storeu_si512(lanes[0], low);
        _mm512_storeu_si512(lanes[1], low_nonzero);
        _mm512_storeu_si512(lanes[2], high);
        for (int k = 0; k < 32; k++) {
            if (lanes[0][k] < range->smallest) range->smallest = lanes[0][k];
            if (lanes[1][k] != 0xffff && lanes[1][k] + 1u < range->smallest_nonzero) range->smallest_nonzero = lanes[1][k] + 1u;
            if (lanes[2][k] > range->largest) range->largest = lanes[2][k];
        }
    }
    zoo_symbol_range_scalar(words + i * (size_t)word_bytes, count - i, word_bytes, is_float, symbol_bits, range);
}

/* 16 sums of a row, rounded to float (a NaN as 0x7fc00000), stored. */
static inline void store_sums16(__m512d low, __m512d high, float *out) {
    __m512 both = _mm512_insertf32x8(_mm512_castps256_ps512(_mm512_cvtpd_ps(low)), _mm512_cvtpd_ps(high), 1);
    __mmask16 nan = _mm512_cmp_ps_mask(both, both, _CMP_UNORD_Q);
    _mm512_storeu_ps(out, _mm512_mask_mov_ps(both, nan, _mm512_castsi512_ps(_mm512_set1_epi32(0x7fc00000))));
}

/* Tiles of 4 rows x 16 columns, their 64 sums in 8 registers while k runs (product.h). */
static void product(const float *left, const float *right, size_t rows, size_t rank, size_t cols, float *out) {
    size_t tiled_rows = rank == 0 ? 0 : rows - rows % 4, tiled_cols = cols - cols % 16, block = zoo_product_block(rank, 16);
    for (size_t first = 0; first < tiled_cols; first += block) {
        size_t last = first + block < tiled_cols ? first + block : tiled_cols;
        for (size_t r = 0; r < tiled_rows; r += 4) {
            const float *row0 = left + r * rank, *row1 = row0 + rank, *row2 = row1 + rank, *row3 = row2 + rank;
            for (size_t c = first; c < last; c += 16) {
                __m512d t0 = _mm512_cvtps_pd(_mm256_loadu_ps(right + c)), t1 = _mm512_cvtps_pd(_mm256_loadu_ps(right + c + 8));
                __m512d f = _mm512_set1_pd(row0[0]), a0 = _mm512_mul_pd(f, t0), a1 = _mm512_mul_pd(f, t1);
                f = _mm512_set1_pd(row1[0]);
                __m512d b0 = _mm512_mul_pd(f, t0), b1 = _mm512_mul_pd(f, t1);
                f = _mm512_set1_pd(row2[0]);
                __m512d c0 = _mm512_mul_pd(f, t0), c1 = _mm512_mul_pd(f, t1);
                f = _mm512_set1_pd(row3[0]);
                __m512d d0 = _mm512_mul_pd(f, t0), d1 = _mm512_mul_pd(f, t1);
                for (size_t k = 1; k < rank; k++) {
                    const float *term = right + k * cols + c;
                    t0 = _mm512_cvtps_pd(_mm256_loadu_ps(term));
                    t1 = _mm512_cvtps_pd(_mm256_loadu_ps(term + 8));
                    f = _mm512_set1_pd(row0[k]);
                    a0 = _mm512_fmadd_pd(f, t0, a0), a1 = _mm512_fmadd_pd(f, t1, a1);
                    f = _mm512_set1_pd(row1[k]);
                    b0 = _mm512_fmadd_pd(f, t0, b0), b1 = _mm512_fmadd_pd(f, t1, b1);
                    f = _mm512_set1_pd(row2[k]);
                    c0 = _mm512_fmadd_pd(f, t0, c0), c1 = _mm512_fmadd_pd(f, t1, c1);
                    f = _mm512_set1_pd(row3[k]);
                    d0 = _mm512_fmadd_pd(f, t0, d0), d1 = _mm512_fmadd_pd(f, t1, d1);
                }
                store_sums16(a0, a1, out + r * cols + c);
                store_sums16(b0, b1, out + (r + 1) * cols + c);
                store_sums16(c0, c1, out + (r + 2) * cols + c);
                store_sums16(d0, d1, out + (r + 3) * cols + c);
            }
        }
    }
    zoo_product_part(left, right, tiled_rows, rank, cols, tiled_cols, cols, out);  /* the columns past the tiles */
    zoo_product_part(left + tiled_rows * rank, right, rows - tiled_rows, rank, cols, 0, cols, out + tiled_rows * cols);  /* the rows */
}

/* The two AVX-512 tables differ only in how rANS decoding gathers its slots (gather_entries). */
#define AVX512_KERNELS(decode_steps)        \
    {                                       \
        .rans_decode_steps = decode_steps,  \
        .merge_words = merge_words,         \
        .split_planes = split_planes,       \
        .merge_planes = merge_planes,       \
        .philox_uniform = philox_uniform,   \
        .dequantize_rows = dequantize_rows, \
        .rans_encode = rans_encode,         \
        .pack_remainders = pack_remainders, \
        .symbol_range = symbol_range,       \
        .product = product,                 \
        .crc32 = crc32,                     \
    }

const zoo_kernels zoo_kernels_avx512 = AVX512_KERNELS(rans_decode_steps);
const zoo_kernels zoo_kernels_avx512_ymm = AVX512_KERNELS(rans_decode_steps_ymm); /* 8-lane gathers */
