/* libFuzzer target: any bytes to the section decoder, through every kernel table this CPU runs.
 * It must never crash or read out of bounds (ASan watches), and every table must reach the same
 * verdict and the same words. Input: byte 0 picks the word size and float flag, bytes 1-2 the
 * word count, the rest is the payload. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "coder.h"
#include "dispatch.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 3) return 0;
    static const int WORD_BYTES[3] = {1, 2, 4};
    int word_bytes = WORD_BYTES[data[0] % 3], is_float = (data[0] >> 2) & 1;
    size_t count = (size_t)data[1] | ((size_t)data[2] << 8);
    const uint8_t *payload = data + 3, *end = data + size;
    uint8_t *first = malloc(count * (size_t)word_bytes + 1), *other = malloc(count * (size_t)word_bytes + 1);
    const char *first_error = NULL;
    const uint8_t *first_end = NULL;
    for (int i = 0; i < ZOO_ISA_COUNT; i++) {
        const zoo_kernels *kernels = zoo_kernels_for(zoo_isas[i]);
        if (!kernels) continue;
        const uint8_t *cursor = payload;
        uint8_t *out = i == 0 ? first : other;
        const char *error = zoo_decode_section(&cursor, end, out, count, word_bytes, is_float, kernels);
        if (i == 0) {
            first_error = error;
            first_end = cursor;
        } else if ((error == NULL) != (first_error == NULL) || (!error && (cursor != first_end || memcmp(first, other, count * (size_t)word_bytes)))) {
            abort(); /* the kernel tables disagree */
        }
    }
    free(first);
    free(other);
    return 0;
}
