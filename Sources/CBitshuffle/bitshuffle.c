#include "emflow_bitshuffle.h"
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

// The layout: for `count` elements, plane (j, k) is row j * 8 + k of count / 8 bytes; bit r of
// the row's byte q is bit k of byte j of element 8q + r.

// One group of 8 elements, bit by bit: the tails that the 32-element vector loop leaves.
static void group_of_eight(const uint8_t *in, uint8_t *out, size_t g, size_t row_bytes, size_t elem_size) {
    for (size_t j = 0; j < elem_size; j++) {
        for (size_t k = 0; k < 8; k++) {
            uint8_t b = 0;
            for (size_t r = 0; r < 8; r++) b |= (uint8_t)(((in[(8 * g + r) * elem_size + j] >> k) & 1u) << r);
            out[(j * 8 + k) * row_bytes + g] = b;
        }
    }
}

#if defined(__x86_64__)

int emflow_bshuf_fast_available(void) { return __builtin_cpu_supports("avx2") ? 1 : 0; }

// Byte j of 32 consecutive elements in `v` → 4 bytes of each of the plane group's 8 rows at `at`:
// movemask collects each byte's top bit, and adding the vector to itself moves the next bit up.
__attribute__((target("avx2")))
static inline void eight_planes(__m256i v, uint8_t *rows, size_t row_bytes, size_t at) {
    for (int k = 7; k >= 0; k--) {
        uint32_t m = (uint32_t)_mm256_movemask_epi8(v);
        memcpy(rows + (size_t)k * row_bytes + at, &m, 4);
        v = _mm256_add_epi8(v, v);
    }
}

__attribute__((target("avx2")))
static void trans_avx2(const uint8_t *in, uint8_t *out, uint8_t *scratch, size_t count, size_t elem_size) {
    const size_t row_bytes = count / 8, groups = count / 32;
    if (elem_size == 1) {
        for (size_t g = 0; g < groups; g++)
            eight_planes(_mm256_loadu_si256((const __m256i *)(in + 32 * g)), out, row_bytes, 4 * g);
    } else if (elem_size == 2) {
        // Each 128-bit lane: the low bytes of its 8 elements, then their high bytes.
        const __m256i split = _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15,
                                               0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
        for (size_t g = 0; g < groups; g++) {
            __m256i a = _mm256_shuffle_epi8(_mm256_loadu_si256((const __m256i *)(in + 64 * g)), split);
            __m256i b = _mm256_shuffle_epi8(_mm256_loadu_si256((const __m256i *)(in + 64 * g + 32)), split);
            a = _mm256_permute4x64_epi64(a, 0xD8);  // low bytes of elements 0-15 | their high bytes
            b = _mm256_permute4x64_epi64(b, 0xD8);  // the same for elements 16-31
            eight_planes(_mm256_permute2x128_si256(a, b, 0x20), out, row_bytes, 4 * g);
            eight_planes(_mm256_permute2x128_si256(a, b, 0x31), out + 8 * row_bytes, row_bytes, 4 * g);
        }
    } else {
        // Other sizes: bytes grouped by their place in the element first, then plane by plane.
        for (size_t i = 0; i < count; i++)
            for (size_t j = 0; j < elem_size; j++) scratch[j * count + i] = in[i * elem_size + j];
        for (size_t j = 0; j < elem_size; j++)
            for (size_t g = 0; g < groups; g++)
                eight_planes(_mm256_loadu_si256((const __m256i *)(scratch + j * count + 32 * g)), out + j * 8 * row_bytes, row_bytes, 4 * g);
    }
    for (size_t g = groups * 4; g < row_bytes; g++) group_of_eight(in, out, g, row_bytes, elem_size);
}

#else

int emflow_bshuf_fast_available(void) { return 0; }

#endif

void emflow_bshuf_trans_bit_elem(const void *in, void *out, void *scratch, size_t count, size_t elem_size) {
#if defined(__x86_64__)
    if (emflow_bshuf_fast_available()) { trans_avx2(in, out, scratch, count, elem_size); return; }
#endif
    (void)scratch;
    for (size_t g = 0; g < count / 8; g++) group_of_eight(in, out, g, count / 8, elem_size);
}

int64_t emflow_bshuf_compress_lz4(const void *in, void *out, size_t capacity, size_t count, size_t elem_size,
                                  size_t block_size, emflow_lz4_ext_state_fn lz4, void *lz4_state) {
    if (block_size == 0 || block_size % 8 != 0 || elem_size == 0) return -1;
    const size_t largest = (block_size < count ? block_size : count) * elem_size;
    uint8_t *shuffled = malloc(2 * largest + 1);
    if (!shuffled) return -3;
    const uint8_t *src = in;
    uint8_t *dst = out, *end = dst + capacity;
    size_t done = 0;
    for (;;) {
        const size_t left = count - done;
        const size_t n = left >= block_size ? block_size : left - left % 8;
        if (n == 0) break;
        const size_t bytes = n * elem_size;
        const size_t bound = bytes + bytes / 255 + 16;  // LZ4_compressBound
        if (bytes > 0x7E000000 || (size_t)(end - dst) < 4 + bound) { free(shuffled); return -2; }
        emflow_bshuf_trans_bit_elem(src + done * elem_size, shuffled, shuffled + largest, n, elem_size);
        const int c = lz4(lz4_state, (const char *)shuffled, (char *)dst + 4, (int)bytes, (int)bound, 1);
        if (c <= 0) { free(shuffled); return -1; }
        dst[0] = (uint8_t)(c >> 24); dst[1] = (uint8_t)(c >> 16); dst[2] = (uint8_t)(c >> 8); dst[3] = (uint8_t)c;
        dst += 4 + (size_t)c;
        done += n;
    }
    free(shuffled);
    const size_t rest = (count - done) * elem_size;
    if ((size_t)(end - dst) < rest) return -2;
    memcpy(dst, src + done * elem_size, rest);
    return (int64_t)(dst + rest - (uint8_t *)out);
}
