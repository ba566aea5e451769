/* Bit packing of codebook indices (the codebook and truncate codecs, docs/FORMAT.md): element i
 * takes bits [i * bits, (i + 1) * bits) of a little-endian bit stream, 1 <= bits <= 16, exactly as
 * the numpy fallback's pack_indices. Plain C for every CPU, outside the kernel tables; these
 * functions trust their arguments, which module.c checks (tests/fuzz/fuzz_bitpack.c fuzzes them). */
#ifndef ZOO_BITPACK_H
#define ZOO_BITPACK_H

#include <stddef.h>
#include <stdint.h>

/* Bytes that `count` indices of `bits` take: ceil(count * bits / 8), without overflow for
 * count <= SIZE_MAX / 16. */
size_t zoo_packed_size(size_t count, int bits);

/* Packs `count` indices of `item_bytes` (1 or 2; read unaligned, little-endian) into out, which
 * holds zoo_packed_size(count, bits) bytes. Returns 1 when an index does not fit in `bits` (out
 * is then meaningless), else 0. */
int zoo_pack_indices(const void *indices, size_t count, int item_bytes, int bits, uint8_t *out);

/* Indices first .. first + count - 1 of `packed` into out. Reads only the bytes those indices
 * occupy: packed needs zoo_packed_size(first + count, bits) bytes, not one more. */
void zoo_unpack_range(const uint8_t *packed, int bits, size_t first, size_t count, uint16_t *out);

/* Indices 0 .. count - 1 of `packed` into out: one byte each for bits <= 8, else two (written
 * unaligned, little-endian); the inverse of zoo_pack_indices. */
void zoo_unpack_indices(const uint8_t *packed, int bits, size_t count, void *out);

#endif
