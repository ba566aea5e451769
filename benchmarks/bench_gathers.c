/* How fast this CPU looks up 16 slots of a 16 KiB table (the rANS decoding table's size) in
 * each of the ways an AVX-512 kernel could: one 16-lane gather, two 8-lane ones, four 4-lane
 * ones, or 16 scalar loads. Eight independent lookups are in flight, as in the decoder's groups.
 * On a CPU without AVX-512 it times the AVX2 kernel's choices for 8 slots instead: one 8-lane
 * gather, two 4-lane ones, or 8 scalar loads.
 *
 *     gcc -O2 -march=native benchmarks/bench_gathers.c -o /tmp/bench_gathers && /tmp/bench_gathers
 *
 * docs/kernels.md quotes it: the reason the dispatcher gives AMD's CPUs the avx512-ymm table. */
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define SLOTS 4096
#ifndef CHAINS
#define CHAINS 8
#endif
#define ROUNDS 10000000L

static uint32_t table[SLOTS];
static volatile int sink; /* keeps the lookups' results alive */

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

#ifdef __AVX512F__
/* the next slots depend on the entries just read, so each chain waits for its own lookups */
static inline __m512i next_slots(__m512i entries) {
    const __m512i step = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    return _mm512_and_si512(_mm512_add_epi32(entries, step), _mm512_set1_epi32(SLOTS - 1));
}

static inline __m512i one_16(__m512i slot) { return _mm512_i32gather_epi32(slot, (const void *)table, 4); }

static inline __m512i two_8(__m512i slot) {
    __m256i low = _mm256_i32gather_epi32((const int *)table, _mm512_castsi512_si256(slot), 4);
    __m256i high = _mm256_i32gather_epi32((const int *)table, _mm512_extracti64x4_epi64(slot, 1), 4);
    return _mm512_inserti64x4(_mm512_castsi256_si512(low), high, 1);
}

static inline __m512i four_4(__m512i slot) {
    __m128i a = _mm_i32gather_epi32((const int *)table, _mm512_castsi512_si128(slot), 4);
    __m128i b = _mm_i32gather_epi32((const int *)table, _mm512_extracti32x4_epi32(slot, 1), 4);
    __m128i c = _mm_i32gather_epi32((const int *)table, _mm512_extracti32x4_epi32(slot, 2), 4);
    __m128i d = _mm_i32gather_epi32((const int *)table, _mm512_extracti32x4_epi32(slot, 3), 4);
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_inserti128_si256(_mm256_castsi128_si256(a), b, 1)),
                              _mm256_inserti128_si256(_mm256_castsi128_si256(c), d, 1), 1);
}

static inline __m512i scalar_16(__m512i slot) {
    uint32_t index[16] __attribute__((aligned(64))), entry[16] __attribute__((aligned(64)));
    _mm512_store_si512(index, slot);
    for (int k = 0; k < 16; k++) entry[k] = table[index[k]];
    return _mm512_load_si512(entry);
}

#define TIME(name, lookup)                                                                          \
    do {                                                                                            \
        __m512i x[CHAINS];                                                                          \
        for (int c = 0; c < CHAINS; c++) x[c] = _mm512_set1_epi32(c);                               \
        double start = now();                                                                       \
        for (long r = 0; r < ROUNDS; r++)                                                           \
            for (int c = 0; c < CHAINS; c++) x[c] = lookup(next_slots(x[c]));                       \
        double seconds = now() - start;                                                             \
        __m512i sum = x[0];                                                                         \
        for (int c = 1; c < CHAINS; c++) sum = _mm512_add_epi32(sum, x[c]);                         \
        sink = _mm512_reduce_add_epi32(sum);                                                        \
        printf("  %-26s %.2f ns per 16 slots\n", name, seconds / ROUNDS / CHAINS * 1e9);            \
    } while (0)

