#include "emflow_digests.h"
#include "cpu_feature.h"
#include <string.h>
#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#endif

// MARK: - SHA-256 (FIPS 180-4)

static const uint32_t SHA_K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static inline uint32_t ror(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }
static inline uint32_t rol(uint32_t x, int n) { return (x << n) | (x >> (32 - n)); }

// The portable rounds: CPUs without SHA-NI (and other architectures) hash alone through this only
// when a caller asks for a paired stream there; Swift uses OpenSSL for single streams then.
static void sha256_portable(uint32_t h[8], const uint8_t *p, size_t blocks) {
    for (; blocks; blocks--, p += 64) {
        uint32_t w[64];
        for (int i = 0; i < 16; i++)
            w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
        for (int i = 16; i < 64; i++) {
            uint32_t s0 = ror(w[i - 15], 7) ^ ror(w[i - 15], 18) ^ (w[i - 15] >> 3);
            uint32_t s1 = ror(w[i - 2], 17) ^ ror(w[i - 2], 19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16] + s0 + w[i - 7] + s1;
        }
        uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
        for (int i = 0; i < 64; i++) {
            uint32_t t1 = k + (ror(e, 6) ^ ror(e, 11) ^ ror(e, 25)) + ((e & f) ^ (~e & g)) + SHA_K[i] + w[i];
            uint32_t t2 = (ror(a, 2) ^ ror(a, 13) ^ ror(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
            k = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
        }
        h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += k;
    }
}

#if defined(__x86_64__)
// SHA-NI keeps the state as two vectors, ABEF and CDGH; each SHA256RNDS2 does two rounds.
#define SHANI __attribute__((target("sha,sse4.1,ssse3")))
typedef struct { __m128i abef, cdgh; } shani_state;

SHANI static inline shani_state shani_load(const uint32_t *h) {
    __m128i dcba = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)h), 0xB1);
    __m128i hgfe = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)(h + 4)), 0x1B);
    shani_state s = {_mm_alignr_epi8(dcba, hgfe, 8), _mm_blend_epi16(hgfe, dcba, 0xF0)};
    return s;
}

SHANI static inline void shani_store(uint32_t *h, shani_state s) {
    __m128i t = _mm_shuffle_epi32(s.abef, 0x1B), u = _mm_shuffle_epi32(s.cdgh, 0xB1);
    _mm_storeu_si128((__m128i *)h, _mm_blend_epi16(t, u, 0xF0));
    _mm_storeu_si128((__m128i *)(h + 4), _mm_alignr_epi8(u, t, 8));
}

// Message words of group g (rounds 4g..4g+3) into m[g & 3]: loaded big-endian for the first four
// groups, then the schedule from the four before.
#define SHANI_WORDS(m, p, g)                                                                                        \
    do {                                                                                                            \
        if ((g) < 4)                                                                                                \
            m[g] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)((p) + 16 * (g))),                            \
                                    _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL));                 \
        else                                                                                                        \
            m[(g) & 3] = _mm_sha256msg2_epu32(                                                                      \
                _mm_add_epi32(_mm_sha256msg1_epu32(m[(g) & 3], m[((g) - 3) & 3]),                                   \
                              _mm_alignr_epi8(m[((g) - 1) & 3], m[((g) - 2) & 3], 4)),                              \
                m[((g) - 1) & 3]);                                                                                  \
    } while (0)

SHANI static void sha256_shani(uint32_t h[8], const uint8_t *p, size_t blocks) {
    shani_state s = shani_load(h);
    for (; blocks; blocks--, p += 64) {
        shani_state start = s;
        __m128i m[4];
#pragma GCC unroll 16
        for (int g = 0; g < 16; g++) {
            SHANI_WORDS(m, p, g);
            __m128i w = _mm_add_epi32(m[g & 3], _mm_loadu_si128((const __m128i *)(SHA_K + 4 * g)));
            s.cdgh = _mm_sha256rnds2_epu32(s.cdgh, s.abef, w);
            s.abef = _mm_sha256rnds2_epu32(s.abef, s.cdgh, _mm_shuffle_epi32(w, 0x0E));
        }
        s.abef = _mm_add_epi32(s.abef, start.abef);
        s.cdgh = _mm_add_epi32(s.cdgh, start.cdgh);
    }
    shani_store(h, s);
}

