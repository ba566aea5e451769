/* libFuzzer target: bit packing (native/bitpack.c), both ways on every input, each against a
 * bit-at-a-time reference. Every buffer handed over is a heap copy of exactly the size the
 * contract names, so ASan catches a read or write one byte past it.
 *
 * Input: byte 0 picks the width (bits 0-3: bits - 1) and the index size (bit 4: two bytes);
 * bytes 1 and 2 pick a range of indices; the rest is the payload, read twice:
 * - as a packed stream (garbage, odd lengths): unpacking any range that fits must read only the
 *   bytes of that range and give the reference's indices;
 * - as indices: packing must flag exactly the inputs with an index too wide, and otherwise write
 *   the reference's bytes (pad bits zero: archives are byte-for-byte reproducible), which unpack
 *   back to the indices. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bitpack.h"

/* exactly `size` bytes (ASan's malloc(0) is a block that no access may touch) */
static void *exact(size_t size) {
    void *block = malloc(size);
    if (!block && size) abort();
    return block;
}

static uint8_t *copy_of(const uint8_t *data, size_t size) {
    uint8_t *copy = exact(size);
    if (size) memcpy(copy, data, size);
    return copy;
}

/* The reference: indices 0 .. count - 1 of `packed`, assembled a bit at a time. */
static uint16_t *reference_indices(const uint8_t *packed, int bits, size_t count) {
    uint16_t *indices = exact(2 * count);
    uint64_t bit = 0;
    for (size_t i = 0; i < count; i++) {
        uint32_t value = 0;
        for (int k = 0; k < bits; k++, bit++) value |= (uint32_t)((packed[bit >> 3] >> (bit & 7)) & 1) << k;
        indices[i] = (uint16_t)value;
    }
    return indices;
}

static uint32_t index_at(const uint8_t *items, int item_bytes, size_t i) {
    return item_bytes == 1 ? items[i] : (uint32_t)(items[2 * i] | (items[2 * i + 1] << 8));
}

static void check_unpacking(const uint8_t *payload, size_t size, int bits, uint8_t first_choice, uint8_t count_choice) {
    size_t available = size * 8 / (size_t)bits;
    uint16_t *expected = reference_indices(payload, bits, available);

    size_t first = (size_t)(((uint64_t)available * first_choice) >> 8);
    size_t count = (available - first) * count_choice / 255;
    uint8_t *packed = copy_of(payload, zoo_packed_size(first + count, bits));
    uint16_t *range = exact(2 * count);
    zoo_unpack_range(packed, bits, first, count, range);
    for (size_t i = 0; i < count; i++)
        if (range[i] != expected[first + i]) abort();
    free(packed);
    free(range);

    /* the whole payload, as unpack_indices sees it: one or two bytes an index */
    int out_bytes = bits <= 8 ? 1 : 2;
    packed = copy_of(payload, zoo_packed_size(available, bits));
    uint8_t *out = exact(available * (size_t)out_bytes);
    zoo_unpack_indices(packed, bits, available, out);
    for (size_t i = 0; i < available; i++)
        if (index_at(out, out_bytes, i) != expected[i]) abort();
    free(packed);
    free(out);
    free(expected);
}

static void check_packing(const uint8_t *payload, size_t size, int bits, int item_bytes) {
    size_t count = size / (size_t)item_bytes, packed_size = zoo_packed_size(count, bits);
    uint8_t *items = copy_of(payload, count * (size_t)item_bytes);
    int too_wide = 0;
    for (size_t i = 0; i < count; i++) too_wide |= (index_at(items, item_bytes, i) >> bits) != 0;
    uint8_t *packed = exact(packed_size);
    if (zoo_pack_indices(items, count, item_bytes, bits, packed) != too_wide) abort();

    /* the same indices cut to `bits`, which must pack to the reference's bytes and come back */
    uint32_t mask = (1u << bits) - 1;
    uint8_t *expected = exact(packed_size);
    if (packed_size) memset(expected, 0, packed_size);
    for (size_t i = 0; i < count; i++) {
        uint32_t value = index_at(items, item_bytes, i) & mask;
        if (item_bytes == 1) items[i] = (uint8_t)value;
        else {
            items[2 * i] = (uint8_t)value;
            items[2 * i + 1] = (uint8_t)(value >> 8);
        }
        for (int k = 0; k < bits; k++) {
            uint64_t bit = (uint64_t)i * (uint64_t)bits + (uint64_t)k;
            expected[bit >> 3] |= (uint8_t)(((value >> k) & 1) << (bit & 7));
        }
    }
    if (zoo_pack_indices(items, count, item_bytes, bits, packed)) abort();
    if (packed_size && memcmp(packed, expected, packed_size)) abort();
    int out_bytes = bits <= 8 ? 1 : 2;
    uint8_t *back = exact(count * (size_t)out_bytes);
    zoo_unpack_indices(packed, bits, count, back);
    for (size_t i = 0; i < count; i++)
        if (index_at(back, out_bytes, i) != index_at(items, item_bytes, i)) abort();
    free(items);
    free(packed);
    free(expected);
    free(back);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 3) return 0;
    int bits = (data[0] & 15) + 1, item_bytes = (data[0] >> 4) & 1 ? 2 : 1;
    check_unpacking(data + 3, size - 3, bits, data[1], data[2]);
    check_packing(data + 3, size - 3, bits, item_bytes);
    return 0;
}
