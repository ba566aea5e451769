/* AVX2 kernels (with BMI2 and F16C). This file alone is compiled with those flags; the
 * dispatcher calls it only on a CPU that has them. Tails go to the scalar reference. */
#include <immintrin.h>
#include <string.h>

#include "kernels.h"
#include "product.h"

/* For each 8-lane refill mask, the byte permutation that moves word k (of those loaded) to the
 * k-th lane set in the mask: entry m, byte j = the number of lanes below j set in m. A 2 KiB
 * table in L1 is one load where computing it took three PDEPs and a multiply per group (and
 * PDEP is microcoded on AMD before Zen 3). */
static const uint64_t expand_bytes[256] = {
    0x0000000000000000ull, 0x0000000000000000ull, 0x0000000000000000ull, 0x0000000000000100ull,
    0x0000000000000000ull, 0x0000000000010000ull, 0x0000000000010000ull, 0x0000000000020100ull,
    0x0000000000000000ull, 0x0000000001000000ull, 0x0000000001000000ull, 0x0000000002000100ull,
    0x0000000001000000ull, 0x0000000002010000ull, 0x0000000002010000ull, 0x0000000003020100ull,
    0x0000000000000000ull, 0x0000000100000000ull, 0x0000000100000000ull, 0x0000000200000100ull,
    0x0000000100000000ull, 0x0000000200010000ull, 0x0000000200010000ull, 0x0000000300020100ull,
    0x0000000100000000ull, 0x0000000201000000ull, 0x0000000201000000ull, 0x0000000302000100ull,
    0x0000000201000000ull, 0x0000000302010000ull, 0x0000000302010000ull, 0x0000000403020100ull,
    0x0000000000000000ull, 0x0000010000000000ull, 0x0000010000000000ull, 0x0000020000000100ull,
    0x0000010000000000ull, 0x0000020000010000ull, 0x0000020000010000ull, 0x0000030000020100ull,
    0x0000010000000000ull, 0x0000020001000000ull, 0x0000020001000000ull, 0x0000030002000100ull,
    0x0000020001000000ull, 0x0000030002010000ull, 0x0000030002010000ull, 0x0000040003020100ull,
    0x0000010000000000ull, 0x0000020100000000ull, 0x0000020100000000ull, 0x0000030200000100ull,
    0x0000020100000000ull, 0x0000030200010000ull, 0x0000030200010000ull, 0x0000040300020100ull,
    0x0000020100000000ull, 0x0000030201000000ull, 0x0000030201000000ull, 0x0000040302000100ull,
    0x0000030201000000ull, 0x0000040302010000ull, 0x0000040302010000ull, 0x0000050403020100ull,
    0x0000000000000000ull, 0x0001000000000000ull, 0x0001000000000000ull, 0x0002000000000100ull,
    0x0001000000000000ull, 0x0002000000010000ull, 0x0002000000010000ull, 0x0003000000020100ull,
    0x0001000000000000ull, 0x0002000001000000ull, 0x0002000001000000ull, 0x0003000002000100ull,
    0x0002000001000000ull, 0x0003000002010000ull, 0x0003000002010000ull, 0x0004000003020100ull,
    0x0001000000000000ull, 0x0002000100000000ull, 0x0002000100000000ull, 0x0003000200000100ull,
    0x0002000100000000ull, 0x0003000200010000ull, 0x0003000200010000ull, 0x0004000300020100ull,
    0x0002000100000000ull, 0x0003000201000000ull, 0x0003000201000000ull, 0x0004000302000100ull,
    0x0003000201000000ull, 0x0004000302010000ull, 0x0004000302010000ull, 0x0005000403020100ull,
    0x0001000000000000ull, 0x0002010000000000ull, 0x0002010000000000ull, 0x0003020000000100ull,
    0x0002010000000000ull, 0x0003020000010000ull, 0x0003020000010000ull, 0x0004030000020100ull,
    0x0002010000000000ull, 0x0003020001000000ull, 0x0003020001000000ull, 0x0004030002000100ull,
    0x0003020001000000ull, 0x0004030002010000ull, 0x0004030002010000ull, 0x0005040003020100ull,
    0x0002010000000000ull, 0x0003020100000000ull, 0x0003020100000000ull, 0x0004030200000100ull,
    0x0003020100000000ull, 0x0004030200010000ull, 0x0004030200010000ull, 0x0005040300020100ull,
    0x0003020100000000ull, 0x0004030201000000ull, 0x0004030201000000ull, 0x0005040302000100ull,
    0x0004030201000000ull, 0x0005040302010000ull, 0x0005040302010000ull, 0x0006050403020100ull,
    0x0000000000000000ull, 0x0100000000000000ull, 0x0100000000000000ull, 0x0200000000000100ull,
    0x0100000000000000ull, 0x0200000000010000ull, 0x0200000000010000ull, 0x0300000000020100ull,
    0x0100000000000000ull, 0x0200000001000000ull, 0x0200000001000000ull, 0x0300000002000100ull,
    0x0200000001000000ull, 0x0300000002010000ull, 0x0300000002010000ull, 0x0400000003020100ull,
    0x0100000000000000ull, 0x0200000100000000ull, 0x0200000100000000ull, 0x0300000200000100ull,
    0x0200000100000000ull, 0x0300000200010000ull, 0x0300000200010000ull, 0x0400000300020100ull,
    0x0200000100000000ull, 0x0300000201000000ull, 0x0300000201000000ull, 0x0400000302000100ull,
    0x0300000201000000ull, 0x0400000302010000ull, 0x0400000302010000ull, 0x0500000403020100ull,
    0x0100000000000000ull, 0x0200010000000000ull, 0x0200010000000000ull, 0x0300020000000100ull,
    0x0200010000000000ull, 0x0300020000010000ull, 0x0300020000010000ull, 0x0400030000020100ull,
    0x0200010000000000ull, 0x0300020001000000ull, 0x0300020001000000ull, 0x0400030002000100ull,
    0x0300020001000000ull, 0x0400030002010000ull, 0x0400030002010000ull, 0x0500040003020100ull,
    0x0200010000000000ull, 0x0300020100000000ull, 0x0300020100000000ull, 0x0400030200000100ull,
    0x0300020100000000ull, 0x0400030200010000ull, 0x0400030200010000ull, 0x0500040300020100ull,
    0x0300020100000000ull, 0x0400030201000000ull, 0x0400030201000000ull, 0x0500040302000100ull,
    0x0400030201000000ull, 0x0500040302010000ull, 0x0500040302010000ull, 0x0600050403020100ull,
    0x0100000000000000ull, 0x0201000000000000ull, 0x0201000000000000ull, 0x0302000000000100ull,
    0x0201000000000000ull, 0x0302000000010000ull, 0x0302000000010000ull, 0x0403000000020100ull,
    0x0201000000000000ull, 0x0302000001000000ull, 0x0302000001000000ull, 0x0403000002000100ull,
    0x0302000001000000ull, 0x0403000002010000ull, 0x0403000002010000ull, 0x0504000003020100ull,
    0x0201000000000000ull, 0x0302000100000000ull, 0x0302000100000000ull, 0x0403000200000100ull,
    0x0302000100000000ull, 0x0403000200010000ull, 0x0403000200010000ull, 0x0504000300020100ull,
    0x0302000100000000ull, 0x0403000201000000ull, 0x0403000201000000ull, 0x0504000302000100ull,
    0x0403000201000000ull, 0x0504000302010000ull, 0x0504000302010000ull, 0x0605000403020100ull,
    0x0201000000000000ull, 0x0302010000000000ull, 0x0302010000000000ull, 0x0403020000000100ull,
    0x0302010000000000ull, 0x0403020000010000ull, 0x0403020000010000ull, 0x0504030000020100ull,
    0x0302010000000000ull, 0x0403020001000000ull, 0x0403020001000000ull, 0x0504030002000100ull,
    0x0403020001000000ull, 0x0504030002010000ull, 0x0504030002010000ull, 0x0605040003020100ull,
    0x0302010000000000ull, 0x0403020100000000ull, 0x0403020100000000ull, 0x0504030200000100ull,
    0x0403020100000000ull, 0x0504030200010000ull, 0x0504030200010000ull, 0x0605040300020100ull,
    0x0403020100000000ull, 0x0504030201000000ull, 0x0504030201000000ull, 0x0605040302000100ull,
    0x0504030201000000ull, 0x0605040302010000ull, 0x0605040302010000ull, 0x0706050403020100ull
};

static inline __m256i expand_indices(unsigned mask) { return _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)&expand_bytes[mask])); }

