/* Run-time CPU detection, once; the module then calls kernels through the chosen table only.
 * CPUID says what the CPU has, XGETBV whether the OS saves the wide registers it needs. */
#include "dispatch.h"

#include <string.h>

#if defined(__x86_64__) || defined(_M_X64)
#define ZOO_X86 1
#include <cpuid.h>

enum { EAX, EBX, ECX, EDX }; /* cpuid's output registers, in the order cpu_bit stores them */

typedef struct {
    const char *name;
    int leaf, subleaf, reg, bit;
} feature_bit;

static const feature_bit FEATURES[] = {
    {.name = "sse4.2",      .leaf = 1, .subleaf = 0, .reg = ECX, .bit = 20},
    {.name = "avx",         .leaf = 1, .subleaf = 0, .reg = ECX, .bit = 28},
    {.name = "fma",         .leaf = 1, .subleaf = 0, .reg = ECX, .bit = 12},
    {.name = "f16c",        .leaf = 1, .subleaf = 0, .reg = ECX, .bit = 29},
    {.name = "avx2",        .leaf = 7, .subleaf = 0, .reg = EBX, .bit =  5},
    {.name = "bmi2",        .leaf = 7, .subleaf = 0, .reg = EBX, .bit =  8},
    {.name = "avx512f",     .leaf = 7, .subleaf = 0, .reg = EBX, .bit = 16},
    {.name = "avx512dq",    .leaf = 7, .subleaf = 0, .reg = EBX, .bit = 17},
    {.name = "avx512bw",    .leaf = 7, .subleaf = 0, .reg = EBX, .bit = 30},
    {.name = "avx512vl",    .leaf = 7, .subleaf = 0, .reg = EBX, .bit = 31},
    {.name = "avx512vbmi",  .leaf = 7, .subleaf = 0, .reg = ECX, .bit =  1},
    {.name = "avx512vbmi2", .leaf = 7, .subleaf = 0, .reg = ECX, .bit =  6},
    {.name = "avx512fp16",  .leaf = 7, .subleaf = 0, .reg = EDX, .bit = 23},
    {.name = "avx512bf16",  .leaf = 7, .subleaf = 1, .reg = EAX, .bit =  5},
    {.name = "pclmulqdq",   .leaf = 1, .subleaf = 0, .reg = ECX, .bit =  1},
    {.name = "vpclmulqdq",  .leaf = 7, .subleaf = 0, .reg = ECX, .bit = 10},
};

static int cpu_bit(const feature_bit *f) {
    unsigned regs[4] = {0, 0, 0, 0};
    if (!__get_cpuid_count((unsigned)f->leaf, (unsigned)f->subleaf, &regs[0], &regs[1], &regs[2], &regs[3])) return 0;
    return (regs[f->reg] >> f->bit) & 1;
}

static int has(const char *name) {
    for (size_t i = 0; i < sizeof(FEATURES) / sizeof(FEATURES[0]); i++)
        if (!strcmp(FEATURES[i].name, name)) return cpu_bit(&FEATURES[i]);
    return 0;
}

/* Whether CPUID's vendor string is AMD's (or Hygon's, whose cores are AMD's Zen). */
static int vendor_is_amd(void) {
    unsigned eax, regs[3];
    if (!__get_cpuid(0, &eax, &regs[0], &regs[2], &regs[1])) return 0; /* EBX, EDX, ECX spell the name */
    char vendor[13];
    memcpy(vendor, regs, 12);
    vendor[12] = 0;
    return !strcmp(vendor, "AuthenticAMD") || !strcmp(vendor, "HygonGenuine");
}

/* Which register states the OS saves on a context switch (XCR0), or 0 without OSXSAVE. */
static unsigned long long os_saved_state(void) {
    unsigned eax, ebx, ecx, edx;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx) || !((ecx >> 27) & 1)) return 0;
    unsigned low, high;
    __asm__ volatile("xgetbv" : "=a"(low), "=d"(high) : "c"(0));
    return ((unsigned long long)high << 32) | low;
}
#endif

#ifdef ZOO_X86
/* CPUID traps to the hypervisor in a VM, so each answer is worked out once. */
static int detect_avx2(void) {
    return (os_saved_state() & 0x6) == 0x6 && has("avx2") && has("bmi2") && has("f16c") && has("fma") && has("pclmulqdq");
}

static int detect_avx512(void) {
    return (os_saved_state() & 0xe6) == 0xe6 && has("avx512f") && has("avx512bw") && has("avx512vl") && has("avx512dq") &&
           has("avx512vbmi") && has("bmi2") && has("f16c") && has("pclmulqdq") && has("vpclmulqdq");
}
#endif

int zoo_cpu_has(const char *isa) {
#ifdef ZOO_X86
    static int avx2 = -1, avx512 = -1; /* racing first callers store the same answer */
    if (!strcmp(isa, "avx2")) return avx2 >= 0 ? avx2 : (avx2 = detect_avx2());
    if (!strcmp(isa, "avx512")) return avx512 >= 0 ? avx512 : (avx512 = detect_avx512());
#endif
    return !strcmp(isa, "scalar");
}

size_t zoo_cpu_features(const char **names, size_t capacity) {
    size_t found = 0;
#ifdef ZOO_X86
    for (size_t i = 0; i < sizeof(FEATURES) / sizeof(FEATURES[0]) && found < capacity; i++)
        if (cpu_bit(&FEATURES[i])) names[found++] = FEATURES[i].name;
#else
    (void)names;
    (void)capacity;
#endif
    return found;
}

const char *const zoo_isas[ZOO_ISA_COUNT] = {"scalar", "avx2", "avx2-loads", "avx512", "avx512-ymm"};

const zoo_kernels *zoo_kernels_for(const char *isa) {
    if (!strcmp(isa, "scalar")) return &zoo_kernels_scalar;
#ifdef ZOO_X86
    if (!strcmp(isa, "avx2") && zoo_cpu_has("avx2")) return &zoo_kernels_avx2;
    if (!strcmp(isa, "avx2-loads") && zoo_cpu_has("avx2")) return &zoo_kernels_avx2_loads;
    if (!strcmp(isa, "avx512") && zoo_cpu_has("avx512")) return &zoo_kernels_avx512;
    if (!strcmp(isa, "avx512-ymm") && zoo_cpu_has("avx512")) return &zoo_kernels_avx512_ymm;
#endif
    return NULL;
}

const char *zoo_best_isa(void) {
#ifdef ZOO_X86
    if (zoo_cpu_has("avx512")) return vendor_is_amd() ? "avx512-ymm" : "avx512";
    if (zoo_cpu_has("avx2")) return vendor_is_amd() ? "avx2-loads" : "avx2";
#endif
    return "scalar";
}
