/* The entropy coder: sections of words coded by an order-0 rANS symbol model plus raw bits.
 * Stream format: docs/FORMAT.md ("fprans" and "rans"). */
#ifndef ZOO_CODER_H
#define ZOO_CODER_H

#include <stddef.h>
#include <stdint.h>

#include "kernels.h"

/* A section of `count` words of `word_bytes` (1, 2 or 4). `is_float`: the words are floats,
 * rotated left one bit before modelling. `symbol_bits`: how many top bits of each (rotated)
 * word the rANS model codes jointly; the rest are packed raw, minus trailing zero bits shared
 * by each block of 128 words. Returns the coded size, or 0 when `capacity` is too small.
 * Every kernel table writes the same bytes. */
size_t zoo_encode_section(const uint8_t *words, size_t count, int word_bytes, int is_float, int symbol_bits,
                          uint8_t *out, size_t capacity, const zoo_kernels *kernels);

/* Decodes one section from [*cursor, end) into out (count * word_bytes bytes) and advances
 * *cursor. Returns NULL, or a message naming what is wrong with the payload. */
const char *zoo_decode_section(const uint8_t **cursor, const uint8_t *end, uint8_t *out, size_t count,
                               int word_bytes, int is_float, const zoo_kernels *kernels);

/* A capacity that always suffices for zoo_encode_section of `count` words. */
size_t zoo_section_bound(size_t count, int word_bytes);

#endif