/* The first half of a rANS step of 8 lanes (group `g` of a block of DECODE_GROUPS): the states
 * before refills, and the ranks in bytes 4g..4g+3 of each 128-bit half of *ranks (lanes 0-3 in
 * the low half, 4-7 in the high one), so that a block's ranks are ORed together and stored by
 * one permute and one store instead of two extracts and two stores per group. */
static inline __m256i decode_8(__m256i x, __m256i entry, int g, __m256i *ranks) {
    const __m256i mask12 = _mm256_set1_epi32(RANS_TOTAL - 1);
    const __m256i top_bytes = _mm256_setr_epi8(3, 7, 11, 15, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                               3, 7, 11, 15, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
    __m256i picked = _mm256_shuffle_epi8(entry, top_bytes);
    switch (g) { /* the byte shift takes a constant: g is one once inlined */
    case 0: *ranks = picked; break;
    case 1: *ranks = _mm256_or_si256(*ranks, _mm256_bslli_epi128(picked, 4)); break;
    case 2: *ranks = _mm256_or_si256(*ranks, _mm256_bslli_epi128(picked, 8)); break;
    default: *ranks = _mm256_or_si256(*ranks, _mm256_bslli_epi128(picked, 12)); break;
    }
    __m256i freq = _mm256_and_si256(entry, mask12), bias = _mm256_and_si256(_mm256_srli_epi32(entry, 12), mask12);
    return _mm256_add_epi32(_mm256_mullo_epi32(freq, _mm256_srli_epi32(x, RANS_PROB_BITS)), bias);
}

/* A block's ranks in lane order: 32-bit pieces alternately from the two halves. */
static inline void store_ranks(__m256i ranks, uint8_t *out) {
    _mm256_storeu_si256((__m256i *)out, _mm256_permutevar8x32_epi32(ranks, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
}

/* The second half: lanes below RANS_LOW take the next 16-bit words, in lane order. This one
 * for groups at least 16 + 2 * 8 bytes from the end of the stream: no checks. */
static inline __m256i refill_8_far(__m256i x, const uint8_t **cursor) {
    __m256i refill_lanes = _mm256_cmpeq_epi32(_mm256_srli_epi32(x, 16), _mm256_setzero_si256()); /* x < 2^16 */
    unsigned refill = (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(refill_lanes));
    __m256i words = _mm256_permutevar8x32_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)*cursor)), expand_indices(refill));
    *cursor += 2 * (unsigned)__builtin_popcount(refill);
    return _mm256_blendv_epi8(x, _mm256_or_si256(_mm256_slli_epi32(x, 16), words), refill_lanes);
}

/* The same anywhere in the stream: reads only words that exist, and -1 where too few do. */
static inline int refill_8(__m256i *lanes, const uint8_t **cursor, const uint8_t *end) {
    __m256i x = *lanes;
    __m256i refill_lanes = _mm256_cmpeq_epi32(_mm256_srli_epi32(x, 16), _mm256_setzero_si256()); /* x < 2^16 */
    unsigned refill = (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(refill_lanes));
    unsigned n = (unsigned)__builtin_popcount(refill);
    const uint8_t *p = *cursor;
    if ((size_t)(end - p) < 2 * (size_t)n) return -1;
    __m128i packed;
    if (end - p >= 16) {
        packed = _mm_loadu_si128((const __m128i *)p);
    } else { /* near the end: read only the words that exist */
        uint8_t last[16] = {0};
        memcpy(last, p, 2 * (size_t)n);
        packed = _mm_loadu_si128((const __m128i *)last);
    }
    __m256i words = _mm256_permutevar8x32_epi32(_mm256_cvtepu16_epi32(packed), expand_indices(refill));
    *lanes = _mm256_blendv_epi8(x, _mm256_or_si256(_mm256_slli_epi32(x, 16), words), refill_lanes);
    *cursor = p + 2 * n;
    return 0;
}

/* The table entries of 8 lanes' slots (their states' low 12 bits), the states in memory: by one
 * 8-lane gather, or (`loads`) by 8 scalar loads put together in two 128-bit halves. On AMD's
 * AVX2-only cores (Zen 3) the gather is the dearer (benchmarks/bench_gathers.c; docs/kernels.md). */
static inline __m256i slots_8(const uint32_t *states, const uint32_t *table, int loads) {
    const uint32_t mask12 = RANS_TOTAL - 1;
    if (!loads)
        return _mm256_i32gather_epi32((const int *)table, _mm256_and_si256(_mm256_loadu_si256((const __m256i *)states), _mm256_set1_epi32((int)mask12)), 4);
    __m128i low = _mm_cvtsi32_si128((int)table[states[0] & mask12]), high = _mm_cvtsi32_si128((int)table[states[4] & mask12]);
    low = _mm_insert_epi32(low, (int)table[states[1] & mask12], 1);
    high = _mm_insert_epi32(high, (int)table[states[5] & mask12], 1);
    low = _mm_insert_epi32(low, (int)table[states[2] & mask12], 2);
    high = _mm_insert_epi32(high, (int)table[states[6] & mask12], 2);
    low = _mm_insert_epi32(low, (int)table[states[3] & mask12], 3);
    high = _mm_insert_epi32(high, (int)table[states[7] & mask12], 3);
    return _mm256_inserti128_si256(_mm256_castsi128_si256(low), high, 1);
}

/* Every group's table lookup first, four groups (32 lanes, RANS_MIN_LANES: every section's lane
 * count is a multiple) to a store of ranks, then the refills, which read the stream one group
 * after another: the gathers stay off that chain. Keeping a block of four groups in registers
 * through both halves, as kernels_avx512.c does, measured 5% slower here: the gathers of a whole
 * step no longer issued back to back. */
#define DECODE_GROUPS 4
static inline __attribute__((always_inline)) int decode_steps(uint32_t *states, size_t lanes, const uint32_t *table, const uint8_t **cursor,
                                                              const uint8_t *end, uint8_t *out, size_t steps, int loads) {
    const uint8_t *p = *cursor;
    for (size_t step = 0; step < steps; step++, out += lanes) {
        for (size_t lane = 0; lane < lanes; lane += 8 * DECODE_GROUPS) {
            __m256i ranks;
            for (int g = 0; g < DECODE_GROUPS; g++) {
                uint32_t *group = states + lane + 8 * g;
                _mm256_storeu_si256((__m256i *)group, decode_8(_mm256_loadu_si256((const __m256i *)group), slots_8(group, table, loads), g, &ranks));
            }
            store_ranks(ranks, out + lane);
        }
        _mm_prefetch((const char *)p + 2048, _MM_HINT_T0); /* a step reads up to 2 * lanes bytes of stream */
        _mm_prefetch((const char *)p + 2048 + 64 * (lanes / 64), _MM_HINT_T0);
        if ((size_t)(end - p) >= 2 * lanes + 16) { /* a step reads at most 2 bytes a lane */
            for (size_t lane = 0; lane < lanes; lane += 8)
                _mm256_storeu_si256((__m256i *)(states + lane), refill_8_far(_mm256_loadu_si256((const __m256i *)(states + lane)), &p));
            continue;
        }
        for (size_t lane = 0; lane < lanes; lane += 8) {
            __m256i x = _mm256_loadu_si256((const __m256i *)(states + lane));
            if (refill_8(&x, &p, end)) return -1;
            _mm256_storeu_si256((__m256i *)(states + lane), x);
        }
    }
    *cursor = p;
    return 0;
}

static int rans_decode_steps(uint32_t *states, size_t lanes, const uint32_t *table, const uint8_t **cursor, const uint8_t *end,
                             uint8_t *out, size_t steps) {
    return decode_steps(states, lanes, table, cursor, end, out, steps, 0);
}

static int rans_decode_steps_loads(uint32_t *states, size_t lanes, const uint32_t *table, const uint8_t **cursor, const uint8_t *end,
                                   uint8_t *out, size_t steps) {
    return decode_steps(states, lanes, table, cursor, end, out, steps, 1);
}

/* -- rANS encoding ------------------------------------------------------------------------ */

/* For each 8-lane mask, the permutation that moves the lanes set in it, in order, to the top
 * lanes (byte k: the lane that lands in lane k); a table in L1, as expand_bytes is for decoding,
 * where computing it took three PDEPs, a PEXT and a multiply per group. */
