#ifndef EMFLOW_DIGESTS_H
#define EMFLOW_DIGESTS_H
// SHA-256 and MD5 whose state is plain memory, so that two digests can be advanced together on one
// core: each of these is a chain of dependent rounds (SHA-256's SHA-NI rounds wait on the latency
// of the one before), so two independent chains interleaved fill the gaps. With SHA-NI, two streams
// hash at about 1.5 times the rate of one, and one alone at OpenSSL's rate; two MD5 streams at about
// 1.5 times OpenSSL's one, and one alone at 0.8 of it.
#include <stddef.h>
#include <stdint.h>
// Included here so that a build made before it existed sees it (its module is this directory).
#include "emflow_crc32c.h"

enum { EMFLOW_SHA256 = 0, EMFLOW_MD5 = 1 };

typedef struct {
    uint32_t state[8];      // SHA-256: 8 words; MD5: the first 4
    uint64_t length;        // bytes fed so far
    uint8_t pending[64];    // the bytes of an unfinished block
    uint32_t used;          // how many of them
    int32_t algorithm;
} emflow_digest;

void emflow_digest_init(emflow_digest *d, int algorithm);
void emflow_digest_update(emflow_digest *d, const void *bytes, size_t count);
// Feeds `p` to `a` and `q` to `b` (two streams of one algorithm), interleaving their blocks.
void emflow_digest_update2(emflow_digest *a, const void *p, size_t n, emflow_digest *b, const void *q, size_t m);
// Writes the digest (32 bytes for SHA-256, 16 for MD5) and returns its length; `d` is spent.
size_t emflow_digest_final(emflow_digest *d, uint8_t out[32]);
// 1 where feeding two streams together beats feeding them one after the other on this CPU (SHA-256
// needs SHA-NI for it; without, OpenSSL's vector code is the faster single stream).
int emflow_digest_pairs_faster(int algorithm);

#endif
