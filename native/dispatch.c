/* Run-time CPU detection, once; the module then calls kernels through the chosen table only. */
#include "dispatch.h"

#include <string.h>

#if defined(__x86_64__) || defined(_M_X64)
#define ZOO_X86 1
#endif

int zoo_cpu_has(const char *feature) {
#ifdef ZOO_X86
    __builtin_cpu_init();
    /* __builtin_cpu_supports also asks the OS (XGETBV) whether it saves the wide registers. */
    if (!strcmp(feature, "avx2"))
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("f16c");
    if (!strcmp(feature, "avx512"))
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vbmi") && __builtin_cpu_supports("bmi2");
#endif
    return !strcmp(feature, "scalar");
}

static const char *const FEATURES[] = {"sse4.2", "avx", "avx2", "bmi2", "fma", "f16c", "avx512f", "avx512bw",
                                       "avx512vl", "avx512dq", "avx512vbmi", "avx512vbmi2", "avx512bf16", "avx512fp16"};

size_t zoo_cpu_features(const char **names, size_t capacity) {
    size_t found = 0;
#ifdef ZOO_X86
    __builtin_cpu_init();
    /* __builtin_cpu_supports needs a literal, hence the table of tests. */
    int present[] = {
        __builtin_cpu_supports("sse4.2"),   __builtin_cpu_supports("avx"),        __builtin_cpu_supports("avx2"),
        __builtin_cpu_supports("bmi2"),     __builtin_cpu_supports("fma"),        __builtin_cpu_supports("f16c"),
        __builtin_cpu_supports("avx512f"),  __builtin_cpu_supports("avx512bw"),   __builtin_cpu_supports("avx512vl"),
        __builtin_cpu_supports("avx512dq"), __builtin_cpu_supports("avx512vbmi"), __builtin_cpu_supports("avx512vbmi2"),
        __builtin_cpu_supports("avx512bf16"), __builtin_cpu_supports("avx512fp16"),
    };
    for (size_t i = 0; i < sizeof(present) / sizeof(present[0]) && found < capacity; i++)
        if (present[i]) names[found++] = FEATURES[i];
#else
    (void)names;
    (void)capacity;
    (void)FEATURES;
#endif
    return found;
}

const zoo_kernels *zoo_kernels_for(const char *isa) {
    if (!strcmp(isa, "scalar")) return &zoo_kernels_scalar;
#ifdef ZOO_X86
    if (!strcmp(isa, "avx2") && zoo_cpu_has("avx2")) return &zoo_kernels_avx2;
    if (!strcmp(isa, "avx512") && zoo_cpu_has("avx512")) return &zoo_kernels_avx512;
#endif
    return NULL;
}