static const uint64_t compress_bytes[256] = {
    0x0000000000000000ull, 0x0000000000000000ull, 0x0100000000000000ull, 0x0100000000000000ull,
    0x0200000000000000ull, 0x0200000000000000ull, 0x0201000000000000ull, 0x0201000000000000ull,
    0x0300000000000000ull, 0x0300000000000000ull, 0x0301000000000000ull, 0x0301000000000000ull,
    0x0302000000000000ull, 0x0302000000000000ull, 0x0302010000000000ull, 0x0302010000000000ull,
    0x0400000000000000ull, 0x0400000000000000ull, 0x0401000000000000ull, 0x0401000000000000ull,
    0x0402000000000000ull, 0x0402000000000000ull, 0x0402010000000000ull, 0x0402010000000000ull,
    0x0403000000000000ull, 0x0403000000000000ull, 0x0403010000000000ull, 0x0403010000000000ull,
    0x0403020000000000ull, 0x0403020000000000ull, 0x0403020100000000ull, 0x0403020100000000ull,
    0x0500000000000000ull, 0x0500000000000000ull, 0x0501000000000000ull, 0x0501000000000000ull,
    0x0502000000000000ull, 0x0502000000000000ull, 0x0502010000000000ull, 0x0502010000000000ull,
    0x0503000000000000ull, 0x0503000000000000ull, 0x0503010000000000ull, 0x0503010000000000ull,
    0x0503020000000000ull, 0x0503020000000000ull, 0x0503020100000000ull, 0x0503020100000000ull,
    0x0504000000000000ull, 0x0504000000000000ull, 0x0504010000000000ull, 0x0504010000000000ull,
    0x0504020000000000ull, 0x0504020000000000ull, 0x0504020100000000ull, 0x0504020100000000ull,
    0x0504030000000000ull, 0x0504030000000000ull, 0x0504030100000000ull, 0x0504030100000000ull,
    0x0504030200000000ull, 0x0504030200000000ull, 0x0504030201000000ull, 0x0504030201000000ull,
    0x0600000000000000ull, 0x0600000000000000ull, 0x0601000000000000ull, 0x0601000000000000ull,
    0x0602000000000000ull, 0x0602000000000000ull, 0x0602010000000000ull, 0x0602010000000000ull,
    0x0603000000000000ull, 0x0603000000000000ull, 0x0603010000000000ull, 0x0603010000000000ull,
    0x0603020000000000ull, 0x0603020000000000ull, 0x0603020100000000ull, 0x0603020100000000ull,
    0x0604000000000000ull, 0x0604000000000000ull, 0x0604010000000000ull, 0x0604010000000000ull,
    0x0604020000000000ull, 0x0604020000000000ull, 0x0604020100000000ull, 0x0604020100000000ull,
    0x0604030000000000ull, 0x0604030000000000ull, 0x0604030100000000ull, 0x0604030100000000ull,
    0x0604030200000000ull, 0x0604030200000000ull, 0x0604030201000000ull, 0x0604030201000000ull,
    0x0605000000000000ull, 0x0605000000000000ull, 0x0605010000000000ull, 0x0605010000000000ull,
    0x0605020000000000ull, 0x0605020000000000ull, 0x0605020100000000ull, 0x0605020100000000ull,
    0x0605030000000000ull, 0x0605030000000000ull, 0x0605030100000000ull, 0x0605030100000000ull,
    0x0605030200000000ull, 0x0605030200000000ull, 0x0605030201000000ull, 0x0605030201000000ull,
    0x0605040000000000ull, 0x0605040000000000ull, 0x0605040100000000ull, 0x0605040100000000ull,
    0x0605040200000000ull, 0x0605040200000000ull, 0x0605040201000000ull, 0x0605040201000000ull,
    0x0605040300000000ull, 0x0605040300000000ull, 0x0605040301000000ull, 0x0605040301000000ull,
    0x0605040302000000ull, 0x0605040302000000ull, 0x0605040302010000ull, 0x0605040302010000ull,
    0x0700000000000000ull, 0x0700000000000000ull, 0x0701000000000000ull, 0x0701000000000000ull,
    0x0702000000000000ull, 0x0702000000000000ull, 0x0702010000000000ull, 0x0702010000000000ull,
    0x0703000000000000ull, 0x0703000000000000ull, 0x0703010000000000ull, 0x0703010000000000ull,
    0x0703020000000000ull, 0x0703020000000000ull, 0x0703020100000000ull, 0x0703020100000000ull,
    0x0704000000000000ull, 0x0704000000000000ull, 0x0704010000000000ull, 0x0704010000000000ull,
    0x0704020000000000ull, 0x0704020000000000ull, 0x0704020100000000ull, 0x0704020100000000ull,
    0x0704030000000000ull, 0x0704030000000000ull, 0x0704030100000000ull, 0x0704030100000000ull,
    0x0704030200000000ull, 0x0704030200000000ull, 0x0704030201000000ull, 0x0704030201000000ull,
    0x0705000000000000ull, 0x0705000000000000ull, 0x0705010000000000ull, 0x0705010000000000ull,
    0x0705020000000000ull, 0x0705020000000000ull, 0x0705020100000000ull, 0x0705020100000000ull,
    0x0705030000000000ull, 0x0705030000000000ull, 0x0705030100000000ull, 0x0705030100000000ull,
    0x0705030200000000ull, 0x0705030200000000ull, 0x0705030201000000ull, 0x0705030201000000ull,
    0x0705040000000000ull, 0x0705040000000000ull, 0x0705040100000000ull, 0x0705040100000000ull,
    0x0705040200000000ull, 0x0705040200000000ull, 0x0705040201000000ull, 0x0705040201000000ull,
    0x0705040300000000ull, 0x0705040300000000ull, 0x0705040301000000ull, 0x0705040301000000ull,
    0x0705040302000000ull, 0x0705040302000000ull, 0x0705040302010000ull, 0x0705040302010000ull,
    0x0706000000000000ull, 0x0706000000000000ull, 0x0706010000000000ull, 0x0706010000000000ull,
    0x0706020000000000ull, 0x0706020000000000ull, 0x0706020100000000ull, 0x0706020100000000ull,
    0x0706030000000000ull, 0x0706030000000000ull, 0x0706030100000000ull, 0x0706030100000000ull,
    0x0706030200000000ull, 0x0706030200000000ull, 0x0706030201000000ull, 0x0706030201000000ull,
    0x0706040000000000ull, 0x0706040000000000ull, 0x0706040100000000ull, 0x0706040100000000ull,
    0x0706040200000000ull, 0x0706040200000000ull, 0x0706040201000000ull, 0x0706040201000000ull,
    0x0706040300000000ull, 0x0706040300000000ull, 0x0706040301000000ull, 0x0706040301000000ull,
    0x0706040302000000ull, 0x0706040302000000ull, 0x0706040302010000ull, 0x0706040302010000ull,
    0x0706050000000000ull, 0x0706050000000000ull, 0x0706050100000000ull, 0x0706050100000000ull,
    0x0706050200000000ull, 0x0706050200000000ull, 0x0706050201000000ull, 0x0706050201000000ull,
    0x0706050300000000ull, 0x0706050300000000ull, 0x0706050301000000ull, 0x0706050301000000ull,
    0x0706050302000000ull, 0x0706050302000000ull, 0x0706050302010000ull, 0x0706050302010000ull,
    0x0706050400000000ull, 0x0706050400000000ull, 0x0706050401000000ull, 0x0706050401000000ull,
    0x0706050402000000ull, 0x0706050402000000ull, 0x0706050402010000ull, 0x0706050402010000ull,
    0x0706050403000000ull, 0x0706050403000000ull, 0x0706050403010000ull, 0x0706050403010000ull,
    0x0706050403020000ull, 0x0706050403020000ull, 0x0706050403020100ull, 0x0706050403020100ull
};

static inline __m256i compress_to_top(unsigned mask) { return _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)&compress_bytes[mask])); }

/* 8 words' keys in 32-bit lanes (floats rotated left one bit) */
static inline __m256i load_keys(const uint8_t *p, int word_bytes, int is_float) {
    __m256i key;
    if (word_bytes == 1) {
        uint64_t bytes;
        memcpy(&bytes, p, 8);
        key = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)bytes));
        return is_float ? _mm256_and_si256(_mm256_or_si256(_mm256_slli_epi32(key, 1), _mm256_srli_epi32(key, 7)), _mm256_set1_epi32(0xff)) : key;
    }
    if (word_bytes == 2) {
        key = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
        return is_float ? _mm256_and_si256(_mm256_or_si256(_mm256_slli_epi32(key, 1), _mm256_srli_epi32(key, 15)), _mm256_set1_epi32(0xffff)) : key;
    }
    key = _mm256_loadu_si256((const __m256i *)p);
    return is_float ? _mm256_or_si256(_mm256_slli_epi32(key, 1), _mm256_srli_epi32(key, 31)) : key;
}

/* The symbols of 8 words: their keys' top bits. A float's key is the word rotated left one bit,
 * but with a remainder below the symbol the sign lands in it, so the symbol is a plain field of
 * the word (two operations instead of five). */
