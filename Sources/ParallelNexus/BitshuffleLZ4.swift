internal import CHDF5
import Foundation

/// Bitshuffle+LZ4 chunks made in this process, on several threads, in exactly the format of the
/// HDF5 filter 32008 (so any reader with the filter decodes them): a 12-byte header (uncompressed
/// bytes as big-endian uint64, block size in bytes as big-endian uint32), then bitshuffle's LZ4
/// blocks. The functions come from the filter plugin itself (Debian's `bitshuffle`, libh5bshuf.so).
/// Used by a single-process writer, which then stores the chunks with direct chunk writes.
final class BitshuffleLZ4: @unchecked Sendable {
    typealias Compress = @convention(c) (UnsafeRawPointer?, UnsafeMutableRawPointer?, Int, Int, Int) -> Int64
    typealias Bound = @convention(c) (Int, Int, Int) -> Int
    typealias DefaultBlock = @convention(c) (Int) -> Int
    let compressFn: Compress
    let boundFn: Bound
    let defaultBlock: DefaultBlock

    init?(library: UnsafeMutableRawPointer) {
        guard let c = dlsym(library, "bshuf_compress_lz4"), let b = dlsym(library, "bshuf_compress_lz4_bound"),
              let d = dlsym(library, "bshuf_default_block_size") else { return nil }
        compressFn = unsafeBitCast(c, to: Compress.self)
        boundFn = unsafeBitCast(b, to: Bound.self)
        defaultBlock = unsafeBitCast(d, to: DefaultBlock.self)
    }

    /// The plugin, looked up where HDF5 looks for plugins; nil when it is not installed.
    static let shared: BitshuffleLZ4? = {
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
            if let h = dlopen(d + "/libh5bshuf.so", RTLD_NOW | RTLD_LOCAL), let lib = BitshuffleLZ4(library: h) { return lib }
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
        let n = compressFn(input.baseAddress, out.baseAddress! + 12, input.count / elementSize, elementSize, block)
        return n < 0 ? nil : Int(n) + 12
    }
}
