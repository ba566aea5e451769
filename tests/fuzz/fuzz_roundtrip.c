/* libFuzzer target: any words through the section encoder and back, through every kernel table.
 * Byte 0 picks the word size, float flag and symbol width; the rest are the words. Where byte 0's
 * top two bits are set and the size is divisible by 32, the words repeat to a section long enough
 * for sampled counting (coder.c, SAMPLE_FROM). The coded section must never be longer than
 * the raw words and a kind byte, must be the same bytes from the scalar table and one SIMD table
 * (chosen by the input's size: encoding costs most here, so two encodes per input), and must
 * decode exactly through every table. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "coder.h"
#include "dispatch.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    static const int WORD_BYTES[3] = {1, 2, 4};
    int word_bytes = WORD_BYTES[data[0] % 3], is_float = (data[0] >> 2) & 1, symbol_bits = 8 + ((data[0] >> 3) & 7);
    size_t count = (size - 1) / (size_t)word_bytes;
    const uint8_t *words = data + 1;
    uint8_t *repeated = NULL;
    /* one input in about 128: each costs as much as 100 short ones, and the fuzzer seeks them out
     * for their coverage (one in 32 made 400,000 inputs take 11.5 minutes instead of 3) */
    if ((data[0] >> 6) == 3 && size % 32 == 0 && count) {
        size_t given = count;
        count = 65536 + size % 61; /* a tail of up to 60 words past the vector loops and the sampled positions */
        repeated = malloc(count * (size_t)word_bytes);
        if (!repeated) return 0;
        for (size_t i = 0; i < count; i++) memcpy(repeated + i * (size_t)word_bytes, words + (i % given) * (size_t)word_bytes, (size_t)word_bytes);
        words = repeated;
    }
    size_t capacity = zoo_section_bound(count, word_bytes);
    uint8_t *coded = malloc(capacity), *again = malloc(capacity), *back = malloc(count * (size_t)word_bytes + 1);
    size_t length = zoo_encode_section(words, count, word_bytes, is_float, symbol_bits, coded, capacity, &zoo_kernels_scalar);
    if (length == 0 || length > capacity) abort();
    const zoo_kernels *simd[ZOO_ISA_COUNT];
    int n_simd = 0;
    for (int i = 1; i < ZOO_ISA_COUNT; i++)
        if (zoo_kernels_for(zoo_isas[i])) simd[n_simd++] = zoo_kernels_for(zoo_isas[i]);
    const zoo_kernels *other = n_simd ? simd[size % (size_t)n_simd] : &zoo_kernels_scalar;
    if (zoo_encode_section(words, count, word_bytes, is_float, symbol_bits, again, capacity, other) != length || memcmp(again, coded, length))
        abort();
    for (int i = 0; i < ZOO_ISA_COUNT; i++) {
        const zoo_kernels *kernels = zoo_kernels_for(zoo_isas[i]);
        if (!kernels) continue;
        const uint8_t *cursor = coded;
        if (zoo_decode_section(&cursor, coded + length, back, count, word_bytes, is_float, kernels)) abort();
        if (cursor != coded + length || memcmp(back, words, count * (size_t)word_bytes)) abort();
    }
    free(coded);
    free(again);
    free(back);
    free(repeated);
    return 0;
}
