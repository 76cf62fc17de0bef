#ifndef EMFLOW_CRC32C_H
#define EMFLOW_CRC32C_H
// CRC-32C (Castagnoli: reflected polynomial 0x82F63B78, initial and final value 0xFFFFFFFF), the
// checksum S3 names CRC32C (x-amz-checksum-crc32c, base64 of its 4 bytes, most significant first).
// With SSE4.2's CRC32 instruction, three lanes at a time: about 8 bytes a cycle, some 15 times
// SHA-256's rate, so that checking a transfer costs a few percent of moving it.
#include <stddef.h>
#include <stdint.h>

// The CRC of `count` bytes following those whose CRC is `crc` (0 to start): CRCs are fed in pieces.
uint32_t emflow_crc32c(uint32_t crc, const void *bytes, size_t count);
// The same, without the CRC32 instruction (for checking the fast path against).
uint32_t emflow_crc32c_portable(uint32_t crc, const void *bytes, size_t count);
// The CRC of A followed by B from the CRCs of A and B and B's length.
uint32_t emflow_crc32c_combine(uint32_t a, uint32_t b, uint64_t length_b);

#endif