// Two streams, their rounds alternating so that each fills the other's wait.
SHANI static void sha256_shani2(uint32_t h1[8], const uint8_t *p, uint32_t h2[8], const uint8_t *q, size_t blocks) {
    shani_state s = shani_load(h1), t = shani_load(h2);
    for (; blocks; blocks--, p += 64, q += 64) {
        shani_state s0 = s, t0 = t;
        __m128i m[4], n[4];
#pragma GCC unroll 16
        for (int g = 0; g < 16; g++) {
            SHANI_WORDS(m, p, g);
            SHANI_WORDS(n, q, g);
            __m128i k = _mm_loadu_si128((const __m128i *)(SHA_K + 4 * g));
            __m128i w = _mm_add_epi32(m[g & 3], k), v = _mm_add_epi32(n[g & 3], k);
            s.cdgh = _mm_sha256rnds2_epu32(s.cdgh, s.abef, w);
            t.cdgh = _mm_sha256rnds2_epu32(t.cdgh, t.abef, v);
            s.abef = _mm_sha256rnds2_epu32(s.abef, s.cdgh, _mm_shuffle_epi32(w, 0x0E));
            t.abef = _mm_sha256rnds2_epu32(t.abef, t.cdgh, _mm_shuffle_epi32(v, 0x0E));
        }
        s.abef = _mm_add_epi32(s.abef, s0.abef); s.cdgh = _mm_add_epi32(s.cdgh, s0.cdgh);
        t.abef = _mm_add_epi32(t.abef, t0.abef); t.cdgh = _mm_add_epi32(t.cdgh, t0.cdgh);
    }
    shani_store(h1, s);
    shani_store(h2, t);
}

static int detect_shani(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_SSSE3) || !(c & bit_SSE4_1)) return 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    return (b & bit_SHA) != 0;
}
#endif

static int shani = -1;

static int have_shani(void) {
#if defined(__x86_64__)
    return emflow_cpu_feature(&shani, detect_shani);
#else
    return 0;
#endif
}

static void sha256_blocks(uint32_t h[8], const uint8_t *p, size_t blocks) {
#if defined(__x86_64__)
    if (have_shani()) { sha256_shani(h, p, blocks); return; }
#endif
    sha256_portable(h, p, blocks);
}

static void sha256_blocks2(uint32_t h1[8], const uint8_t *p, uint32_t h2[8], const uint8_t *q, size_t blocks) {
#if defined(__x86_64__)
    if (have_shani()) { sha256_shani2(h1, p, h2, q, blocks); return; }
#endif
    sha256_portable(h1, p, blocks);
    sha256_portable(h2, q, blocks);
}

// MARK: - MD5 (RFC 1321)

static const uint32_t MD5_K[64] = {
    0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a, 0xa8304613, 0xfd469501,
    0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be, 0x6b901122, 0xfd987193, 0xa679438e, 0x49b40821,
    0xf61e2562, 0xc040b340, 0x265e5a51, 0xe9b6c7aa, 0xd62f105d, 0x02441453, 0xd8a1e681, 0xe7d3fbc8,
    0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed, 0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a,
    0xfffa3942, 0x8771f681, 0x6d9d6122, 0xfde5380c, 0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70,
    0x289b7ec6, 0xeaa127fa, 0xd4ef3085, 0x04881d05, 0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665,
    0xf4292244, 0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92, 0xffeff47d, 0x85845dd1,
    0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1, 0xf7537e82, 0xbd3af235, 0x2ad7d2bb, 0xeb86d391,
};

static inline uint32_t le32(const uint8_t *p) {
    uint32_t x;
    memcpy(&x, p, 4);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    x = __builtin_bswap32(x);
#endif
    return x;
}