static inline __m256i symbols_8(const uint8_t *p, int word_bytes, int is_float, int remainder_bits, __m128i shift) {
    if (!is_float || remainder_bits == 0) return _mm256_srl_epi32(load_keys(p, word_bytes, is_float), shift);
    __m256i word = load_keys(p, word_bytes, 0);
    uint32_t mask = (uint32_t)(0xffffffffu >> (32 - 8 * word_bytes)) >> remainder_bits;
    return _mm256_and_si256(_mm256_srl_epi32(word, _mm_cvtsi32_si128(remainder_bits - 1)), _mm256_set1_epi32((int)mask));
}

/* One encoding step of 8 lanes; the quotient as in kernels_avx512.c, here from a correctly
 * rounded single-precision division (x converted exactly rounded from its two halves). */
static inline __m256i encode_8(__m256i x, __m256i entry, uint16_t **top) {
    const __m256i mask12 = _mm256_set1_epi32(RANS_TOTAL - 1);
    __m256i freq = _mm256_and_si256(entry, mask12), cum = _mm256_srli_epi32(entry, RANS_PROB_BITS);
    __m256i bound = _mm256_slli_epi32(freq, 32 - RANS_PROB_BITS);
    __m256i emit_lanes = _mm256_cmpeq_epi32(_mm256_max_epu32(x, bound), x); /* x >= bound */
    unsigned emit = (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(emit_lanes));
    /* the emitting lanes' low halves, in lane order, end at *top; the lanes below them are scratch */
    const __m256i low_halves = _mm256_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, -1, -1, -1, -1, -1, -1, -1, -1,
                                                0, 1, 4, 5, 8, 9, 12, 13, -1, -1, -1, -1, -1, -1, -1, -1);
    __m256i pushed = _mm256_shuffle_epi8(_mm256_permutevar8x32_epi32(x, compress_to_top(emit)), low_halves);
    pushed = _mm256_permute4x64_epi64(pushed, _MM_SHUFFLE(3, 1, 2, 0));
    _mm_storeu_si128((__m128i *)(*top - 8), _mm256_castsi256_si128(pushed));
    *top -= __builtin_popcount(emit);
    x = _mm256_blendv_epi8(x, _mm256_srli_epi32(x, 16), emit_lanes);
    __m256 value = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(x, 16)), _mm256_set1_ps(65536.0f),
                                   _mm256_cvtepi32_ps(_mm256_and_si256(x, _mm256_set1_epi32(0xffff))));
    /* x < freq << 20 here, so x / freq < 2^20, and the rounded value and quotient are within 1/8
     * of it; a quarter less truncates to floor(x / freq) or one below, never above: only the
     * low estimate needs correcting. */
    __m256 estimate = _mm256_sub_ps(_mm256_div_ps(value, _mm256_cvtepi32_ps(freq)), _mm256_set1_ps(0.25f));
    __m256i quotient = _mm256_cvttps_epi32(estimate);
    __m256i remainder = _mm256_sub_epi32(x, _mm256_mullo_epi32(quotient, freq));
    __m256i under = _mm256_cmpgt_epi32(remainder, _mm256_sub_epi32(freq, _mm256_set1_epi32(1))); /* one too low */
    quotient = _mm256_sub_epi32(quotient, under);
    remainder = _mm256_sub_epi32(remainder, _mm256_and_si256(under, freq));
    return _mm256_add_epi32(_mm256_add_epi32(_mm256_slli_epi32(quotient, RANS_PROB_BITS), remainder), cum);
}

static void rans_encode(uint32_t *states, size_t lanes, const uint32_t *by_symbol, const uint8_t *words, size_t count, int word_bytes,
                        int is_float, int remainder_bits, uint16_t **top) {
    size_t steps = count / lanes;
    /* the last, partial step comes first */
    zoo_rans_encode_scalar(states, lanes, by_symbol, words + steps * lanes * (size_t)word_bytes, count - steps * lanes, word_bytes, is_float,
                           remainder_bits, top);
    const __m128i shift = _mm_cvtsi32_si128(remainder_bits);
    /* Four groups of 8 lanes at a time (lanes are a multiple of 32), from the last down: all four
     * groups' entries are gathered before any is encoded. One group at a time was 1.12-1.18x
     * slower on an AMD EPYC (Zen 5); two at a time, 1-2% faster than one (docs/kernels.md). */
    for (size_t step = steps; step-- > 0;)
        for (size_t lane = lanes; lane > 0;) {
            lane -= 32;
            const uint8_t *p = words + (step * lanes + lane) * (size_t)word_bytes;
            _mm_prefetch((const char *)p - 2048, _MM_HINT_T0); /* the words run backwards: help the prefetcher */
            __m256i entry[4];
            for (int g = 4; g-- > 0;)
                entry[g] = _mm256_i32gather_epi32((const int *)by_symbol, symbols_8(p + 8 * g * word_bytes, word_bytes, is_float, remainder_bits, shift), 4);
            __m256i *state = (__m256i *)(states + lane);
            for (int g = 4; g-- > 0;) _mm256_storeu_si256(state + g, encode_8(_mm256_loadu_si256(state + g), entry[g], top));
        }
}

/* -- raw bits ----------------------------------------------------------------------------- */

/* The remainders of 8 4-byte words: their low `remainder_bits` (floats rotated first). */
static inline __m256i remainders_8(const uint8_t *p, __m256i mask, int is_float) {
    __m256i key = _mm256_loadu_si256((const __m256i *)p);
    if (is_float) key = _mm256_or_si256(_mm256_slli_epi32(key, 1), _mm256_srli_epi32(key, 31));
    return _mm256_and_si256(key, mask);
}

/* 4-byte words (remainders of at most 24 bits: symbols keep 8), a block of 128 at a time: one
 * pass for the zeros the block's remainders share, a second (the block is in L1 by then) that
 * drops them, joins each pair of values into a 64-bit lane, and appends the pairs to a 64-bit
 * accumulator that is stored whole every time and moves on by the bytes it completed: no
 * branch on the fill, which the scalar packer's 22-bit F32 remainders mispredict. */
static uint64_t pack_remainders_4(const uint8_t *words, size_t count, int is_float, int remainder_bits, uint8_t *zeros, uint8_t *packed) {
    int low_bits = is_float ? remainder_bits - 1 : remainder_bits;
    const __m256i mask = _mm256_set1_epi32((int)((1ull << remainder_bits) - 1)), one = _mm256_set1_epi32(1);
    const __m256i low_half = _mm256_set1_epi64x(0xffffffff);
    uint64_t total_bits = 0;
    size_t block = 0, blocks = count / RANS_BLOCK;
    for (; block < blocks; block++) {
        const uint8_t *p = words + block * RANS_BLOCK * 4;
        __m256i seen = _mm256_setzero_si256();
        for (int k = 0; k < (int)RANS_BLOCK / 8; k++) seen = _mm256_or_si256(seen, remainders_8(p + 32 * k, mask, is_float));
        __m128i half = _mm_or_si128(_mm256_castsi256_si128(seen), _mm256_extracti128_si256(seen, 1));
        half = _mm_or_si128(half, _mm_srli_si128(half, 8));
        half = _mm_or_si128(half, _mm_srli_si128(half, 4));
        uint32_t any = (uint32_t)_mm_cvtsi128_si32(half) >> is_float;
        int shared = any ? __builtin_ctz(any) : low_bits;
        if (shared > low_bits) shared = low_bits;
        int width = remainder_bits - shared;
        zeros[block] = (uint8_t)shared;
        const __m128i drop = _mm_cvtsi32_si128(shared), w1 = _mm_cvtsi32_si128(width);
        uint8_t *out = packed + total_bits / 8; /* every block starts on a byte: 128 values */
        uint64_t accumulator = 0;
        unsigned filled = 0; /* below 8 between pairs: a pair of at most 48 bits always fits */
        for (int k = 0; k < (int)RANS_BLOCK / 8 && width; k++) {
            __m256i r = remainders_8(p + 32 * k, mask, is_float);
            __m256i value = is_float ? _mm256_or_si256(_mm256_slli_epi32(_mm256_srl_epi32(_mm256_srli_epi32(r, 1), drop), 1), _mm256_and_si256(r, one))
                                     : _mm256_srl_epi32(r, drop);
            __m256i pairs = _mm256_or_si256(_mm256_and_si256(value, low_half), _mm256_sll_epi64(_mm256_srli_epi64(value, 32), w1));
            uint64_t pair[4];
            _mm256_storeu_si256((__m256i *)pair, pairs);
            for (int j = 0; j < 4; j++) {
                accumulator |= pair[j] << filled;
                filled += 2 * (unsigned)width;
                memcpy(out, &accumulator, 8); /* the bytes past the last bit are scratch */
                out += filled >> 3;
                accumulator >>= filled & ~7u;
                filled &= 7;
            }
        }
        total_bits += (uint64_t)RANS_BLOCK * (uint64_t)width;
    }
    if (block * RANS_BLOCK < count)
        total_bits += zoo_pack_remainders_scalar(words + block * RANS_BLOCK * 4, count - block * RANS_BLOCK, 4, is_float, remainder_bits, zeros + block,
                                                 packed + total_bits / 8);
    return total_bits;
}

