import XCTest
@testable import ParallelNexus

/// The vector bitshuffle+LZ4 paths (AVX-512 with GFNI, AVX2) must give byte for byte what the filter
/// plugin gives, for every element size and for counts that leave partial blocks, tails shorter
/// than a vector step and elements after the last multiple of 8.
final class BitshuffleTests: XCTestCase {
    func testVectorPathsWriteThePluginsBytes() throws {
        let plugin = try XCTUnwrap(BitshuffleLZ4.plugin, "the bitshuffle HDF5 filter plugin is missing: run scripts/bootstrap")
        let reference = try XCTUnwrap(BitshuffleLZ4(library: plugin, level: 0))
        XCTAssertNil(reference.lz4)
        // Every vector level this CPU runs, and the codec the writers use: on a CPU without AVX2 that
        // is the plugin's own path, which must then be what is chosen.
        let best = emflowBitshuffleBestLevel
        let shared = try XCTUnwrap(BitshuffleLZ4.shared)
        XCTAssertEqual(shared.level, best)
        XCTAssertEqual(shared.lz4 != nil, best > 0, "liblz4.so.1 beside the plugin: the vector path is used where the CPU has it")
        let paths = try (0..<best).map { try XCTUnwrap(BitshuffleLZ4(library: plugin, level: $0 + 1)) } + [shared]

        var rng = SystemRandomNumberGenerator()
        for elementSize in [1, 2, 3, 4, 8] {
            for count in [0, 5, 8, 24, 32, 40, 64, 72, 136, 1000, 4096, 4096 + 8 + 3, 3 * 4096 + 37, 65_536] {
                // Noise, a smooth ramp (long LZ4 matches) and saturated bytes (every bit set).
                let noise = (0..<(count * elementSize)).map { _ in UInt8.random(in: 0...255, using: &rng) }
                let ramp = (0..<(count * elementSize)).map { UInt8(truncatingIfNeeded: ($0 / 7) % 23) }
                let full = [UInt8](repeating: 0xFF, count: count * elementSize)
                for (name, input) in [("noise", noise), ("ramp", ramp), ("0xFF", full)] {
                    let bound = reference.bound(elements: count, elementSize: elementSize)
                    func run(_ codec: BitshuffleLZ4) -> [UInt8]? {
                        var out = [UInt8](repeating: 0, count: bound)
                        let n = input.withUnsafeBytes { i in out.withUnsafeMutableBytes { o in codec.compress(i, elementSize: elementSize, into: o) } }
                        return n.map { Array(out[0..<$0]) }
                    }
                    let want = try XCTUnwrap(run(reference), "plugin, \(name), \(count) × \(elementSize) B")
                    for fast in paths {
                        XCTAssertEqual(run(fast), want, "level \(fast.level): \(name), \(count) elements of \(elementSize) bytes")
                    }
                }
            }
        }
    }

    /// The bit transposition alone at each level, against the definition.
    func testTranspositionMatchesTheDefinition() {
        for level in Int32(0)...emflowBitshuffleBestLevel { for elementSize in [1, 2, 4] {
            let count = 64 * 3 + 32 + 16  // whole vector steps of both widths and 8-element tails
            let input = (0..<(count * elementSize)).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ ($0 >> 3)) }
            var out = [UInt8](repeating: 0, count: input.count), scratch = out
            input.withUnsafeBytes { i in out.withUnsafeMutableBytes { o in scratch.withUnsafeMutableBytes { s in
                emflowBitshuffleTranspose(i, o, s, count: count, elementSize: elementSize, level: level)
            } } }
            let rowBytes = count / 8
            for j in 0..<elementSize { for k in 0..<8 { for q in 0..<rowBytes {
                var want: UInt8 = 0
                for r in 0..<8 { want |= ((input[(8 * q + r) * elementSize + j] >> k) & 1) << r }
                XCTAssertEqual(out[(j * 8 + k) * rowBytes + q], want, "level \(level): byte \(j), bit \(k), group \(q) of \(elementSize)-byte elements")
            } } }
        } }
    }
}