// The four round functions, in forms with one fewer operation than the RFC's.
#define MD5_F(b, c, d) ((d) ^ ((b) & ((c) ^ (d))))
#define MD5_G(b, c, d) (((b) & (d)) + ((c) & ~(d)))
#define MD5_H(b, c, d) ((b) ^ (c) ^ (d))
#define MD5_I(b, c, d) ((c) ^ ((b) | ~(d)))
// The 64 steps: function, registers in the step's order, message word, shift, constant.
#define MD5_64_STEPS(S) \
    S(MD5_F, a, b, c, d,  0,  7,  0) S(MD5_F, d, a, b, c,  1, 12,  1) S(MD5_F, c, d, a, b,  2, 17,  2) S(MD5_F, b, c, d, a,  3, 22,  3) \
    S(MD5_F, a, b, c, d,  4,  7,  4) S(MD5_F, d, a, b, c,  5, 12,  5) S(MD5_F, c, d, a, b,  6, 17,  6) S(MD5_F, b, c, d, a,  7, 22,  7) \
    S(MD5_F, a, b, c, d,  8,  7,  8) S(MD5_F, d, a, b, c,  9, 12,  9) S(MD5_F, c, d, a, b, 10, 17, 10) S(MD5_F, b, c, d, a, 11, 22, 11) \
    S(MD5_F, a, b, c, d, 12,  7, 12) S(MD5_F, d, a, b, c, 13, 12, 13) S(MD5_F, c, d, a, b, 14, 17, 14) S(MD5_F, b, c, d, a, 15, 22, 15) \
    S(MD5_G, a, b, c, d,  1,  5, 16) S(MD5_G, d, a, b, c,  6,  9, 17) S(MD5_G, c, d, a, b, 11, 14, 18) S(MD5_G, b, c, d, a,  0, 20, 19) \
    S(MD5_G, a, b, c, d,  5,  5, 20) S(MD5_G, d, a, b, c, 10,  9, 21) S(MD5_G, c, d, a, b, 15, 14, 22) S(MD5_G, b, c, d, a,  4, 20, 23) \
    S(MD5_G, a, b, c, d,  9,  5, 24) S(MD5_G, d, a, b, c, 14,  9, 25) S(MD5_G, c, d, a, b,  3, 14, 26) S(MD5_G, b, c, d, a,  8, 20, 27) \
    S(MD5_G, a, b, c, d, 13,  5, 28) S(MD5_G, d, a, b, c,  2,  9, 29) S(MD5_G, c, d, a, b,  7, 14, 30) S(MD5_G, b, c, d, a, 12, 20, 31) \
    S(MD5_H, a, b, c, d,  5,  4, 32) S(MD5_H, d, a, b, c,  8, 11, 33) S(MD5_H, c, d, a, b, 11, 16, 34) S(MD5_H, b, c, d, a, 14, 23, 35) \
    S(MD5_H, a, b, c, d,  1,  4, 36) S(MD5_H, d, a, b, c,  4, 11, 37) S(MD5_H, c, d, a, b,  7, 16, 38) S(MD5_H, b, c, d, a, 10, 23, 39) \
    S(MD5_H, a, b, c, d, 13,  4, 40) S(MD5_H, d, a, b, c,  0, 11, 41) S(MD5_H, c, d, a, b,  3, 16, 42) S(MD5_H, b, c, d, a,  6, 23, 43) \
    S(MD5_H, a, b, c, d,  9,  4, 44) S(MD5_H, d, a, b, c, 12, 11, 45) S(MD5_H, c, d, a, b, 15, 16, 46) S(MD5_H, b, c, d, a,  2, 23, 47) \
    S(MD5_I, a, b, c, d,  0,  6, 48) S(MD5_I, d, a, b, c,  7, 10, 49) S(MD5_I, c, d, a, b, 14, 15, 50) S(MD5_I, b, c, d, a,  5, 21, 51) \
    S(MD5_I, a, b, c, d, 12,  6, 52) S(MD5_I, d, a, b, c,  3, 10, 53) S(MD5_I, c, d, a, b, 10, 15, 54) S(MD5_I, b, c, d, a,  1, 21, 55) \
    S(MD5_I, a, b, c, d,  8,  6, 56) S(MD5_I, d, a, b, c, 15, 10, 57) S(MD5_I, c, d, a, b,  6, 15, 58) S(MD5_I, b, c, d, a, 13, 21, 59) \
    S(MD5_I, a, b, c, d,  4,  6, 60) S(MD5_I, d, a, b, c, 11, 10, 61) S(MD5_I, c, d, a, b,  2, 15, 62) S(MD5_I, b, c, d, a,  9, 21, 63)

#define MD5_ONE(FN, a, b, c, d, w, s, i) a += x[w] + MD5_K[i]; a += FN(b, c, d); a = b + rol(a, s);
#define MD5_TWO(FN, a, b, c, d, w, s, i)                        \
    a##1 += x[w] + MD5_K[i]; a##2 += y[w] + MD5_K[i];                   \
    a##1 += FN(b##1, c##1, d##1); a##2 += FN(b##2, c##2, d##2);         \
    a##1 = b##1 + rol(a##1, s); a##2 = b##2 + rol(a##2, s);

static void md5_blocks(uint32_t h[4], const uint8_t *p, size_t blocks) {
    for (; blocks; blocks--, p += 64) {
        uint32_t x[16];
        for (int i = 0; i < 16; i++) x[i] = le32(p + 4 * i);
        uint32_t a = h[0], b = h[1], c = h[2], d = h[3];
        MD5_64_STEPS(MD5_ONE)
        h[0] += a; h[1] += b; h[2] += c; h[3] += d;
    }
}