/* 4-byte words: pack_remainders_4. Whole blocks of 2-byte words whose packed width is at most 8
 * bits: 16 values of 16 bits merge pairwise into 32-, then 64-, then the low 64-bit half of each
 * 128-bit lane, which then holds eight values in `width` whole bytes, stored one lane after the
 * other. Other blocks and the partial last one go to the scalar code (whole blocks end on a byte). */
static uint64_t pack_remainders(const uint8_t *words, size_t count, int word_bytes, int is_float, int remainder_bits, uint8_t *zeros,
                                uint8_t *packed) {
    if (word_bytes == 4 && remainder_bits > 0 && remainder_bits <= 24) return pack_remainders_4(words, count, is_float, remainder_bits, zeros, packed);
    if (word_bytes != 2 || remainder_bits == 0) return zoo_pack_remainders_scalar(words, count, word_bytes, is_float, remainder_bits, zeros, packed);
    int low_bits = is_float ? remainder_bits - 1 : remainder_bits;
    const __m256i mask = _mm256_set1_epi16((short)((1u << remainder_bits) - 1));
    uint64_t total_bits = 0;
    size_t block = 0, blocks = count / RANS_BLOCK;
    for (; block < blocks; block++) {
        const uint8_t *p = words + block * RANS_BLOCK * 2;
        __m256i rest[8], seen = _mm256_setzero_si256();
        for (int k = 0; k < 8; k++) {
            __m256i key = _mm256_loadu_si256((const __m256i *)(p + 32 * k));
            if (is_float) key = _mm256_or_si256(_mm256_slli_epi16(key, 1), _mm256_srli_epi16(key, 15));
            rest[k] = _mm256_and_si256(key, mask);
            seen = _mm256_or_si256(seen, rest[k]);
        }
        __m128i half = _mm_or_si128(_mm256_castsi256_si128(seen), _mm256_extracti128_si256(seen, 1));
        half = _mm_or_si128(half, _mm_srli_si128(half, 8));
        half = _mm_or_si128(half, _mm_srli_si128(half, 4));
        half = _mm_or_si128(half, _mm_srli_si128(half, 2));
        uint32_t any = ((uint32_t)_mm_cvtsi128_si32(half) & 0xffff) >> is_float;
        int shared = any ? __builtin_ctz(any) : low_bits;
        if (shared > low_bits) shared = low_bits;
        int width = remainder_bits - shared;
        if (width > 8) {
            total_bits += zoo_pack_remainders_scalar(p, RANS_BLOCK, 2, is_float, remainder_bits, zeros + block, packed + total_bits / 8);
            continue;
        }
        zeros[block] = (uint8_t)shared;
        const __m128i drop = _mm_cvtsi32_si128(shared), w1 = _mm_cvtsi32_si128(width), w2 = _mm_cvtsi32_si128(2 * width), w4 = _mm_cvtsi32_si128(4 * width);
        uint8_t *out = packed + total_bits / 8;
        for (int k = 0; k < 8; k++, out += 2 * width) {
            __m256i v = is_float ? _mm256_or_si256(_mm256_slli_epi16(_mm256_srl_epi16(_mm256_srli_epi16(rest[k], 1), drop), 1),
                                                   _mm256_and_si256(rest[k], _mm256_set1_epi16(1)))
                                 : _mm256_srl_epi16(rest[k], drop);
            v = _mm256_or_si256(_mm256_and_si256(v, _mm256_set1_epi32(0xffff)), _mm256_sll_epi32(_mm256_srli_epi32(v, 16), w1));
            v = _mm256_or_si256(_mm256_and_si256(v, _mm256_set1_epi64x(0xffffffff)), _mm256_sll_epi64(_mm256_srli_epi64(v, 32), w2));
            v = _mm256_or_si256(v, _mm256_sll_epi64(_mm256_bsrli_epi128(v, 8), w4));
            _mm_storeu_si128((__m128i *)out, _mm256_castsi256_si128(v));
            _mm_storeu_si128((__m128i *)(out + width), _mm256_extracti128_si256(v, 1));
        }
        total_bits += (uint64_t)RANS_BLOCK * (uint64_t)width;
    }
    if (block * RANS_BLOCK < count)
        total_bits += zoo_pack_remainders_scalar(words + block * RANS_BLOCK * 2, count - block * RANS_BLOCK, 2, is_float, remainder_bits, zeros + block,
                                                 packed + total_bits / 8);
    return total_bits;
}

/* -- rebuilding words ---------------------------------------------------------------------- */

/* The key of 16 2-byte words from their placed symbols and the 16 raw-bit fields starting at
 * `bits` (16 fields of `width` <= 9 bits span 2 * width whole bytes): each half of the register
 * takes its 8 fields' bytes with one shuffle (8 fields span `width` whole bytes, so both halves
 * share the pattern); a multiply moves each field to the top, a shift down to bit 0. */
static inline __m256i key_16(__m256i symbol, const uint8_t *bits, int width, __m256i gather_bytes, __m256i multiplier, __m128i down,
                             __m128i put_back, int is_float) {
    __m256i source = _mm256_loadu2_m128i((const __m128i *)(bits + width), (const __m128i *)bits);
    __m256i value = _mm256_srl_epi16(_mm256_mullo_epi16(_mm256_shuffle_epi8(source, gather_bytes), multiplier), down);
    return is_float ? _mm256_or_si256(_mm256_or_si256(symbol, _mm256_sll_epi16(_mm256_srli_epi16(value, 1), put_back)), _mm256_slli_epi16(value, 15))
                    : _mm256_or_si256(symbol, _mm256_sll_epi16(value, put_back));
}

/* Up to 128 ranks' placed 16-bit symbols, for looking them up by byte shuffles instead of
 * gathers: table k holds ranks 16k..16k+15, their symbols' low bytes in the low half of the
 * register and their high bytes in the high half, each XORed with table k-1's bytes. A rank r of
 * group h shuffles every table k with index r - 16k: for k <= h that is r's place in table k; for
 * k > h it is negative, and a shuffle gives 0 for a negative index. XORing all the shuffles
 * leaves table h's own bytes (tables 0..h telescope), with no comparison or blend. */
typedef struct {
    __m256i table[8];
    int groups;
} shuffled_symbols;

static void shuffle_tables(const uint16_t placed[128], int used, shuffled_symbols *out) {
    out->groups = (used + 15) / 16;
    uint8_t bytes[32], before[32] = {0};
    for (int k = 0; k < out->groups; k++) {
        for (int j = 0; j < 16; j++) {
            uint8_t low = (uint8_t)placed[16 * k + j], high = (uint8_t)(placed[16 * k + j] >> 8);
            bytes[j] = low ^ before[j];
            bytes[16 + j] = high ^ before[16 + j];
            before[j] = low;
            before[16 + j] = high;
        }
        out->table[k] = _mm256_loadu_si256((const __m256i *)bytes);
    }
}

static inline __attribute__((always_inline)) __m256i symbols_16_shuffled(__m128i rank16, const shuffled_symbols *symbols) {
    __m256i rank = _mm256_broadcastsi128_si256(rank16);
    __m256i bytes = _mm256_shuffle_epi8(symbols->table[0], rank);
    for (int k = 1; k < symbols->groups; k++) {
        rank = _mm256_sub_epi8(rank, _mm256_set1_epi8(16));
        bytes = _mm256_xor_si256(bytes, _mm256_shuffle_epi8(symbols->table[k], rank));
    }
    /* low bytes of values 0-7, high bytes of 0-7 | of 8-15; then each value's two bytes together */
    bytes = _mm256_permute4x64_epi64(bytes, _MM_SHUFFLE(3, 1, 2, 0));
    const __m256i pair = _mm256_setr_epi8(0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15,
                                          0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15);
    return _mm256_shuffle_epi8(bytes, pair);
}

enum { BY_GATHER, BY_SHUFFLE, DIRECT };

/* The symbols of 16 ranks in 16-bit lanes, shifted (and, for floats, rotated) into place: from
 * `placed` by two gathers; for alphabets of up to 128 symbols (a float section's 80-120) by
 * shuffles (symbols_16_shuffled: 1.3x faster BF16 decoding on an AMD EPYC, whose gathers are
 * slow); or, when the ranks are the symbols (DIRECT), the rank bytes widened and shifted. */
