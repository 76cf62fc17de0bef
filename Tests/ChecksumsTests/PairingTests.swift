import XCTest
import Foundation
import Checksums
import POSIXFiles
import TestSupport

final class PairingTests: XCTestCase {
    private func bytes(_ count: Int, seed: UInt64) -> [UInt8] {
        var rng = SplitMix(seed: seed)
        return (0..<count).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
    }

    private func digest(_ s: DigestStream) -> String { hex(s.finalizeBytes()) }

    func testStreamsGiveThePublishedDigests() {
        let vectors: [(Digester.Algorithm, String, String)] = [
            (.md5, "", "d41d8cd98f00b204e9800998ecf8427e"),
            (.md5, "abc", "900150983cd24fb0d6963f7d28e17f72"),
            (.md5, "12345678901234567890123456789012345678901234567890123456789012345678901234567890", "57edf4a22be3c955ac49da2e2107b67a"),
            (.sha256, "abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
            (.sha256, "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"),
        ]
        for (algorithm, text, expected) in vectors {
            let s = DigestStream(algorithm)
            Array(text.utf8).withUnsafeBytes { s.update($0) }
            XCTAssertEqual(digest(s), expected, "\(algorithm) of \"\(text)\"")
        }
    }

    /// Two streams fed in pieces of every awkward size, alone and in pairs (one side empty, one side
    /// holding a partial block), give what OpenSSL gives for each whole.
    func testPairedStreamsEqualOpenSSLHowEverTheyAreFed() {
        let lengths = [0, 1, 55, 56, 63, 64, 65, 119, 120, 128, 1000, 65536 + 17, 300_001]
        var rng = SplitMix(seed: 7)
        for algorithm in [Digester.Algorithm.sha256, .md5] {
            for (k, n) in lengths.enumerated() {
                let m = lengths[(k * 5 + 3) % lengths.count]
                let a = bytes(n, seed: UInt64(k)), b = bytes(m, seed: UInt64(100 + k))
                let x = DigestStream(algorithm), y = DigestStream(algorithm)
                var i = 0, j = 0
                a.withUnsafeBytes { pa in
                    b.withUnsafeBytes { pb in
                        while i < n || j < m {
                            let u = min(n - i, Int(rng.next() % 5000)), v = min(m - j, Int(rng.next() % 5000))
                            let p = UnsafeRawBufferPointer(rebasing: pa[i..<i + u]), q = UnsafeRawBufferPointer(rebasing: pb[j..<j + v])
                            switch rng.next() % 4 {
                            case 0: x.update(p); i += u
                            case 1: DigestStream.update(y, q, x, p); i += u; j += v
                            default: DigestStream.update(x, p, y, q); i += u; j += v
                            }
                        }
                    }
                }
                XCTAssertEqual(digest(x), hex(Digester.digest(algorithm, a)), "\(algorithm), \(n) bytes")
                XCTAssertEqual(digest(y), hex(Digester.digest(algorithm, b)), "\(algorithm), \(m) bytes")
            }
        }
    }

    /// Two threads each feeding a stream of its own meet at the pairing: every block is hashed in a
    /// pair (where pairing is faster here) and both digests are right.
    func testThreadsFeedingTheirOwnStreamsHashInPairs() {
        for algorithm in [Digester.Algorithm.sha256, .md5] {
            let pairing = DigestPairing(patience: 10)
            let blocks = 8, size = 64 << 10
            let data = (0..<2).map { bytes(blocks * size, seed: UInt64(40 + $0)) }
            let streams = (0..<2).map { _ in DigestStream(algorithm) }
            pairing.enter(); pairing.enter()
            DispatchQueue.concurrentPerform(iterations: 2) { t in
                data[t].withUnsafeBytes { all in
                    for b in 0..<blocks { pairing.update(streams[t], UnsafeRawBufferPointer(rebasing: all[b * size..<(b + 1) * size])) }
                }
                pairing.leave()
            }
            for t in 0..<2 { XCTAssertEqual(digest(streams[t]), hex(Digester.digest(algorithm, data[t])), "\(algorithm), thread \(t)") }
            let counts = pairing.counts
            XCTAssertEqual(counts.paired + counts.alone, 2 * blocks * size)
            if DigestStream.pairsFaster(algorithm) {
                XCTAssertEqual(counts.paired, 2 * blocks * size, "\(algorithm): \(counts)")
            } else {
                XCTAssertEqual(counts.alone, 2 * blocks * size, "\(algorithm): \(counts)")
            }
        }
    }

    /// No thread waits for a partner that cannot come: alone at the pairing it hashes at once, and a
    /// waiter is let go when the only other stream leaves.
    func testAStreamAloneDoesNotWait() {
        let pairing = DigestPairing(patience: 30)
        let data = bytes(100_000, seed: 9)
        let s = DigestStream(.md5)
        pairing.enter()
        var started = Date()
        data.withUnsafeBytes { pairing.update(s, $0) }
        XCTAssertLessThan(Date().timeIntervalSince(started), 5)
        XCTAssertEqual(pairing.counts.alone, data.count)

        pairing.enter()   // a second stream that never brings anything, then leaves
        DispatchQueue.global().asyncAfter(deadline: .now() + 0.2) { pairing.leave() }
        started = Date()
        data.withUnsafeBytes { pairing.update(s, $0) }
        let waited = Date().timeIntervalSince(started)
        XCTAssertLessThan(waited, 10, "the waiter was not let go when the other stream left")
        if DigestStream.pairsFaster(.md5) { XCTAssertGreaterThanOrEqual(waited, 0.15, "it did not wait for a partner while one could come") }
        XCTAssertEqual(pairing.counts.alone, 2 * data.count)
        pairing.leave()
        XCTAssertEqual(digest(s), hex(Digester.digest(.md5, data + data)))
    }

    /// Ranges of a file of all kinds of lengths (empty, shorter than a piece, many pieces, overlapping)
    /// hashed two at a time on several threads equal separate hashes; a range past the end fails
    /// naming the file.
    func testRangeDigestsEqualSeparateHashes() throws {
        let t = TempDir(); defer { t.cleanup() }
        let content = bytes(1_000_000, seed: 3)
        let path = t.write("ranges.bin", content)
        let ranges: [(at: Int64, count: Int)] = [(0, 0), (0, 1000), (10, 999_990), (123_456, 77_777), (999_999, 1), (500_000, 4097), (1, 64)]
        let fd = try FileDescriptor(path: path, mode: .read)
        for algorithm in [Digester.Algorithm.sha256, .md5] {
            for width in [1, 3] {
                let got = try FileHasher.digests(algorithm, of: fd.rawValue, path: path, ranges: ranges, width: width, piece: 4096).wait()
                let expected = ranges.map { r in Digester.digest(algorithm, Array(content[Int(r.at)..<Int(r.at) + r.count])) }
                XCTAssertEqual(got, expected, "\(algorithm), width \(width)")
            }
        }
        XCTAssertThrowsError(try FileHasher.digests(.sha256, of: fd.rawValue, path: path, ranges: [(0, 10), (999_000, 5000)], width: 2).wait()) { e in
            XCTAssertTrue("\(e)".contains("ranges.bin"), "\(e)")
        }
        XCTAssertThrowsError(try FileHasher.sha256WithParts(path: path, size: 1_500_000, partSize: 1 << 18)) { e in
            XCTAssertTrue("\(e)".contains("ranges.bin"), "\(e)")
        }
    }
}
