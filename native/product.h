/* The lowrank codec's product (docs/FORMAT.md): out (rows x cols) = left (rows x rank) times right
 * (rank x cols), float32 in and out. Each element's rank products are exact in double (24-bit
 * significands), summed in double in index order starting from the first (+0 for rank 0), and
 * rounded once to float; a NaN comes out as the one quiet NaN 0x7fc00000. Every step is a single
 * IEEE operation in a fixed order, so every compiler and instruction set gives the same bits, and
 * so does numpy (zoo/kernels/fallback.py): unlike a BLAS, whose order of summation depends on
 * the CPU it runs on. A product of two floats is exact in double, so a fused multiply-add gives
 * the same sum as a multiply and an add: the AVX2 and AVX-512 kernels tile the rows and columns
 * with FMAs (each element still summed in index order), the scalar one takes these helpers. */
#ifndef ZOO_PRODUCT_H
#define ZOO_PRODUCT_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* Columns per block: the block of `right` a pass over the rows reads (rank x this many floats)
 * stays in L2 (256 KiB), and is read once per tile of rows. */
static inline size_t zoo_product_block(size_t rank, size_t tile) {
    size_t block = rank ? (size_t)65536 / rank : (size_t)65536;
    block -= block % tile;
    return block < tile ? tile : block;
}

static inline float zoo_product_float(double sum) {
    const uint32_t nan_bits = 0x7fc00000u;
    float value = (float)sum, nan;
    memcpy(&nan, &nan_bits, 4);
    return value != value ? nan : value;
}

/* One element, in the reference order: the SIMD tiles keep it, and do the rest with this. */
static inline float zoo_product_one(const float *row, const float *right, size_t rank, size_t cols, size_t c) {
    double sum = rank == 0 ? 0.0 : (double)row[0] * (double)right[c];
    for (size_t k = 1; k < rank; k++) sum += (double)row[k] * (double)right[k * cols + c];
    return zoo_product_float(sum);
}

/* The elements of rows [0, rows) x columns [first, last) one at a time. */
static inline void zoo_product_part(const float *left, const float *right, size_t rows, size_t rank, size_t cols, size_t first,
                                    size_t last, float *out) {
    for (size_t r = 0; r < rows; r++)
        for (size_t c = first; c < last; c++) out[r * cols + c] = zoo_product_one(left + r * rank, right, rank, cols, c);
}

/* The scalar table's loop: a row's sums for 256 columns at a time, in L1. */
static inline void zoo_product_rows(const float *left, const float *right, size_t rows, size_t rank, size_t cols, float *out) {
    double sums[256];
    for (size_t first = 0; first < cols; first += 256) {
        size_t n = cols - first < 256 ? cols - first : 256;
        for (size_t r = 0; r < rows; r++) {
            const float *row = left + r * rank;
            if (rank == 0)
                for (size_t j = 0; j < n; j++) sums[j] = 0.0;
            else
                for (size_t j = 0; j < n; j++) sums[j] = (double)row[0] * (double)right[first + j];
            for (size_t k = 1; k < rank; k++) {
                const double factor = row[k];
                const float *term = right + k * cols + first;
                for (size_t j = 0; j < n; j++) sums[j] += factor * (double)term[j];
            }
            for (size_t j = 0; j < n; j++) out[r * cols + first + j] = zoo_product_float(sums[j]);
        }
    }
}

#endif