static inline __attribute__((always_inline)) __m256i symbols_16(__m128i rank16, const uint32_t *placed, const shuffled_symbols *shuffled,
                                                                __m128i place, const int how) {
    if (how == DIRECT) return _mm256_sll_epi16(_mm256_cvtepu8_epi16(rank16), place);
    if (how == BY_SHUFFLE) return symbols_16_shuffled(rank16, shuffled);
    __m256i low = _mm256_i32gather_epi32((const int *)placed, _mm256_cvtepu8_epi32(rank16), 4);
    __m256i high = _mm256_i32gather_epi32((const int *)placed, _mm256_cvtepu8_epi32(_mm_srli_si128(rank16, 8)), 4);
    return _mm256_permute4x64_epi64(_mm256_packus_epi32(low, high), _MM_SHUFFLE(3, 1, 2, 0));
}

/* 2-byte words from ranks and raw bits of `width` <= 9, 16 values a step; returns how many.
 * Inlined once for each way of finding the symbols (`how`), so that no loop tests it. */
static inline __attribute__((always_inline)) size_t merge_16(const uint8_t *ranks, const uint32_t *placed, const shuffled_symbols *shuffled,
                                                             __m128i place, const uint8_t *bits, size_t count, int width, int zeros,
                                                             int is_float, uint8_t *out, const int how) {
    uint8_t byte_index[32];
    uint16_t to_top[16];
    for (int j = 0; j < 8; j++) {
        int position = j * width;
        byte_index[2 * j] = byte_index[16 + 2 * j] = (uint8_t)(position >> 3);
        byte_index[2 * j + 1] = byte_index[16 + 2 * j + 1] = (uint8_t)((position >> 3) + 1);
        to_top[j] = to_top[8 + j] = (uint16_t)(1u << (16 - (position & 7) - width));
    }
    const __m256i gather_bytes = _mm256_loadu_si256((const __m256i *)byte_index), multiplier = _mm256_loadu_si256((const __m256i *)to_top);
    const __m128i down = _mm_cvtsi32_si128(16 - width), put_back = _mm_cvtsi32_si128(zeros);
    size_t available = (count * (size_t)width + 7) / 8, i = 0;
    for (; i + 16 <= count && i * (size_t)width / 8 + (size_t)width + 16 <= available; i += 16) {
        const uint8_t *field = bits + i * (size_t)width / 8;
        _mm_prefetch((const char *)field + 1024, _MM_HINT_T0);
        __m256i symbol = symbols_16(_mm_loadu_si128((const __m128i *)(ranks + i)), placed, shuffled, place, how);
        _mm256_storeu_si256((__m256i *)(out + 2 * i), key_16(symbol, field, width, gather_bytes, multiplier, down, put_back, is_float));
    }
    return i;
}

/* 8 4-byte words from their placed symbols and the raw-bit fields at `bits` (see merge_8). */
static inline __attribute__((always_inline)) void words_8(__m256i symbol, const uint8_t *bits, size_t half_bytes, __m256i gather_bytes,
                                                          __m256i shifts, __m256i width_mask, __m128i put_back, int is_float, uint8_t *out) {
    __m256i source = _mm256_loadu2_m128i((const __m128i *)(bits + half_bytes), (const __m128i *)bits);
    __m256i value = _mm256_and_si256(_mm256_srlv_epi32(_mm256_shuffle_epi8(source, gather_bytes), shifts), width_mask);
    __m256i key = is_float ? _mm256_or_si256(_mm256_or_si256(symbol, _mm256_sll_epi32(_mm256_srli_epi32(value, 1), put_back)),
                                             _mm256_slli_epi32(value, 31))
                           : _mm256_or_si256(symbol, _mm256_sll_epi32(value, put_back));
    _mm256_storeu_si256((__m256i *)out, key);
}

/* 4-byte words from ranks and raw bits of `width` <= 25, 8 values a step (16 when the symbols
 * are looked up by shuffles, 16 ranks to a lookup; the tables then hold each placed symbol's top
 * 16 bits, as its low 16 are 0): each half of the register loads 16 bytes from where its first
 * value's byte is; a lane's 4 bytes then hold its value (at most 25 bits + 7 of offset), and a
 * variable shift brings it to bit 0. */
static inline __attribute__((always_inline)) size_t merge_8(const uint8_t *ranks, const uint32_t *placed, const shuffled_symbols *shuffled,
                                                            __m128i place, const uint8_t *bits, size_t count, int width, int zeros,
                                                            int is_float, uint8_t *out, const int how) {
    size_t half_bytes = (size_t)(4 * width) / 8;
    uint8_t byte_index[32];
    uint32_t shift[8];
    for (int j = 0; j < 8; j++) {
        int position = j * width - (j >= 4 ? 8 * (int)half_bytes : 0);
        for (int b = 0; b < 4; b++) byte_index[4 * j + b] = (uint8_t)((position >> 3) + b);
        shift[j] = (uint32_t)(position & 7);
    }
    const __m256i gather_bytes = _mm256_loadu_si256((const __m256i *)byte_index), shifts = _mm256_loadu_si256((const __m256i *)shift);
    const __m256i width_mask = _mm256_set1_epi32((int)((1u << width) - 1));
    const __m128i put_back = _mm_cvtsi32_si128(zeros);
    size_t available = (count * (size_t)width + 7) / 8, i = 0, offset = 0;
    if (how == BY_SHUFFLE) {
        for (; i + 16 <= count && offset + (size_t)width + half_bytes + 16 <= available; i += 16, offset += 2 * (size_t)width) {
            __m256i top = symbols_16_shuffled(_mm_loadu_si128((const __m128i *)(ranks + i)), shuffled);
            words_8(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm256_castsi256_si128(top)), 16), bits + offset, half_bytes, gather_bytes,
                    shifts, width_mask, put_back, is_float, out + 4 * i);
            words_8(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm256_extracti128_si256(top, 1)), 16), bits + offset + width, half_bytes,
                    gather_bytes, shifts, width_mask, put_back, is_float, out + 4 * (i + 8));
        }
        return i;
    }
    for (; i + 8 <= count && offset + half_bytes + 16 <= available; i += 8, offset += (size_t)width) {
        uint64_t rank8;
        memcpy(&rank8, ranks + i, 8);
        __m256i rank = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)rank8));
        __m256i symbol = how == DIRECT ? _mm256_sll_epi32(rank, place) : _mm256_i32gather_epi32((const int *)placed, rank, 4);
        words_8(symbol, bits + offset, half_bytes, gather_bytes, shifts, width_mask, put_back, is_float, out + 4 * i);
    }
    return i;
}

static void merge_words(const uint8_t *ranks, const uint16_t *symbol_of_rank, const uint8_t *bits, size_t count, int width,
                        int zeros, int remainder_bits, int word_bytes, int is_float, uint8_t *out) {
    size_t i = 0;
    const int shift = remainder_bits - (is_float ? 1 : 0);
    const __m128i place = _mm_cvtsi32_si128(shift);
    uint32_t placed[256]; /* symbols shifted (and, for floats, rotated) into place, for the gathers */
    /* the alphabet's size: its symbols are distinct and ascending, so only rank 0 can be 0 */
    int used = 256;
    while (used > 1 && symbol_of_rank && symbol_of_rank[used - 1] == 0) used--;
    if (word_bytes == 2 && width <= 9) {
        if (symbol_of_rank && used <= 128) {
            uint16_t placed16[128];
            for (int rank = 0; rank < 128; rank++) placed16[rank] = (uint16_t)(symbol_of_rank[rank] << shift);
            shuffled_symbols shuffled;
            shuffle_tables(placed16, used, &shuffled);
            i = merge_16(ranks, NULL, &shuffled, place, bits, count, width, zeros, is_float, out, BY_SHUFFLE);
        } else if (symbol_of_rank) {
            for (int rank = 0; rank < 256; rank++) placed[rank] = (uint32_t)(uint16_t)(symbol_of_rank[rank] << shift);
            i = merge_16(ranks, placed, NULL, place, bits, count, width, zeros, is_float, out, BY_GATHER);
        } else {
            i = merge_16(ranks, NULL, NULL, place, bits, count, width, zeros, is_float, out, DIRECT);
        }
        bits += i * (size_t)width / 8;
    } else if (word_bytes == 4 && width <= 25) {
        if (symbol_of_rank && used <= 128) {
            uint16_t top16[128]; /* symbols of at most 12 bits sit above bit 19 */
            for (int rank = 0; rank < 128; rank++) top16[rank] = (uint16_t)(((uint32_t)symbol_of_rank[rank] << shift) >> 16);
            shuffled_symbols shuffled;
            shuffle_tables(top16, used, &shuffled);
            i = merge_8(ranks, NULL, &shuffled, place, bits, count, width, zeros, is_float, out, BY_SHUFFLE);
        } else if (symbol_of_rank) {
            for (int rank = 0; rank < 256; rank++) placed[rank] = (uint32_t)symbol_of_rank[rank] << shift;
            i = merge_8(ranks, placed, NULL, place, bits, count, width, zeros, is_float, out, BY_GATHER);
        } else {
            i = merge_8(ranks, NULL, NULL, place, bits, count, width, zeros, is_float, out, DIRECT);
        }
        bits += i * (size_t)width / 8;
    }
    if (i < count) zoo_merge_words_scalar(ranks + i, symbol_of_rank, bits, count - i, width, zeros, remainder_bits, word_bytes, is_float, out + i * (size_t)word_bytes);
}

