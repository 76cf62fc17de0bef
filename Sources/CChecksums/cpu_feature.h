#ifndef EMFLOW_CPU_FEATURE_H
#define EMFLOW_CPU_FEATURE_H
// A CPU feature asked of CPUID once: `*slot` holds 1 or 0 once known, -1 before (a race asks twice
// and stores the same answer).
static inline int emflow_cpu_feature(int *slot, int (*detect)(void)) {
    int known = __atomic_load_n(slot, __ATOMIC_RELAXED);
    if (known < 0) { known = detect(); __atomic_store_n(slot, known, __ATOMIC_RELAXED); }
    return known;
}
#endif
