#include "emflow_bitshuffle.h"
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

// The layout: for `count` elements, plane (j, k) is row j * 8 + k of count / 8 bytes; bit r of
// the row's byte q is bit k of byte j of element 8q + r.

// One group of 8 elements, bit by bit: the tails that the vector loops (64 or 32 elements) leave.
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

// Element sizes without a vector path of their own: byte j of every element into row j of
// `scratch` (count bytes each), which the vector code then treats as 1-byte elements.
static const uint8_t *bytes_by_place(const uint8_t *in, uint8_t *scratch, size_t count, size_t elem_size) {
    for (size_t i = 0; i < count; i++)
        for (size_t j = 0; j < elem_size; j++) scratch[j * count + i] = in[i * elem_size + j];
    return scratch;
}

int emflow_bshuf_best_level(void) {
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vbmi") &&
        __builtin_cpu_supports("gfni")) return 2;
    return __builtin_cpu_supports("avx2") ? 1 : 0;
}

// 64 elements a step: a byte permutation gathers byte j of each 8 elements into a qword (last
// element first), GF2P8AFFINEQB with one bit per selector byte transposes each qword's 8×8 bits
// (byte k of the result: bit k of the 8 elements), and a second permutation makes each plane's 8
// bytes one qword, stored to its row.
__attribute__((target("avx512f,avx512bw,avx512vbmi,gfni")))
static inline void planes_of_64(__m512i bytes, uint8_t *rows, size_t row_bytes, size_t at) {
    const __m512i select = _mm512_set1_epi64((long long)0x8040201008040201ULL);
    const __m512i by_plane = _mm512_set_epi8(63, 55, 47, 39, 31, 23, 15, 7, 62, 54, 46, 38, 30, 22, 14, 6,
                                             61, 53, 45, 37, 29, 21, 13, 5, 60, 52, 44, 36, 28, 20, 12, 4,
                                             59, 51, 43, 35, 27, 19, 11, 3, 58, 50, 42, 34, 26, 18, 10, 2,
                                             57, 49, 41, 33, 25, 17, 9, 1, 56, 48, 40, 32, 24, 16, 8, 0);
    const __m512i t = _mm512_permutexvar_epi8(by_plane, _mm512_gf2p8affine_epi64_epi8(select, bytes, 0));
    // Rows 2·lane and 2·lane + 1 from each 128-bit lane (the lane number must be a constant).
#define EMFLOW_STORE_LANE(lane) do { \
        const __m128i two = _mm512_extracti32x4_epi32(t, lane); \
        _mm_storel_epi64((__m128i *)(rows + (size_t)(2 * (lane)) * row_bytes + at), two); \
        _mm_storeh_pi((__m64 *)(rows + (size_t)(2 * (lane) + 1) * row_bytes + at), _mm_castsi128_ps(two)); \
    } while (0)
    EMFLOW_STORE_LANE(0); EMFLOW_STORE_LANE(1); EMFLOW_STORE_LANE(2); EMFLOW_STORE_LANE(3);
#undef EMFLOW_STORE_LANE
}

__attribute__((target("avx512f,avx512bw,avx512vbmi,gfni")))
static size_t trans_avx512(const uint8_t *in, uint8_t *out, uint8_t *scratch, size_t count, size_t elem_size) {
    const size_t row_bytes = count / 8, steps = count / 64;
    // Byte p of a permutation index takes element e = 8 * (p / 8) + 7 - p % 8 of the step: its only
    // byte (rev), its low byte 2e (lo) or its high byte 2e + 1 (hi).
    const long long ones = 0x0101010101010101LL;
    const __m512i rev = _mm512_add_epi8(_mm512_set1_epi64(0x0001020304050607LL),
                                        _mm512_set_epi64(56 * ones, 48 * ones, 40 * ones, 32 * ones, 24 * ones, 16 * ones, 8 * ones, 0));
    const __m512i lo = _mm512_add_epi8(rev, rev), hi = _mm512_add_epi8(lo, _mm512_set1_epi8(1));
    if (elem_size == 2) {
        for (size_t g = 0; g < steps; g++) {
            const __m512i a = _mm512_loadu_si512(in + 128 * g), b = _mm512_loadu_si512(in + 128 * g + 64);
            planes_of_64(_mm512_permutex2var_epi8(a, lo, b), out, row_bytes, 8 * g);
            planes_of_64(_mm512_permutex2var_epi8(a, hi, b), out + 8 * row_bytes, row_bytes, 8 * g);
        }
    } else {
        const uint8_t *planes = elem_size == 1 ? in : bytes_by_place(in, scratch, count, elem_size);
        for (size_t j = 0; j < elem_size; j++)
            for (size_t g = 0; g < steps; g++)
                planes_of_64(_mm512_permutexvar_epi8(rev, _mm512_loadu_si512(planes + j * count + 64 * g)), out + j * 8 * row_bytes, row_bytes, 8 * g);
    }
    return steps * 8;
}

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
static size_t trans_avx2(const uint8_t *in, uint8_t *out, uint8_t *scratch, size_t count, size_t elem_size) {
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
        const uint8_t *planes = bytes_by_place(in, scratch, count, elem_size);
        for (size_t j = 0; j < elem_size; j++)
            for (size_t g = 0; g < groups; g++)
                eight_planes(_mm256_loadu_si256((const __m256i *)(planes + j * count + 32 * g)), out + j * 8 * row_bytes, row_bytes, 4 * g);
    }
    return groups * 4;
}

