#include "emflow_crc32c.h"
#include "cpu_feature.h"
#include <string.h>
#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#endif

// MARK: - GF(2) arithmetic modulo the polynomial, bit-reflected (bit 31 holds x^0)

#define POLY 0x82F63B78u

// a·b mod P.
static uint32_t mulmod(uint32_t a, uint32_t b) {
    uint32_t product = 0;
    for (uint32_t bit = 1u << 31; bit; bit >>= 1) {
        if (a & bit) product ^= b;
        b = (b & 1) ? (b >> 1) ^ POLY : b >> 1;
    }
    return product;
}

// x^(8·n) mod P: multiplying a CRC register by it appends n zero bytes.
static uint32_t shift_bytes(uint64_t n) {
    uint32_t result = 1u << 31;   // x^0
    uint32_t power = 1u << 23;    // x^8
    for (; n; n >>= 1) {
        if (n & 1) result = mulmod(result, power);
        power = mulmod(power, power);
    }
    return result;
}

uint32_t emflow_crc32c_combine(uint32_t a, uint32_t b, uint64_t length_b) {
    // The register after A, run on through B's length of zeros, then B's own bytes from a zero
    // register: the initial and final inversions cancel in between.
    return mulmod(a, shift_bytes(length_b)) ^ b;
}

// MARK: - Portable: eight tables, eight bytes a step

static uint32_t table[8][256];
static int table_ready = 0;

static void make_table(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ POLY : c >> 1;
        table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++) table[t][i] = (table[t - 1][i] >> 8) ^ table[0][table[t - 1][i] & 0xFF];
    __atomic_store_n(&table_ready, 1, __ATOMIC_RELEASE);
}

static uint32_t portable_register(uint32_t r, const uint8_t *p, size_t n) {
    if (!__atomic_load_n(&table_ready, __ATOMIC_ACQUIRE)) make_table();   // idempotent: a race writes the same values
    for (; n && ((uintptr_t)p & 7); n--) r = (r >> 8) ^ table[0][(r ^ *p++) & 0xFF];
    for (; n >= 8; n -= 8, p += 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        w ^= r;   // little-endian: the register meets the first four bytes
        r = table[7][w & 0xFF] ^ table[6][(w >> 8) & 0xFF] ^ table[5][(w >> 16) & 0xFF] ^ table[4][(w >> 24) & 0xFF] ^
            table[3][(w >> 32) & 0xFF] ^ table[2][(w >> 40) & 0xFF] ^ table[1][(w >> 48) & 0xFF] ^ table[0][w >> 56];
    }
    for (; n; n--) r = (r >> 8) ^ table[0][(r ^ *p++) & 0xFF];
    return r;
}

uint32_t emflow_crc32c_portable(uint32_t crc, const void *bytes, size_t count) {
    return ~portable_register(~crc, bytes, count);
}

// MARK: - SSE4.2

#if defined(__x86_64__) && (defined(__LITTLE_ENDIAN__) || __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__)
#define SSE42 __attribute__((target("sse4.2")))
// Each lane of a stride is this long: the CRC32 instruction takes three cycles and issues one a
// cycle, so three lanes keep it busy; the lanes are joined by one multiplication each.
enum { LANE = 4096 };

SSE42 static uint32_t hw_register(uint32_t r, const uint8_t *p, size_t n) {
    uint64_t r64 = r;
    for (; n && ((uintptr_t)p & 7); n--) r64 = _mm_crc32_u8((uint32_t)r64, *p++);
    if (n >= 3 * LANE) {
        static uint32_t lane_shift = 0;   // x^(8·LANE) mod P, once
        uint32_t shift = __atomic_load_n(&lane_shift, __ATOMIC_RELAXED);
        if (!shift) { shift = shift_bytes(LANE); __atomic_store_n(&lane_shift, shift, __ATOMIC_RELAXED); }
        for (; n >= 3 * LANE; n -= 3 * LANE, p += 3 * LANE) {
            uint64_t a = r64, b = 0, c = 0;
            const uint64_t *x = (const uint64_t *)p, *y = (const uint64_t *)(p + LANE), *z = (const uint64_t *)(p + 2 * LANE);
            for (size_t i = 0; i < LANE / 8; i++) {
                a = _mm_crc32_u64(a, x[i]);
                b = _mm_crc32_u64(b, y[i]);
                c = _mm_crc32_u64(c, z[i]);
            }
            r64 = mulmod(mulmod((uint32_t)a, shift) ^ (uint32_t)b, shift) ^ (uint32_t)c;
        }
    }
    for (; n >= 8; n -= 8, p += 8) r64 = _mm_crc32_u64(r64, *(const uint64_t *)p);
    for (; n; n--) r64 = _mm_crc32_u8((uint32_t)r64, *p++);
    return (uint32_t)r64;
}

static int detect_sse42(void) {
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_SSE4_2);
}

static int hardware = -1;

static int have_sse42(void) { return emflow_cpu_feature(&hardware, detect_sse42); }
#endif

uint32_t emflow_crc32c(uint32_t crc, const void *bytes, size_t count) {
#if defined(__x86_64__) && (defined(__LITTLE_ENDIAN__) || __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__)
    if (have_sse42()) return ~hw_register(~crc, bytes, count);
#endif
    return emflow_crc32c_portable(crc, bytes, count);
}
