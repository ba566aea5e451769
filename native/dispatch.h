#ifndef ZOO_DISPATCH_H
#define ZOO_DISPATCH_H

#include <stddef.h>

#include "kernels.h"

/* "scalar", "avx2" or "avx512": whether this CPU (and OS) runs that kernel table. */
int zoo_cpu_has(const char *isa);
/* The kernel tables by name: "scalar", "avx2", "avx2-loads" (the AVX2 table that looks rANS
 * decoding's slots up by scalar loads instead of gathers), "avx512", "avx512-ymm" (the AVX-512
 * table with 8-lane gathers in rANS decoding); ZOO_ISA_COUNT of them. */
#define ZOO_ISA_COUNT 5
extern const char *const zoo_isas[ZOO_ISA_COUNT];
/* The name of the table zoo uses when nothing is forced: the widest this CPU runs, and on AMD's
 * CPUs, whose gathers are slower, of the two AVX-512 tables the one with 8-lane gathers, of the
 * two AVX2 tables the one with scalar loads. */
const char *zoo_best_isa(void);
/* Names of the CPU features seen, for `zoo env`; returns how many were written. */
size_t zoo_cpu_features(const char **names, size_t capacity);
/* The kernel table for an ISA name, or NULL when this CPU cannot run it. */
const zoo_kernels *zoo_kernels_for(const char *isa);

#endif
