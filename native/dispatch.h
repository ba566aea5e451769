#ifndef ZOO_DISPATCH_H
#define ZOO_DISPATCH_H

#include <stddef.h>

#include "kernels.h"

/* "scalar", "avx2" or "avx512": whether this CPU (and OS) runs that kernel table. */
int zoo_cpu_has(const char *isa);
/* Names of the CPU features seen, for `zoo env`; returns how many were written. */
size_t zoo_cpu_features(const char **names, size_t capacity);
/* The kernel table for an ISA name, or NULL when this CPU cannot run it. */
const zoo_kernels *zoo_kernels_for(const char *isa);

#endif
