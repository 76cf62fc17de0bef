import XCTest
@testable import Checksums
import TestSupport

final class CRC32CTests: XCTestCase {
    /// The CRC catalogue's check value and RFC 3720's (iSCSI) examples, through the fast and the
    /// portable code alike.
    func testPublishedValues() {
        let vectors: [([UInt8], UInt32)] = [
            (Array("123456789".utf8), 0xE306_9283),
            ([UInt8](repeating: 0, count: 32), 0x8A91_36AA),
            ([UInt8](repeating: 0xFF, count: 32), 0x62A8_AB43),
            ((0..<32).map { UInt8($0) }, 0x46DD_794E),
            ((0..<32).reversed().map { UInt8($0) }, 0x113F_DB5C),
            ([], 0),
        ]
        for (bytes, expected) in vectors {
            XCTAssertEqual(CRC32C.checksum(bytes).value, expected, "\(bytes.prefix(9))…")
            XCTAssertEqual(bytes.withUnsafeBytes { CRC32C.portable($0) }, expected)
        }
        XCTAssertEqual(CRC32C(value: 0xE306_9283).base64, "4waSgw==")
        XCTAssertEqual(CRC32C(base64: "4waSgw==")?.value, 0xE306_9283)
        XCTAssertNil(CRC32C(base64: "4waSgwA="), "five bytes are no CRC-32C")
        XCTAssertNil(CRC32C(base64: "not base64"))
    }

    /// Fed whole, in two pieces, or as two CRCs combined, at every alignment and across the
    /// three-lane strides of the fast path, the CRC is the portable code's of the whole.
    func testPiecesAndCombinedCRCsEqualTheWhole() {
        var rng = SplitMix(seed: 11)
        let data = (0..<(300_000 + 64)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        data.withUnsafeBytes { all in
            for length in [0, 1, 7, 8, 9, 4095, 12_287, 12_288, 12_289, 24_577, 100_003, 300_000] {
                for offset in [0, 1, 3, 8, 61] {
                    let whole = UnsafeRawBufferPointer(rebasing: all[offset..<(offset + length)])
                    let expected = CRC32C.portable(whole)
                    var c = CRC32C()
                    c.update(whole)
                    XCTAssertEqual(c.value, expected, "length \(length) at \(offset)")
                    let cut = Int(rng.next() % UInt64(length + 1))
                    var a = CRC32C(), b = CRC32C()
                    a.update(UnsafeRawBufferPointer(rebasing: whole[..<cut]))
                    b.update(UnsafeRawBufferPointer(rebasing: whole[cut...]))
                    var fed = a
                    fed.update(UnsafeRawBufferPointer(rebasing: whole[cut...]))
                    XCTAssertEqual(fed.value, expected, "fed in two at \(cut)")
                    XCTAssertEqual(CRC32C.combine(a, b, length: Int64(length - cut)).value, expected, "combined at \(cut)")
                }
            }
        }
    }

    /// Combining works for lengths far beyond one buffer (an object of terabytes in parts): joining
    /// with a CRC of n zero bytes equals feeding them.
    func testCombineOverLongZeroRuns() {
        let zeros = [UInt8](repeating: 0, count: 1 << 20)
        var fed = CRC32C.checksum(Array("head".utf8))
        let head = fed
        var zerosCRC = CRC32C()
        for _ in 0..<64 { fed.update(zeros); zerosCRC.update(zeros) }
        XCTAssertEqual(CRC32C.combine(head, zerosCRC, length: 64 << 20), fed)
    }
}
