#ifndef EMFLOW_BITSHUFFLE_H
#define EMFLOW_BITSHUFFLE_H
// Bitshuffle+LZ4 blocks written here with AVX-512 and GFNI, or AVX2 (the Debian build of the HDF5
// filter plugin has only its SSE2 code), in the exact layout of the filter (id 32008): each block of elements is
// bit-transposed (plane by plane: byte j of the element, bit k, one bit per element) and
// LZ4-compressed, preceded by its compressed size as big-endian uint32; the elements after the last
// multiple of 8 are copied as they are. LZ4 itself comes from liblz4 through a function pointer.
#include <stddef.h>
#include <stdint.h>

// LZ4_compress_fast_extState(state, src, dst, srcSize, dstCapacity, acceleration).
typedef int (*emflow_lz4_ext_state_fn)(void *, const char *, char *, int, int, int);

// The vector code this CPU runs: 2 = AVX-512 (F, BW, VBMI) with GFNI, 1 = AVX2, 0 = none (use the
// plugin then; level 0 here is a slow bit-by-bit reference).
int emflow_bshuf_best_level(void);

// Bit-transposes `count` elements (a multiple of 8) of `elem_size` bytes from `in` to `out`
// (count * elem_size bytes each) with the code of `level` (at most the best level). `scratch`
// holds count * elem_size bytes for element sizes other than 1 and 2.
void emflow_bshuf_trans_bit_elem(const void *in, void *out, void *scratch, size_t count, size_t elem_size, int level);

// Compresses `count` elements in blocks of `block_size` elements (a multiple of 8) into `out`
// (`capacity` bytes, at least the filter's bound), without the filter's 12-byte header.
// `lz4_state` holds `lz4_state_size` bytes (LZ4_sizeofState()). Returns the bytes written, or a
// negative number when LZ4 fails, the output does not fit or memory runs out.
int64_t emflow_bshuf_compress_lz4(const void *in, void *out, size_t capacity, size_t count, size_t elem_size,
                                  size_t block_size, emflow_lz4_ext_state_fn lz4, void *lz4_state, int level);

#endif
