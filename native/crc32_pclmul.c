/* CRC-32 by carry-less multiplication (PCLMULQDQ, SSE4.1): this file alone is compiled with
 * those flags, and the AVX2 and AVX-512 tables (whose CPUs all have them) point to it.
 *
 * Folding: a 128-bit block A at distance D bits ahead of the message end contributes
 * A * x^D mod P, so A's two 64-bit halves are multiplied by x^(D+32) and x^(D-32) mod P (bit
 * reflected, as zlib's CRC is) and XORed into the block D bits further on; four accumulators
 * keep four multiplications in flight. The last 16-byte accumulator and the tail then go through
 * the scalar code, which needs no Barrett reduction constants and gives the same value. */
#include <immintrin.h>

#include "kernels.h"

/* x^n mod P, bit reflected, times x (a product of two reflected 64-bit halves is one bit short) */
#define FOLD_BY_512_LOW 0x154442bd4ull /* n = 544 */
#define FOLD_BY_512_HIGH 0x1c6e41596ull /* n = 480 */
#define FOLD_BY_128_LOW 0x1751997d0ull /* n = 160 */
#define FOLD_BY_128_HIGH 0x0ccaa009eull /* n = 96 */

static inline __m128i fold(__m128i accumulator, __m128i constants, __m128i next) {
    __m128i low = _mm_clmulepi64_si128(accumulator, constants, 0x00), high = _mm_clmulepi64_si128(accumulator, constants, 0x11);
    return _mm_xor_si128(_mm_xor_si128(low, high), next);
}

uint32_t zoo_crc32_pclmul(uint32_t crc, const uint8_t *data, size_t size) {
    if (size < 64) return zoo_crc32_scalar(crc, data, size);
    const __m128i by512 = _mm_set_epi64x((long long)FOLD_BY_512_HIGH, (long long)FOLD_BY_512_LOW);
    const __m128i by128 = _mm_set_epi64x((long long)FOLD_BY_128_HIGH, (long long)FOLD_BY_128_LOW);
    /* the running CRC enters as the message's first 32 bits XORed with it (the state is linear) */
    __m128i a0 = _mm_xor_si128(_mm_loadu_si128((const __m128i *)data), _mm_cvtsi32_si128((int)~crc));
    __m128i a1 = _mm_loadu_si128((const __m128i *)(data + 16)), a2 = _mm_loadu_si128((const __m128i *)(data + 32));
    __m128i a3 = _mm_loadu_si128((const __m128i *)(data + 48));
    for (data += 64, size -= 64; size >= 64; data += 64, size -= 64) {
        a0 = fold(a0, by512, _mm_loadu_si128((const __m128i *)data));
        a1 = fold(a1, by512, _mm_loadu_si128((const __m128i *)(data + 16)));
        a2 = fold(a2, by512, _mm_loadu_si128((const __m128i *)(data + 32)));
        a3 = fold(a3, by512, _mm_loadu_si128((const __m128i *)(data + 48)));
    }
    __m128i a = fold(fold(fold(a0, by128, a1), by128, a2), by128, a3);
    for (; size >= 16; data += 16, size -= 16) a = fold(a, by128, _mm_loadu_si128((const __m128i *)data));
    uint8_t folded[16];
    _mm_storeu_si128((__m128i *)folded, a);
    /* initial state 0 (the CRC already went in above): the scalar code's "crc" is its complement */
    return zoo_crc32_scalar(zoo_crc32_scalar(0xffffffffu, folded, 16), data, size);
}