static void split_planes(const uint8_t *in, size_t count, int word_bytes, int rotate, uint8_t *const *planes) {
    size_t i = 0;
    if (word_bytes == 2) {
        /* per 128-bit lane: the 8 high bytes, then the 8 low bytes */
        const __m256i order = _mm256_setr_epi8(1, 3, 5, 7, 9, 11, 13, 15, 0, 2, 4, 6, 8, 10, 12, 14,
                                               1, 3, 5, 7, 9, 11, 13, 15, 0, 2, 4, 6, 8, 10, 12, 14);
        for (; i + 16 <= count; i += 16) {
            __m256i x = _mm256_loadu_si256((const __m256i *)(in + 2 * i));
            if (rotate) x = _mm256_or_si256(_mm256_slli_epi16(x, 1), _mm256_srli_epi16(x, 15));
            x = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(x, order), _MM_SHUFFLE(3, 1, 2, 0));
            _mm_storeu_si128((__m128i *)(planes[0] + i), _mm256_castsi256_si128(x));
            _mm_storeu_si128((__m128i *)(planes[1] + i), _mm256_extracti128_si256(x, 1));
        }
    } else if (word_bytes == 4) {
        /* per 128-bit lane: byte 3 of each word, then byte 2, 1, 0 */
        const __m256i order = _mm256_setr_epi8(3, 7, 11, 15, 2, 6, 10, 14, 1, 5, 9, 13, 0, 4, 8, 12,
                                               3, 7, 11, 15, 2, 6, 10, 14, 1, 5, 9, 13, 0, 4, 8, 12);
        const __m256i gather = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        for (; i + 8 <= count; i += 8) {
            __m256i x = _mm256_loadu_si256((const __m256i *)(in + 4 * i));
            if (rotate) x = _mm256_or_si256(_mm256_slli_epi32(x, 1), _mm256_srli_epi32(x, 31));
            x = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(x, order), gather);
            uint64_t plane_bytes[4];
            _mm256_storeu_si256((__m256i *)plane_bytes, x);
            for (int plane = 0; plane < 4; plane++) memcpy(planes[plane] + i, &plane_bytes[plane], 8);
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
        for (; i + 16 <= count; i += 16) {
            __m256i high = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(planes[0] + i)));
            __m256i low = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(planes[1] + i)));
            __m256i x = _mm256_or_si256(_mm256_slli_epi16(high, 8), low);
            if (rotate) x = _mm256_or_si256(_mm256_srli_epi16(x, 1), _mm256_slli_epi16(x, 15));
            _mm256_storeu_si256((__m256i *)(out + 2 * i), x);
        }
    } else if (word_bytes == 4) {
        for (; i + 8 <= count; i += 8) {
            __m256i x = _mm256_setzero_si256();
            for (int plane = 0; plane < 4; plane++) {
                uint64_t bytes;
                memcpy(&bytes, planes[plane] + i, 8);
                x = _mm256_or_si256(x, _mm256_slli_epi32(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)bytes)), 8 * (3 - plane)));
            }
            if (rotate) x = _mm256_or_si256(_mm256_srli_epi32(x, 1), _mm256_slli_epi32(x, 31));
            _mm256_storeu_si256((__m256i *)(out + 4 * i), x);
        }
    }
    if (i < count) {
        const uint8_t *rest[8];
        for (int plane = 0; plane < word_bytes; plane++) rest[plane] = planes[plane] + i;
        zoo_merge_planes_scalar(rest, count - i, word_bytes, rotate, out + i * (size_t)word_bytes);
    }
}

static inline void multiply_wide(__m256i a, uint32_t b, __m256i *high, __m256i *low) {
    const __m256i factor = _mm256_set1_epi64x(b);
    __m256i even = _mm256_mul_epu32(a, factor), odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), factor);
    *low = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xaa);
    *high = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xaa);
}

static void philox_uniform(uint64_t seed, uint64_t stream, uint64_t offset, size_t count, float *out) {
    size_t head = (size_t)((4 - (offset & 3)) & 3);
    if (head > count) head = count;
    zoo_philox_uniform_scalar(seed, stream, offset, head, out);
    size_t done = head;
    const __m256i lane_index = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i sign = _mm256_set1_epi32((int)0x80000000u);
    const __m256 scale = _mm256_set1_ps(1.0f / 8388608.0f), one = _mm256_set1_ps(1.0f);
    for (; done + 32 <= count; done += 32) {
        uint64_t block = (offset + done) >> 2;
        __m256i base = _mm256_set1_epi32((int)(uint32_t)block);
        __m256i c0 = _mm256_add_epi32(base, lane_index);
        /* unsigned c0 < base: the low word wrapped, so the high word carries one */
        __m256i carried = _mm256_cmpgt_epi32(_mm256_xor_si256(base, sign), _mm256_xor_si256(c0, sign));
        __m256i c1 = _mm256_sub_epi32(_mm256_set1_epi32((int)(uint32_t)(block >> 32)), carried);
        __m256i c2 = _mm256_set1_epi32((int)(uint32_t)stream), c3 = _mm256_set1_epi32((int)(uint32_t)(stream >> 32));
        uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
        for (int round = 0; round < 10; round++) {
            if (round) {
                k0 += 0x9E3779B9u;
                k1 += 0xBB67AE85u;
            }
            __m256i high0, low0, high1, low1;
            multiply_wide(c0, 0xD2511F53u, &high0, &low0);
            multiply_wide(c2, 0xCD9E8D57u, &high1, &low1);
            c0 = _mm256_xor_si256(_mm256_xor_si256(high1, c1), _mm256_set1_epi32((int)k0));
            c2 = _mm256_xor_si256(_mm256_xor_si256(high0, c3), _mm256_set1_epi32((int)k1));
            c1 = low1;
            c3 = low0;
        }
        __m256i t0 = _mm256_unpacklo_epi32(c0, c1), t1 = _mm256_unpackhi_epi32(c0, c1);
        __m256i t2 = _mm256_unpacklo_epi32(c2, c3), t3 = _mm256_unpackhi_epi32(c2, c3);
        /* per 128-bit lane: blocks (0,4) in u0, (1,5) in u1, (2,6) in u2, (3,7) in u3 */
        __m256i u0 = _mm256_unpacklo_epi64(t0, t2), u1 = _mm256_unpackhi_epi64(t0, t2);
        __m256i u2 = _mm256_unpacklo_epi64(t1, t3), u3 = _mm256_unpackhi_epi64(t1, t3);
        __m256i ordered[4] = {_mm256_permute2x128_si256(u0, u1, 0x20), _mm256_permute2x128_si256(u2, u3, 0x20),
                              _mm256_permute2x128_si256(u0, u1, 0x31), _mm256_permute2x128_si256(u2, u3, 0x31)};
        for (int k = 0; k < 4; k++) {
            __m256 value = _mm256_cvtepi32_ps(_mm256_srli_epi32(ordered[k], 8));
            _mm256_storeu_ps(out + done + 8 * k, _mm256_sub_ps(_mm256_mul_ps(value, scale), one));
        }
    }
    zoo_philox_uniform_scalar(seed, stream, offset + done, count - done, out + done);
}