#else

int emflow_bshuf_best_level(void) { return 0; }

#endif

void emflow_bshuf_trans_bit_elem(const void *in, void *out, void *scratch, size_t count, size_t elem_size, int level) {
    size_t done = 0;  // groups of 8 elements
#if defined(__x86_64__)
    if (level >= 2) done = trans_avx512(in, out, scratch, count, elem_size);
    else if (level == 1) done = trans_avx2(in, out, scratch, count, elem_size);
#else
    (void)scratch; (void)level;
#endif
    for (size_t g = done; g < count / 8; g++) group_of_eight(in, out, g, count / 8, elem_size);
}

int64_t emflow_bshuf_compress_lz4(const void *in, void *out, size_t capacity, size_t count, size_t elem_size,
                                  size_t block_size, emflow_lz4_ext_state_fn lz4, size_t lz4_state_bytes, int level) {
    if (block_size == 0 || block_size % 8 != 0 || elem_size == 0) return -1;
    const size_t largest = (block_size < count ? block_size : count) * elem_size;
    // One allocation per call: LZ4's state (first, malloc's alignment), a block's planes, scratch.
    const size_t state_bytes = (lz4_state_bytes + 63) / 64 * 64;
    uint8_t *work = malloc(state_bytes + 2 * largest + 1);
    if (!work) return -3;
    void *lz4_state = work;
    uint8_t *shuffled = work + state_bytes;
    const uint8_t *src = in;
    uint8_t *dst = out, *end = dst + capacity;
    size_t done = 0;
    for (;;) {
        const size_t left = count - done;
        const size_t n = left >= block_size ? block_size : left - left % 8;
        if (n == 0) break;
        const size_t bytes = n * elem_size;
        const size_t bound = bytes + bytes / 255 + 16;  // LZ4_compressBound
        if (bytes > 0x7E000000 || (size_t)(end - dst) < 4 + bound) { free(work); return -2; }
        emflow_bshuf_trans_bit_elem(src + done * elem_size, shuffled, shuffled + largest, n, elem_size, level);
        const int c = lz4(lz4_state, (const char *)shuffled, (char *)dst + 4, (int)bytes, (int)bound, 1);
        if (c <= 0) { free(work); return -1; }
        dst[0] = (uint8_t)(c >> 24); dst[1] = (uint8_t)(c >> 16); dst[2] = (uint8_t)(c >> 8); dst[3] = (uint8_t)c;
        dst += 4 + (size_t)c;
        done += n;
    }
    free(work);
    const size_t rest = (count - done) * elem_size;
    if ((size_t)(end - dst) < rest) return -2;
    memcpy(dst, src + done * elem_size, rest);
    return (int64_t)(dst + rest - (uint8_t *)out);
}

// MARK: - The HDF5 filter

static struct {
    emflow_h5z_filter_fn plugin;
    emflow_bshuf_bound_fn bound;
    emflow_bshuf_block_fn default_block;
    emflow_lz4_ext_state_fn lz4;
    size_t lz4_state_bytes;
    int level;
} h5;
static _Atomic uint64_t h5_chunks;

void emflow_bshuf_h5_setup(emflow_h5z_filter_fn plugin_filter, emflow_bshuf_bound_fn bound, emflow_bshuf_block_fn default_block,
                           emflow_lz4_ext_state_fn lz4, size_t lz4_state_bytes, int level) {
    h5.plugin = plugin_filter; h5.bound = bound; h5.default_block = default_block;
    h5.lz4 = lz4; h5.lz4_state_bytes = lz4_state_bytes; h5.level = level;
}

uint64_t emflow_bshuf_h5_compressed_chunks(void) { return h5_chunks; }

static void put_be(uint8_t *p, uint64_t v, int bytes) {
    for (int i = 0; i < bytes; i++) p[i] = (uint8_t)(v >> (8 * (bytes - 1 - i)));
}

size_t emflow_bshuf_h5_filter(unsigned int flags, size_t cd_nelmts, const unsigned int cd_values[], size_t nbytes,
                              size_t *buf_size, void **buf) {
    // cd_values as the plugin stores them: its version (2), element size, block size (0 = its
    // default), compression (2 = LZ4). H5Z_FLAG_REVERSE (0x0100) is a read.
    const int lz4 = cd_nelmts > 4 && cd_values[4] == 2;
    if ((flags & 0x0100u) || !lz4 || cd_values[2] == 0 || nbytes % cd_values[2] != 0)
        return h5.plugin(flags, cd_nelmts, cd_values, nbytes, buf_size, buf);
    const size_t elem_size = cd_values[2];
    const size_t block = cd_values[3] ? cd_values[3] : h5.default_block(elem_size);
    const size_t count = nbytes / elem_size;
    const size_t capacity = h5.bound(count, elem_size, block) + 12;
    uint8_t *out = malloc(capacity);
    if (!out) return 0;
    put_be(out, nbytes, 8);
    put_be(out + 8, block * elem_size, 4);
    const int64_t n = emflow_bshuf_compress_lz4(*buf, out + 12, capacity - 12, count, elem_size, block, h5.lz4, h5.lz4_state_bytes, h5.level);
    if (n < 0) { free(out); return 0; }  // HDF5 reports the filter's failure
    free(*buf);
    *buf = out;
    *buf_size = capacity;
    h5_chunks++;
    return (size_t)n + 12;
}