// Two streams, step by step side by side: each step waits on the one before in its stream only.
static void md5_blocks2(uint32_t h1[4], const uint8_t *p, uint32_t h2[4], const uint8_t *q, size_t blocks) {
    for (; blocks; blocks--, p += 64, q += 64) {
        uint32_t x[16], y[16];
        for (int i = 0; i < 16; i++) { x[i] = le32(p + 4 * i); y[i] = le32(q + 4 * i); }
        uint32_t a1 = h1[0], b1 = h1[1], c1 = h1[2], d1 = h1[3];
        uint32_t a2 = h2[0], b2 = h2[1], c2 = h2[2], d2 = h2[3];
        MD5_64_STEPS(MD5_TWO)
        h1[0] += a1; h1[1] += b1; h1[2] += c1; h1[3] += d1;
        h2[0] += a2; h2[1] += b2; h2[2] += c2; h2[3] += d2;
    }
}

// MARK: - Streams

static const uint32_t SHA_IV[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
static const uint32_t MD5_IV[4] = {0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476};

void emflow_digest_init(emflow_digest *d, int algorithm) {
    memset(d, 0, sizeof *d);
    d->algorithm = algorithm;
    if (algorithm == EMFLOW_MD5) memcpy(d->state, MD5_IV, sizeof MD5_IV);
    else memcpy(d->state, SHA_IV, sizeof SHA_IV);
}

static void blocks1(emflow_digest *d, const uint8_t *p, size_t blocks) {
    if (d->algorithm == EMFLOW_MD5) md5_blocks(d->state, p, blocks);
    else sha256_blocks(d->state, p, blocks);
}

// Completes a pending partial block from `*p` as far as `*n` allows.
static void top_up(emflow_digest *d, const uint8_t **p, size_t *n) {
    if (d->used == 0 || *n == 0) return;
    size_t take = 64 - d->used < *n ? 64 - d->used : *n;
    memcpy(d->pending + d->used, *p, take);
    d->used += (uint32_t)take;
    d->length += take;
    *p += take;
    *n -= take;
    if (d->used == 64) { blocks1(d, d->pending, 1); d->used = 0; }
}

void emflow_digest_update(emflow_digest *d, const void *bytes, size_t count) {
    const uint8_t *p = bytes;
    top_up(d, &p, &count);
    if (count == 0) return;
    size_t blocks = count / 64;
    if (blocks) blocks1(d, p, blocks);
    size_t rest = count - blocks * 64;
    memcpy(d->pending, p + blocks * 64, rest);
    d->used = (uint32_t)rest;
    d->length += count;
}

void emflow_digest_update2(emflow_digest *a, const void *pv, size_t n, emflow_digest *b, const void *qv, size_t m) {
    const uint8_t *p = pv, *q = qv;
    top_up(a, &p, &n);
    top_up(b, &q, &m);
    // Either stream still holding a partial block has nothing left to feed here.
    size_t common = a->algorithm == b->algorithm && a->used == 0 && b->used == 0 ? (n < m ? n : m) / 64 : 0;
    if (common) {
        if (a->algorithm == EMFLOW_MD5) md5_blocks2(a->state, p, b->state, q, common);
        else sha256_blocks2(a->state, p, b->state, q, common);
        a->length += common * 64; b->length += common * 64;
        p += common * 64; q += common * 64;
        n -= common * 64; m -= common * 64;
    }
    emflow_digest_update(a, p, n);
    emflow_digest_update(b, q, m);
}

size_t emflow_digest_final(emflow_digest *d, uint8_t out[32]) {
    uint64_t bits = d->length * 8;
    uint8_t tail[128] = {0};
    size_t used = d->used, total = used < 56 ? 64 : 128;
    memcpy(tail, d->pending, used);
    tail[used] = 0x80;
    for (int i = 0; i < 8; i++) {
        if (d->algorithm == EMFLOW_MD5) tail[total - 8 + i] = (uint8_t)(bits >> (8 * i));
        else tail[total - 1 - i] = (uint8_t)(bits >> (8 * i));
    }
    blocks1(d, tail, total / 64);
    if (d->algorithm == EMFLOW_MD5) {
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < 4; j++) out[4 * i + j] = (uint8_t)(d->state[i] >> (8 * j));
        return 16;
    }
    for (int i = 0; i < 8; i++)
        for (int j = 0; j < 4; j++) out[4 * i + j] = (uint8_t)(d->state[i] >> (24 - 8 * j));
    return 32;
}

int emflow_digest_pairs_faster(int algorithm) { return algorithm == EMFLOW_MD5 ? 1 : have_shani(); }
