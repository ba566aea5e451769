/* The lowrank codec's product (docs/FORMAT.md): out (rows x cols) = left (rows x rank) times right
 * (rank x cols), float32 in and out. Each element's rank products are exact in double (24-bit
 * significands), summed in double in index order starting from the first (+0 for rank 0), and
 * rounded once to float; a NaN comes out as the one quiet NaN 0x7fc00000. Every step is a single
 * IEEE operation in a fixed order, so every compiler and instruction set gives the same bits, and
 * so does numpy (zoo/kernels/fallback.py): unlike a BLAS, whose order of summation depends on
 * the CPU it runs on. Each kernel file includes this, so each compiles it with its own vector
 * width. */
#ifndef ZOO_PRODUCT_H
#define ZOO_PRODUCT_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define ZOO_PRODUCT_BLOCK 256 /* columns a row works on at a time: their sums stay in L1 */

static inline void zoo_product_rows(const float *left, const float *right, size_t rows, size_t rank, size_t cols, float *out) {
    double sums[ZOO_PRODUCT_BLOCK];
    const uint32_t nan_bits = 0x7fc00000u;
    float nan;
    memcpy(&nan, &nan_bits, 4);
    for (size_t first = 0; first < cols; first += ZOO_PRODUCT_BLOCK) {
        size_t n = cols - first < ZOO_PRODUCT_BLOCK ? cols - first : ZOO_PRODUCT_BLOCK;
        for (size_t r = 0; r < rows; r++) {
            const float *row = left + r * rank;
            if (rank == 0)
                for (size_t j = 0; j < n; j++) sums[j] = 0.0;
            else {
                const double factor = row[0];
                const float *term = right + first;
                for (size_t j = 0; j < n; j++) sums[j] = factor * (double)term[j];
            }
            for (size_t k = 1; k < rank; k++) {
                const double factor = row[k];
                const float *term = right + k * cols + first;
                for (size_t j = 0; j < n; j++) sums[j] += factor * (double)term[j];
            }
            float *target = out + r * cols + first;
            for (size_t j = 0; j < n; j++) {
                float value = (float)sums[j];
                target[j] = value != value ? nan : value;
            }
        }
    }
}

#endif
