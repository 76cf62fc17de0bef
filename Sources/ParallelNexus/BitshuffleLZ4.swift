internal import CHDF5
internal import CBitshuffle
import Foundation

/// Bitshuffle+LZ4 chunks made in this process, on several threads, in exactly the format of the
/// HDF5 filter 32008 (so any reader with the filter decodes them): a 12-byte header (uncompressed
/// bytes as big-endian uint64, block size in bytes as big-endian uint32), then bitshuffle's LZ4
/// blocks. The block size and bound come from the filter plugin itself (Debian's `bitshuffle`,
/// libh5bshuf.so). The blocks are made here (`CBitshuffle`: AVX-512 + GFNI or AVX2, LZ4 from the
/// plugin's liblz4) where the CPU has the vector code — Debian's plugin is built for SSE2 only and
/// its bit transposition took as long as LZ4 — else by the plugin; both give the same bytes. Used by
/// a single-process writer, which then stores the chunks with direct chunk writes, and as HDF5's
/// filter (`replacesHDF5Filter`).
final class BitshuffleLZ4: @unchecked Sendable {
    typealias Compress = @convention(c) (UnsafeRawPointer?, UnsafeMutableRawPointer?, Int, Int, Int) -> Int64
    typealias Bound = @convention(c) (Int, Int, Int) -> Int
    typealias DefaultBlock = @convention(c) (Int) -> Int
    typealias StateSize = @convention(c) () -> Int32
    let compressFn: Compress
    let boundFn: Bound
    let defaultBlock: DefaultBlock
    /// LZ4_compress_fast_extState and its state's size, when the vector path is used.
    let lz4: (compress: emflow_lz4_ext_state_fn, stateBytes: Int)?
    /// The vector code used: 2 = AVX-512 with GFNI, 1 = AVX2 (see emflow_bitshuffle.h).
    let level: Int32

    /// `level`: the vector code to use, at most (nil: the best this CPU runs; 0: the plugin's own).
    init?(library: UnsafeMutableRawPointer, level: Int32? = nil) {
        guard let c = dlsym(library, "bshuf_compress_lz4"), let b = dlsym(library, "bshuf_compress_lz4_bound"),
              let d = dlsym(library, "bshuf_default_block_size") else { return nil }
        compressFn = unsafeBitCast(c, to: Compress.self)
        boundFn = unsafeBitCast(b, to: Bound.self)
        defaultBlock = unsafeBitCast(d, to: DefaultBlock.self)
        // The plugin's own liblz4 (already loaded with it), so both paths compress alike.
        self.level = min(level ?? Int32.max, emflow_bshuf_best_level())
        if self.level > 0, let l = dlopen("liblz4.so.1", RTLD_NOW | RTLD_LOCAL),
           let f = dlsym(l, "LZ4_compress_fast_extState"), let n = dlsym(l, "LZ4_sizeofState") {
            lz4 = (unsafeBitCast(f, to: emflow_lz4_ext_state_fn.self), Int(unsafeBitCast(n, to: StateSize.self)()))
        } else {
            lz4 = nil
        }
    }

    /// The plugin, looked up where HDF5 looks for plugins; nil when it is not installed.
    static let shared: BitshuffleLZ4? = plugin.flatMap { BitshuffleLZ4(library: $0) }

    /// The plugin library, opened from where HDF5 looks for plugins (a handle, never written after).
    nonisolated(unsafe) static let plugin: UnsafeMutableRawPointer? = {
        var dirs: [String] = []
        HDF5Library.serialized {
            var n: UInt32 = 0
            H5PLsize(&n)
            for i in 0..<n {
                var buf = [CChar](repeating: 0, count: 4096)
                if H5PLget(i, &buf, buf.count) > 0 { dirs.append(String(cString: buf)) }
            }
        }
        dirs += ["/usr/lib/x86_64-linux-gnu/hdf5/openmpi/plugins", "/usr/lib/aarch64-linux-gnu/hdf5/openmpi/plugins"]
        for d in dirs.flatMap({ $0.split(separator: ":").map(String.init) }) {
            if let h = dlopen(d + "/libh5bshuf.so", RTLD_NOW | RTLD_LOCAL) { return h }
        }
        return nil
    }()

