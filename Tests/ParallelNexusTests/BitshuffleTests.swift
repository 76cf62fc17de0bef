import XCTest
@testable import ParallelNexus

/// The AVX2 bitshuffle+LZ4 path must give byte for byte what the filter plugin gives, for every
/// element size and for counts that leave partial blocks, tails of fewer than 32 elements and
/// elements after the last multiple of 8.
final class BitshuffleTests: XCTestCase {
    func testVectorPathWritesThePluginsBytes() throws {
        let plugin = try XCTUnwrap(BitshuffleLZ4.plugin, "the bitshuffle HDF5 filter plugin is missing: run scripts/bootstrap")
        let fast = try XCTUnwrap(BitshuffleLZ4(library: plugin, vectorized: true))
        let reference = try XCTUnwrap(BitshuffleLZ4(library: plugin, vectorized: false))
        XCTAssertNil(reference.lz4)
        try XCTSkipIf(fast.lz4 == nil, "this CPU has no AVX2 (or liblz4.so.1 is not found): the plugin compresses alone")

        var rng = SystemRandomNumberGenerator()
        for elementSize in [1, 2, 3, 4, 8] {
            for count in [0, 5, 8, 24, 32, 40, 72, 1000, 4096, 4096 + 8 + 3, 3 * 4096 + 37, 65_536] {
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
                    XCTAssertEqual(run(fast), want, "\(name), \(count) elements of \(elementSize) bytes")
                }
            }
        }
    }

    /// The bit transposition alone, against the definition, on data where each bit is distinct.
    func testTranspositionMatchesTheDefinition() {
        for elementSize in [1, 2, 4] {
            let count = 32 * 3 + 16  // vector groups and an 8-element tail pair
            let input = (0..<(count * elementSize)).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ ($0 >> 3)) }
            var out = [UInt8](repeating: 0, count: input.count), scratch = out
            input.withUnsafeBytes { i in out.withUnsafeMutableBytes { o in scratch.withUnsafeMutableBytes { s in
                emflowBitshuffleTranspose(i, o, s, count: count, elementSize: elementSize)
            } } }
            let rowBytes = count / 8
            for j in 0..<elementSize { for k in 0..<8 { for q in 0..<rowBytes {
                var want: UInt8 = 0
                for r in 0..<8 { want |= ((input[(8 * q + r) * elementSize + j] >> k) & 1) << r }
                XCTAssertEqual(out[(j * 8 + k) * rowBytes + q], want, "byte \(j), bit \(k), group \(q) of \(elementSize)-byte elements")
            } } }
        }
    }
}