static void dequantize_rows(const uint16_t *indices, size_t rows, size_t cols, const int32_t *row_codebook,
                            const float *codebooks, size_t codebook_size, int kind, void *out) {
    const __m256i ones = _mm256_set1_epi32(1);
    for (size_t r = 0; r < rows; r++) {
        const float *book = codebooks + (size_t)row_codebook[r] * codebook_size;
        const uint16_t *index = indices + r * cols;
        size_t c = 0;
        for (; c + 8 <= cols; c += 8) {
            __m256i position = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(index + c)));
            __m256 value = _mm256_i32gather_ps(book, position, 4);
            if (kind == 0) {
                _mm256_storeu_ps((float *)out + r * cols + c, value);
                continue;
            }
            __m256i bits = _mm256_castps_si256(value);
            __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(value, value, _CMP_UNORD_Q));
            __m256i result;
            if (kind == 2) {
                __m256i rounded = _mm256_srli_epi32(
                    _mm256_add_epi32(bits, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), _mm256_and_si256(_mm256_srli_epi32(bits, 16), ones))), 16);
                __m256i nan_bf16 = _mm256_or_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(0x40));
                result = _mm256_blendv_epi8(rounded, nan_bf16, nan);
            } else {
                result = _mm256_cvtepu16_epi32(_mm256_cvtps_ph(value, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
                __m256i payload = _mm256_and_si256(_mm256_srli_epi32(bits, 13), _mm256_set1_epi32(0x3ff));
                payload = _mm256_blendv_epi8(payload, ones, _mm256_cmpeq_epi32(payload, _mm256_setzero_si256()));
                __m256i nan_half = _mm256_or_si256(_mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(0x8000)),
                                                                   _mm256_set1_epi32(0x7c00)), payload);
                result = _mm256_blendv_epi8(result, nan_half, nan);
            }
            /* 32-bit lanes to 16 bits, in order */
            __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(result, result), _MM_SHUFFLE(3, 1, 2, 0));
            _mm_storeu_si128((__m128i *)((uint16_t *)out + r * cols + c), _mm256_castsi256_si128(packed));
        }
        if (c < cols) {
            void *rest = kind == 0 ? (void *)((float *)out + r * cols + c) : (void *)((uint16_t *)out + r * cols + c);
            zoo_dequantize_rows_scalar(index + c, 1, cols - c, row_codebook + r, codebooks, codebook_size, kind, rest);
        }
    }
}

/* -- symbol ranges ------------------------------------------------------------------------ */

/* The symbols of 16 words as 16-bit lanes, in some order (only their extremes are wanted): a
 * 2- or 4-byte float's symbol is the field below its sign (it has fewer bits than the word), a
 * byte's the whole byte, rotated for FP8. */
static inline __m256i word_symbols_16(const uint8_t *p, int word_bytes, int is_float, __m128i field, __m256i mask) {
    if (word_bytes == 1) {
        __m256i byte = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)p));
        return is_float ? _mm256_and_si256(_mm256_or_si256(_mm256_slli_epi16(byte, 1), _mm256_srli_epi16(byte, 7)), mask) : byte;
    }
    if (word_bytes == 2) return _mm256_and_si256(_mm256_srl_epi16(_mm256_loadu_si256((const __m256i *)p), field), mask);
    __m256i low = _mm256_srl_epi32(_mm256_loadu_si256((const __m256i *)p), field), high = _mm256_srl_epi32(_mm256_loadu_si256((const __m256i *)(p + 32)), field);
    return _mm256_packus_epi32(_mm256_and_si256(low, mask), _mm256_and_si256(high, mask));
}

static void symbol_range(const uint8_t *words, size_t count, int word_bytes, int is_float, int symbol_bits, zoo_symbol_range *range) {
    size_t i = 0;
    int shift = 8 * word_bytes - symbol_bits;
    __m128i field = _mm_cvtsi32_si128(is_float && shift ? shift - 1 : shift);
    __m256i mask = word_bytes == 4 ? _mm256_set1_epi32((1 << symbol_bits) - 1) : _mm256_set1_epi16((short)((1 << symbol_bits) - 1));
    __m256i low = _mm256_set1_epi16(-1), low_nonzero = low, high = _mm256_setzero_si256(), one = _mm256_set1_epi16(1);
    for (; i + 16 <= count; i += 16) {
        __m256i symbol = word_symbols_16(words + i * (size_t)word_bytes, word_bytes, is_float, field, mask);
        low = _mm256_min_epu16(low, symbol);
        low_nonzero = _mm256_min_epu16(low_nonzero, _mm256_sub_epi16(symbol, one)); /* 0 wraps to the top */
        high = _mm256_max_epu16(high, symbol);
    }
    if (i) {
        uint16_t lanes[3][16];
        _mm256_storeu_si256((__m256i *)lanes[0], low);
        _mm256_storeu_si256((__m256i *)lanes[1], low_nonzero);
        _mm256_storeu_si256((__m256i *)lanes[2], high);
        for (int k = 0; k < 16; k++) {
            if (lanes[0][k] < range->smallest) range->smallest = lanes[0][k];
            if (lanes[1][k] != 0xffff && lanes[1][k] + 1u < range->smallest_nonzero) range->smallest_nonzero = lanes[1][k] + 1u;
            if (lanes[2][k] > range->largest) range->largest = lanes[2][k];
        }
    }
    zoo_symbol_range_scalar(words + i * (size_t)word_bytes, count - i, word_bytes, is_float, symbol_bits, range);
}

/* 8 sums of a row, rounded to float (a NaN as 0x7fc00000), stored. */
static inline void store_sums8(__m256d low, __m256d high, float *out) {
    __m256 both = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm256_cvtpd_ps(low)), _mm256_cvtpd_ps(high), 1);
    __m256 nan = _mm256_cmp_ps(both, both, _CMP_UNORD_Q);
    _mm256_storeu_ps(out, _mm256_blendv_ps(both, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fc00000)), nan));
}

/* Tiles of 6 rows x 8 columns, their 48 sums in 12 registers while k runs (product.h). */
#define PRODUCT_START(n) f = _mm256_set1_pd(row[n][0]), s##n##0 = _mm256_mul_pd(f, t0), s##n##1 = _mm256_mul_pd(f, t1)
#define PRODUCT_STEP(n) f = _mm256_set1_pd(row[n][k]), s##n##0 = _mm256_fmadd_pd(f, t0, s##n##0), s##n##1 = _mm256_fmadd_pd(f, t1, s##n##1)

static void product(const float *left, const float *right, size_t rows, size_t rank, size_t cols, float *out) {
    size_t tiled_rows = rank == 0 ? 0 : rows - rows % 6, tiled_cols = cols - cols % 8, block = zoo_product_block(rank, 8);
    for (size_t first = 0; first < tiled_cols; first += block) {
        size_t last = first + block < tiled_cols ? first + block : tiled_cols;
        for (size_t r = 0; r < tiled_rows; r += 6) {
            const float *row[6];
            for (int i = 0; i < 6; i++) row[i] = left + (r + (size_t)i) * rank;
            for (size_t c = first; c < last; c += 8) {
                __m256d t0 = _mm256_cvtps_pd(_mm_loadu_ps(right + c)), t1 = _mm256_cvtps_pd(_mm_loadu_ps(right + c + 4)), f;
                __m256d s00, s01, s10, s11, s20, s21, s30, s31, s40, s41, s50, s51;
                PRODUCT_START(0);
                PRODUCT_START(1);
                PRODUCT_START(2);
                PRODUCT_START(3);
                PRODUCT_START(4);
                PRODUCT_START(5);
                for (size_t k = 1; k < rank; k++) {
                    const float *term = right + k * cols + c;
                    t0 = _mm256_cvtps_pd(_mm_loadu_ps(term));
                    t1 = _mm256_cvtps_pd(_mm_loadu_ps(term + 4));
                    PRODUCT_STEP(0);
                    PRODUCT_STEP(1);
                    PRODUCT_STEP(2);
                    PRODUCT_STEP(3);
                    PRODUCT_STEP(4);
                    PRODUCT_STEP(5);
                }
                float *target = out + r * cols + c;
                store_sums8(s00, s01, target);
                store_sums8(s10, s11, target + cols);
                store_sums8(s20, s21, target + 2 * cols);
                store_sums8(s30, s31, target + 3 * cols);
                store_sums8(s40, s41, target + 4 * cols);
                store_sums8(s50, s51, target + 5 * cols);
            }
        }
    }
    zoo_product_part(left, right, tiled_rows, rank, cols, tiled_cols, cols, out);  /* the columns past the tiles */
    zoo_product_part(left + tiled_rows * rank, right, rows - tiled_rows, rank, cols, 0, cols, out + tiled_rows * cols);  /* the rows */
}

#define AVX2_KERNELS(rans_steps)           \
    {                                       \
        .rans_decode_steps = rans_steps,    \
        .merge_words = merge_words,         \
        .split_planes = split_planes,       \
        .merge_planes = merge_planes,       \
        .philox_uniform = philox_uniform,   \
        .dequantize_rows = dequantize_rows, \
        .rans_encode = rans_encode,         \
        .pack_remainders = pack_remainders, \
        .symbol_range = symbol_range,       \
        .product = product,                 \
        .crc32 = zoo_crc32_pclmul,          \
    }

const zoo_kernels zoo_kernels_avx2 = AVX2_KERNELS(rans_decode_steps);
const zoo_kernels zoo_kernels_avx2_loads = AVX2_KERNELS(rans_decode_steps_loads); /* slots by scalar loads */