    func bound(elements: Int, elementSize: Int) -> Int { boundFn(elements, elementSize, defaultBlock(elementSize)) + 12 }

    /// Compresses `input` (elements of `elementSize` bytes) into `out`; returns the chunk's bytes, or nil on failure.
    func compress(_ input: UnsafeRawBufferPointer, elementSize: Int, into out: UnsafeMutableRawBufferPointer) -> Int? {
        let block = defaultBlock(elementSize)
        var total = UInt64(input.count).bigEndian
        var blockBytes = UInt32(block * elementSize).bigEndian
        withUnsafeBytes(of: &total) { out.baseAddress!.copyMemory(from: $0.baseAddress!, byteCount: 8) }
        withUnsafeBytes(of: &blockBytes) { (out.baseAddress! + 8).copyMemory(from: $0.baseAddress!, byteCount: 4) }
        let n: Int64
        if let lz4 {
            n = emflow_bshuf_compress_lz4(input.baseAddress, out.baseAddress! + 12, out.count - 12, input.count / elementSize,
                                          elementSize, block, lz4.compress, lz4.stateBytes, level)
        } else {
            n = compressFn(input.baseAddress, out.baseAddress! + 12, input.count / elementSize, elementSize, block)
        }
        return n < 0 ? nil : Int(n) + 12
    }
}

/// The bit transposition alone (for tests): `count` (a multiple of 8) elements from `input` to `output`
/// with the vector code of `level` (0 = bit by bit).
func emflowBitshuffleTranspose(_ input: UnsafeRawBufferPointer, _ output: UnsafeMutableRawBufferPointer, _ scratch: UnsafeMutableRawBufferPointer,
                               count: Int, elementSize: Int, level: Int32) {
    emflow_bshuf_trans_bit_elem(input.baseAddress, output.baseAddress, scratch.baseAddress, count, elementSize, min(level, emflow_bshuf_best_level()))
}

/// The best vector level this CPU runs (for tests).
var emflowBitshuffleBestLevel: Int32 { emflow_bshuf_best_level() }

extension BitshuffleLZ4 {
    /// Puts the vector compressor in the plugin's place as HDF5's filter 32008, so chunks that HDF5
    /// filters itself (parallel writes: one thread per rank; TIFF conversions) are compressed by it
    /// too. Reading, and anything but bitshuffle+LZ4, still goes to the plugin's own function. Only
    /// where HDF5 found the plugin itself (HDF5_PLUGIN_PATH is respected) and the CPU has the vector
    /// code. Once per process; call inside `HDF5Library.serialized`, before the filter is used.
    static let replacesHDF5Filter: Bool = {
        typealias PluginInfo = @convention(c) () -> UnsafeRawPointer?
        guard H5Zfilter_avail(H5Z_filter_t(Compression.bitshuffleFilterID)) > 0, let codec = shared, let lz4 = codec.lz4,
              let plugin, let info = dlsym(plugin, "H5PLget_plugin_info"), let own = dlsym(plugin, "bshuf_h5_filter"),
              let cls = unsafeBitCast(info, to: PluginInfo.self)()?.assumingMemoryBound(to: H5Z_class2_t.self),
              Int(cls.pointee.id) == Compression.bitshuffleFilterID else { return false }
        emflow_bshuf_h5_setup(unsafeBitCast(own, to: emflow_h5z_filter_fn.self), unsafeBitCast(codec.boundFn, to: emflow_bshuf_bound_fn.self),
                              unsafeBitCast(codec.defaultBlock, to: emflow_bshuf_block_fn.self), lz4.compress, lz4.stateBytes, codec.level)
        // The plugin's class (its name goes into each file's filter pipeline), with this filter function.
        var mine = cls.pointee
        mine.filter = emflow_bshuf_h5_filter
        return H5Zregister(&mine) >= 0
    }()

    /// Chunks compressed through `replacesHDF5Filter` in this process (for tests).
    static var chunksCompressedForHDF5: UInt64 { emflow_bshuf_h5_compressed_chunks() }
}