int main(void) {
    srand(1);
    for (int i = 0; i < SLOTS; i++) table[i] = (uint32_t)rand();
    for (int round = 1; round <= 3; round++) {
        printf("round %d\n", round);
        TIME("one 16-lane gather", one_16);
        TIME("two 8-lane gathers", two_8);
        TIME("four 4-lane gathers", four_4);
        TIME("16 scalar loads", scalar_16);
    }
    return 0;
}

#else

/* the next slots depend on the entries just read, so each chain waits for its own lookups */
static inline __m256i next_slots(__m256i entries) {
    const __m256i step = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_and_si256(_mm256_add_epi32(entries, step), _mm256_set1_epi32(SLOTS - 1));
}

static inline __m256i one_8(__m256i slot) { return _mm256_i32gather_epi32((const int *)table, slot, 4); }

static inline __m256i two_4(__m256i slot) {
    __m128i low = _mm_i32gather_epi32((const int *)table, _mm256_castsi256_si128(slot), 4);
    __m128i high = _mm_i32gather_epi32((const int *)table, _mm256_extracti128_si256(slot, 1), 4);
    return _mm256_inserti128_si256(_mm256_castsi128_si256(low), high, 1);
}

static inline __m256i scalar_8(__m256i slot) {
    uint32_t index[8] __attribute__((aligned(32))), entry[8] __attribute__((aligned(32)));
    _mm256_store_si256((__m256i *)index, slot);
    for (int k = 0; k < 8; k++) entry[k] = table[index[k]];
    return _mm256_load_si256((const __m256i *)entry);
}

/* the 8 entries put together in registers instead of through memory */
static inline __m256i inserted_8(__m256i slot) {
    uint32_t index[8] __attribute__((aligned(32)));
    _mm256_store_si256((__m256i *)index, slot);
    __m128i low = _mm_cvtsi32_si128((int)table[index[0]]), high = _mm_cvtsi32_si128((int)table[index[4]]);
    low = _mm_insert_epi32(low, (int)table[index[1]], 1);
    high = _mm_insert_epi32(high, (int)table[index[5]], 1);
    low = _mm_insert_epi32(low, (int)table[index[2]], 2);
    high = _mm_insert_epi32(high, (int)table[index[6]], 2);
    low = _mm_insert_epi32(low, (int)table[index[3]], 3);
    high = _mm_insert_epi32(high, (int)table[index[7]], 3);
    return _mm256_inserti128_si256(_mm256_castsi128_si256(low), high, 1);
}

#define TIME(name, lookup)                                                                          \
    do {                                                                                            \
        __m256i x[CHAINS];                                                                          \
        for (int c = 0; c < CHAINS; c++) x[c] = _mm256_set1_epi32(c);                              \
        double start = now();                                                                       \
        for (long r = 0; r < ROUNDS; r++)                                                           \
            for (int c = 0; c < CHAINS; c++) x[c] = lookup(next_slots(x[c]));                       \
        double seconds = now() - start;                                                             \
        __m256i sum = x[0];                                                                         \
        for (int c = 1; c < CHAINS; c++) sum = _mm256_add_epi32(sum, x[c]);                         \
        uint32_t lanes[8];                                                                          \
        _mm256_storeu_si256((__m256i *)lanes, sum);                                                 \
        sink = (int)(lanes[0] + lanes[7]);                                                          \
        printf("  %-26s %.2f ns per 8 slots\n", name, seconds / ROUNDS / CHAINS * 1e9);             \
    } while (0)

int main(void) {
    srand(1);
    for (int i = 0; i < SLOTS; i++) table[i] = (uint32_t)rand();
    for (int round = 1; round <= 3; round++) {
        printf("round %d (AVX2: this CPU or compiler has no AVX-512)\n", round);
        TIME("one 8-lane gather", one_8);
        TIME("two 4-lane gathers", two_4);
        TIME("8 scalar loads via memory", scalar_8);
        TIME("8 scalar loads, inserted", inserted_8);
    }
    return 0;
}
#endif
