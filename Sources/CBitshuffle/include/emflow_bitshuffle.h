#ifndef EMFLOW_BITSHUFFLE_H
#define EMFLOW_BITSHUFFLE_H
// Bitshuffle+LZ4 blocks written here with AVX-512 and GFNI, or AVX2 (the Debian build of the HDF5
// filter plugin has only its SSE2 code), in the exact layout of the filter (id 32008): each block
// of elements is bit-transposed (plane by plane: byte j of the element, bit k, one bit per element)
// and LZ4-compressed, preceded by its compressed size as big-endian uint32; the elements after the
// last multiple of 8 are copied as they are. LZ4 itself comes from liblz4 through a function pointer.
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
// `lz4_state_bytes` is LZ4_sizeofState(). Returns the bytes written, or a negative number when LZ4
// fails, the output does not fit or memory runs out.
int64_t emflow_bshuf_compress_lz4(const void *in, void *out, size_t capacity, size_t count, size_t elem_size,
                                  size_t block_size, emflow_lz4_ext_state_fn lz4, size_t lz4_state_bytes, int level);

// HDF5's filter function (H5Z_func_t) in plain C types, and the plugin's sizing functions.
typedef size_t (*emflow_h5z_filter_fn)(unsigned int flags, size_t cd_nelmts, const unsigned int cd_values[], size_t nbytes,
                                       size_t *buf_size, void **buf);
typedef size_t (*emflow_bshuf_bound_fn)(size_t count, size_t elem_size, size_t block_size);
typedef size_t (*emflow_bshuf_block_fn)(size_t elem_size);

// Sets up `emflow_bshuf_h5_filter`: it compresses bitshuffle+LZ4 chunks with the vector code of
// `level` and hands everything else (decompression, bitshuffle without LZ4) to the plugin's own
// `plugin_filter`. Call once, before HDF5 can call the filter.
void emflow_bshuf_h5_setup(emflow_h5z_filter_fn plugin_filter, emflow_bshuf_bound_fn bound, emflow_bshuf_block_fn default_block,
                           emflow_lz4_ext_state_fn lz4, size_t lz4_state_bytes, int level);

// The filter function registered with HDF5 for id 32008 in place of the plugin's: the same bytes
// (the plugin's header, blocks and cd_values), made faster.
size_t emflow_bshuf_h5_filter(unsigned int flags, size_t cd_nelmts, const unsigned int cd_values[], size_t nbytes,
                              size_t *buf_size, void **buf);

// How many chunks emflow_bshuf_h5_filter has compressed itself in this process (for tests).
uint64_t emflow_bshuf_h5_compressed_chunks(void);

#endif
