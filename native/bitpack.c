/* Bit packing of codebook indices (bitpack.h). */
#include "bitpack.h"

#include <string.h>

size_t zoo_packed_size(size_t count, int bits) { return (count / 8) * (size_t)bits + ((count % 8) * (size_t)bits + 7) / 8; }

int zoo_pack_indices(const void *indices, size_t count, int item_bytes, int bits, uint8_t *out) {
    const uint8_t *bytes = indices;
    uint64_t accumulator = 0;
    uint32_t too_big = 0;
    int filled = 0;
    size_t written = 0;
    for (size_t i = 0; i < count; i++) {
        uint32_t value = item_bytes == 1 ? bytes[i] : (uint32_t)(bytes[2 * i] | (bytes[2 * i + 1] << 8));
        too_big |= value >> bits;
        /* filled < 8 here and value < 2^16, so nothing falls off the 64-bit accumulator */
        accumulator |= (uint64_t)value << filled;
        filled += bits;
        while (filled >= 8) {
            out[written++] = (uint8_t)accumulator;
            accumulator >>= 8;
            filled -= 8;
        }
    }
    if (filled) out[written] = (uint8_t)accumulator;
    return too_big != 0;
}

void zoo_unpack_range(const uint8_t *packed, int bits, size_t first, size_t count, uint16_t *out) {
    uint64_t bit = (uint64_t)first * (uint64_t)bits;
    uint32_t mask = (1u << bits) - 1;
    for (size_t i = 0; i < count; i++, bit += (uint64_t)bits) {
        size_t byte = (size_t)(bit >> 3);
        int shift = (int)(bit & 7);
        /* an index spans at most 3 bytes (16 bits + 7 of offset); read only the bytes it uses */
        int needed = (shift + bits + 7) >> 3;
        uint32_t window = 0;
        for (int k = 0; k < needed; k++) window |= (uint32_t)packed[byte + (size_t)k] << (8 * k);
        out[i] = (uint16_t)((window >> shift) & mask);
    }
}

void zoo_unpack_indices(const uint8_t *packed, int bits, size_t count, void *out) {
    uint8_t *bytes = out;
    uint16_t batch[4096]; /* on the stack: unpacking never allocates, so it cannot fail */
    for (size_t first = 0; first < count; first += 4096) {
        size_t n = count - first < 4096 ? count - first : 4096;
        zoo_unpack_range(packed, bits, first, n, batch);
        if (bits <= 8)
            for (size_t i = 0; i < n; i++) bytes[first + i] = (uint8_t)batch[i];
        else
            memcpy(bytes + 2 * first, batch, 2 * n); /* little-endian hosts only: see setup.py */
    }
}
