import XCTest
@testable import ParallelNexus
import EMFormats
import POSIXFiles
import Checksums
import Synchronization
import TestSupport

final class NXemWriterTests: XCTestCase {
    func minimalDocument(rows: Int = 8, cols: Int = 16) -> NXemDocument {
        var d = NXemDocument()
        d.rootAttributes = ["default": .string("entry1"), "creator": .string("emflow-tests")]
        d.fields = [
            "definition": .init(.string("NXem")),
            "start_time": .init(.string("2024-05-01T10:00:00+02:00")),
            "sample/is_simulation": .init(.bool(false)),
            "sample/atom_types": .init(.string("Fe, C")),
            "sample/preparation_date": .init(.string("2024-04-30T09:00:00+02:00")),
            "measurement/instrument/fabrication/vendor": .init(.string("FEI")),
            "measurement/instrument/fabrication/model": .init(.string("Helios")),
            "measurement/event1/instrument/ebeam_column/electron_source/voltage": .init(.double(15000), units: "V"),
            "measurement/event1/instrument/optics/magnification": .init(.double(5000)),
            "note_input/file_name": .init(.string("file:///x.tif")),
            "measurement/event1/metadata/Beam.HV": .init(.string("15000")),
            "measurement/event1/vendor_block/data": .init(.fixedString("{\"a\": 1}")),
            "measurement/event1/vendor_block/type": .init(.string("application/json")),
        ]
        d.groupClasses = ["measurement/instrument/ebeam_column": "NXebeam_column",
                          "measurement/event1/metadata": "NXcollection", "measurement/event1/vendor_block": "NXnote"]
        d.images = [.init(group: "measurement/event1/image1", type: .uint16, shape: [rows, cols], chunks: [rows, cols],
                          axes: [.init(name: "axis_j", values: (0..<rows).map { Double($0) * 1.5 }, units: "nm", longName: "Coordinate along j-axis (nm)"),
                                 .init(name: "axis_i", values: (0..<cols).map { Double($0) * 1.5 }, units: "nm", longName: "Coordinate along i-axis (nm)")],
                          signalLongName: "Signal",
                          process: ["detector_identifier": .init(.string("detector1")), "input/type": .init(.string("image/tiff")),
                                    "input/file_name": .init(.string("x.tif")), "input/checksum": .init(.string(String(repeating: "0", count: 64))),
                                    "input/algorithm": .init(.string("sha256")), "input/context": .init(.string("IFD0"))])]
        return d
    }

    func testMinimalDocumentIsValidNXemAndPixelsRoundTrip() throws {
        let dir = TempDir("nxw"); defer { dir.cleanup() }
        let path = dir.file("a.nxs")
        let pixels: [UInt16] = (0..<(8 * 16)).map { UInt16($0 * 37 % 65536) }
        var doc = minimalDocument()
        doc.rootAttributes[NXemWriter.taskKeyAttribute] = .string("k123")
        try NXemWriter.write(doc, to: path, compression: .deflate(level: 1)) { _, ds in
            try pixels.withUnsafeBytes { try ds.write(start: [0, 0], count: [8, 16], $0) }
        }
        XCTAssertEqual(NXemWriter.taskKey(ofFileAt: path), "k123")
        XCTAssertEqual(try NexusValidator.problems([path]), [:])
        let back = try HDF5Library.serialized { () throws -> [UInt8] in
            let f = try HDF5File.open(path: path); defer { try? f.close() }
            return try f.readArray("/entry1/measurement/event1/image1/image_2d/real", as: .uint16).bytes
        }
        XCTAssertEqual(back, pixels.withUnsafeBytes { Array($0) })
        // No temporary left next to it.
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir.path), ["a.nxs"])
    }

    /// Fields are written with a 64 KiB type-conversion buffer (HDF5's default of 1 MiB cost ~1 ms
    /// per string): values larger than that go through it in pieces and must still arrive whole.
    func testFieldsLargerThanTheConversionBufferRoundTrip() throws {
        let dir = TempDir("nxw"); defer { dir.cleanup() }
        let path = dir.file("big.h5")
        let long = String((0..<300_000).map { Character(UnicodeScalar(UInt8(97 + $0 % 26))) }) + "é"
        let many = (0..<20_000).map { "item \($0)" }
        let numbers = (0..<100_000).map { Double($0) * 0.5 }
        try HDF5Library.serialized { () throws in
            let f = try HDF5File.create(path: path)
            try f.write("/long", .string(long))
            try f.write("/many", .strings(many))
            try f.write("/numbers", .doubles(numbers))
            try f.write("/flag", .bool(true))
            try f.close()
        }
        let out = try NexusValidator.runPython("""
            import h5py, sys
            with h5py.File(sys.argv[1], "r") as f:
                s = f["long"][()].decode()
                m = [x.decode() for x in f["many"][()]]
                n = f["numbers"][()]
                same = s == "".join(chr(97 + i % 26) for i in range(300000)) + "é"
                print(len(s), same, len(m), m[0], m[-1], len(n), n[-1], bool(f["flag"][()]))
            """, [path])
        let expected = "300001 True 20000 item 0 item 19999 100000 49999.5 True"
        XCTAssertEqual(out.trimmingCharacters(in: .whitespacesAndNewlines), expected)
    }

    func testValidatorCatchesABrokenFile() throws {
        let dir = TempDir("nxw"); defer { dir.cleanup() }
        var doc = minimalDocument()
        doc.fields["measurement/event1/instrument/ebeam_column/electron_source/voltage"] = .init(.double(15), units: "keV")
        try NXemWriter.write(doc, to: dir.file("bad.nxs"), compression: .none) { _, ds in
            try [UInt16](repeating: 0, count: 128).withUnsafeBytes { try ds.write(start: [0, 0], count: [8, 16], $0) }
        }
        let problems = try NexusValidator.problems([dir.file("bad.nxs")])
        XCTAssertTrue(problems[dir.file("bad.nxs")]?.contains("keV") ?? false, "\(problems)")
    }

    func testFailedFillLeavesNoFile() throws {
        let dir = TempDir("nxw"); defer { dir.cleanup() }
        struct Boom: Error {}
        XCTAssertThrowsError(try NXemWriter.write(minimalDocument(), to: dir.file("x.nxs"), compression: .none) { _, _ in throw Boom() })
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir.path), [])
    }

    func testBitshuffleCompressedFileIsValid() throws {
        // scripts/bootstrap installs the plugin (Debian package 'bitshuffle'): its absence is a set-up failure.
        XCTAssertTrue(HDF5Library.filterAvailable(Compression.bitshuffleFilterID),
                      "the bitshuffle HDF5 filter (32008) is missing: run scripts/bootstrap or install Debian's 'bitshuffle'")
        let dir = TempDir("nxw"); defer { dir.cleanup() }
        let pixels = [UInt16](repeating: 7, count: 128)
        try NXemWriter.write(minimalDocument(), to: dir.file("b.nxs"), compression: .bitshuffleLZ4) { _, ds in
            try pixels.withUnsafeBytes { try ds.write(start: [0, 0], count: [8, 16], $0) }
        }
        XCTAssertEqual(try NexusValidator.problems([dir.file("b.nxs")]), [:])
    }

    /// Chunks that HDF5 filters itself (parallel writes, TIFF conversions) go through the vector
    /// compressor registered in the plugin's place (the plugin's own filter on CPUs without AVX2):
    /// the stored chunk is the plugin's bytes, h5py with hdf5plugin reads the pixels back, and the
    /// validator accepts the file.
    func testHDF5FilterPathStoresThePluginsBytes() throws {
        let dir = TempDir("bshuf"); defer { dir.cleanup() }
        let (rows, cols) = (24, 40)
        let pixels = (0..<(rows * cols)).map { UInt16(truncatingIfNeeded: ($0 * 2_654_435_761) >> 7) & 0x0FFF }
        let before = BitshuffleLZ4.chunksCompressedForHDF5
        let doc = minimalDocument(rows: rows, cols: cols)
        try NXemWriter.write(doc, to: dir.file("b.nxs"), compression: .bitshuffleLZ4) { _, ds in
            try pixels.withUnsafeBytes { try ds.write(start: [0, 0], count: [rows, cols], $0) }
        }
        // Without AVX2 HDF5 keeps the plugin's filter; the stored bytes are the same either way.
        let vector = emflowBitshuffleBestLevel > 0
        XCTAssertEqual(BitshuffleLZ4.replacesHDF5Filter, vector)
        XCTAssertEqual(BitshuffleLZ4.chunksCompressedForHDF5 > before, vector, "the chunk went through emflow's filter where the CPU has the vector code")

        let plugin = try XCTUnwrap(BitshuffleLZ4(library: try XCTUnwrap(BitshuffleLZ4.plugin), level: 0))
        var want = [UInt8](repeating: 0, count: plugin.bound(elements: pixels.count, elementSize: 2))
        let n = try XCTUnwrap(pixels.withUnsafeBytes { i in want.withUnsafeMutableBytes { plugin.compress(i, elementSize: 2, into: $0) } })
        let out = try NexusValidator.runPython("""
        import sys, h5py, hdf5plugin, numpy as np
        with h5py.File(sys.argv[1], "r") as f:
            d = f["/entry1/measurement/event1/image1/image_2d/real"]
            print(d.id.read_direct_chunk((0, 0))[1].hex())
            print(",".join(str(int(v)) for v in d[...].ravel()))
        """, [dir.file("b.nxs")])
        let lines = out.split(separator: "\n").map(String.init)
        XCTAssertEqual(lines.first, want[0..<n].map { String(format: "%02x", $0) }.joined(), "stored chunk = the plugin's bytes")
        XCTAssertEqual(lines.dropFirst().first, pixels.map(String.init).joined(separator: ","))
        XCTAssertEqual(try NexusValidator.problems([dir.file("b.nxs")]), [:])
    }
}

/// How the 4D writer cuts a scan: rows shared out to ranks (uneven counts, ranks with none) and
/// steps bounded by the per-rank buffer.
final class ParallelPlanTests: XCTestCase {
    func testRowsAreSharedContiguouslyAndCompletely() {
        for (rows, ranks) in [(7, 1), (7, 2), (7, 3), (2, 3), (0, 2), (256, 5)] {
            var covered: [Int] = []
            for r in 0..<ranks {
                let c = Communicator.testing(rank: r, size: ranks)
                covered += Array(c.share(of: rows))
            }
            XCTAssertEqual(covered, Array(0..<rows), "\(rows) rows on \(ranks) ranks")
        }
        XCTAssertEqual(Communicator.testing(rank: 2, size: 3).share(of: 2), 2..<2, "a rank may own no row")
    }

    func testStepsStayWithinTheBufferAndCoverEveryFrame() {
        // Rows fit: whole rows per step.
        let a = ParallelStackWriter.steps(rows: 3..<10, scanX: 5, frameBytes: 1000, chunkFrames: 1, budget: 12_000)
        XCTAssertEqual(a.map(\.ny), [2, 2, 2, 1])
        XCTAssertTrue(a.allSatisfy { $0.nx == 5 && $0.x == 0 })
        // A row larger than the buffer: runs of whole chunks within a row.
        let b = ParallelStackWriter.steps(rows: 0..<2, scanX: 10, frameBytes: 1000, chunkFrames: 4, budget: 9_000)
        XCTAssertEqual(b.map { [$0.y, $0.x, $0.nx] }, [[0, 0, 8], [0, 8, 2], [1, 0, 8], [1, 8, 2]])
        for steps in [a, b] {
            let frames = steps.flatMap { $0.frames(scanX: steps == a ? 5 : 10) }
            XCTAssertEqual(frames, Array(frames.first!...frames.last!), "contiguous, in order, no gaps")
        }
        XCTAssertEqual(ParallelStackWriter.steps(rows: 4..<4, scanX: 5, frameBytes: 10, chunkFrames: 1, budget: 100), [])
        // Ramped: the first row in eighths of the budget, then as before.
        let r = ParallelStackWriter.rampedSteps(rows: 0..<3, scanX: 10, frameBytes: 1000, chunkFrames: 2, budget: 16_000)
        XCTAssertEqual(r.map { [$0.y, $0.x, $0.nx, $0.ny] }, [[0, 0, 2, 1], [0, 2, 2, 1], [0, 4, 2, 1], [0, 6, 2, 1], [0, 8, 2, 1], [1, 0, 10, 1], [2, 0, 10, 1]])
        XCTAssertEqual(r.flatMap { $0.frames(scanX: 10) }, Array(0..<30))
        XCTAssertEqual(ParallelStackWriter.rampedSteps(rows: 4..<4, scanX: 5, frameBytes: 10, chunkFrames: 1, budget: 100), [])
    }

    /// Chunks that lie back to back in the file are written and hashed as one run.
    func testRunsJoinAdjacentChunksOnly() {
        let l = PreallocatedLayout(extents: [(100, 10), (110, 10), (120, 10), (200, 10), (210, 10)], frameChunks: 5, framesPerChunk: 1, summaryChunkRows: 1)
        XCTAssertEqual(l.runs(0..<5), [0..<3, 3..<5])
        XCTAssertEqual(l.runs(1..<4), [1..<3, 3..<4])
        XCTAssertEqual(l.runs(0..<5, limit: 2), [0..<2, 2..<3, 3..<5])
        XCTAssertEqual(l.runs(2..<2), [])
        XCTAssertEqual(l.end(of: 4), 220)
    }

    /// Rank 0 sends the layout to the other ranks as bytes: they read back the same layout, and
    /// anything else is refused.
    func testLayoutSurvivesItsEncoding() throws {
        let l = PreallocatedLayout(extents: [(4096, 8192), (12_288, 8192), (1 << 40, 800)], frameChunks: 2, framesPerChunk: 2, summaryChunkRows: 256)
        let back = try XCTUnwrap(PreallocatedLayout(encoded: l.encoded))
        XCTAssertEqual(back.extents.map { [$0.offset, $0.length] }, l.extents.map { [$0.offset, $0.length] })
        XCTAssertEqual([back.frameChunks, back.framesPerChunk, back.summaryChunkRows], [2, 2, 256])
        XCTAssertNil(PreallocatedLayout(encoded: []), "no layout (rank 0 had none)")
        XCTAssertNil(PreallocatedLayout(encoded: Array(l.encoded.dropLast(8))), "an extent cut in half")
    }

    /// Uncompressed chunks of whole pages start on a page (direct I/O, no page shared with metadata);
    /// everything else keeps the stripe alignment for objects of a stripe or more.
    func testChunksOfWholePagesStartOnAPage() {
        var o = ParallelStackWriter.Options()
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        XCTAssertEqual(o.placement(chunkBytes: 32 * page), HDF5File.Alignment(threshold: 32 * page, boundary: page))
        XCTAssertEqual(o.placement(chunkBytes: 1 << 20), .stripe(1 << 20), "a chunk of a stripe")
        XCTAssertEqual(o.placement(chunkBytes: 66_560 + 2), .stripe(1 << 20), "EMPAD-like sizes are not whole pages")
        o.alignment = 4 << 20
        XCTAssertEqual(o.placement(chunkBytes: 2 << 20), HDF5File.Alignment(threshold: 2 << 20, boundary: page))
        o.compression = .bitshuffleLZ4
        XCTAssertEqual(o.placement(chunkBytes: 32 * page), .stripe(4 << 20), "compressed chunks vary in size")
        o.alignment = nil
        XCTAssertNil(o.placement(chunkBytes: 32 * page))
        // The chunk index: about 16 leaves, between HDF5's default and 2048.
        XCTAssertEqual(HDF5File.chunkIndexK(chunks: 1), 32)
        XCTAssertEqual(HDF5File.chunkIndexK(chunks: 1024), 32)
        XCTAssertEqual(HDF5File.chunkIndexK(chunks: 8192), 256)
        XCTAssertEqual(HDF5File.chunkIndexK(chunks: 65_536), 2048)
        XCTAssertEqual(HDF5File.chunkIndexK(chunks: 10_000_000), 2048)
    }

    /// Aligned ranges go past the page cache where the file system takes direct I/O, the rest through
    /// it; the file reads back byte for byte either way, also next to bytes written through the cache
    /// (HDF5's metadata) and where direct I/O is switched off or not offered (tmpfs).
    func testDirectWritesLandBesideCachedOnes() throws {
        let dir = TempDir("dio"); defer { dir.cleanup() }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let size = 64 * page + 100
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: page)
        defer { buffer.deallocate() }
        for i in 0..<size { buffer[i] = UInt8(truncatingIfNeeded: (i &* 2_654_435_761) >> 11) }
        for (where_, enabled) in [(dir.path, true), (dir.path, false), ("/dev/shm", true)] {
            let path = where_ + "/direct-\(enabled)-\(getpid()).bin"
            defer { unlink(path) }
            let fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0o644)
            XCTAssertGreaterThanOrEqual(fd, 0)
            defer { close(fd) }
            let cached = UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(buffer)[0..<(page + 10)])
            try FileDescriptor.writeAll(fd, path: path, cached, at: 0)  // "metadata", through the cache
            let w = DirectWriter(fd, path: path, enabled: enabled)
            let expectDirect = enabled && DirectWriter.takesDirectIO(directory: where_)
            XCTAssertEqual(w.isOn, expectDirect, path)
            XCTAssertEqual(w.accepts(offset: 2 * page, count: 3 * page), expectDirect, path)
            XCTAssertFalse(w.accepts(offset: page + 10, count: page), path)
            XCTAssertFalse(w.accepts(offset: 2 * page, count: page + 10), path)
            let all = UnsafeRawBufferPointer(buffer)
            try w.write(UnsafeRawBufferPointer(rebasing: all[(2 * page)..<(34 * page)]), at: 2 * page)   // aligned
            try w.write(UnsafeRawBufferPointer(rebasing: all[(page + 10)..<(2 * page)]), at: page + 10)  // unaligned start
            try w.write(UnsafeRawBufferPointer(rebasing: all[(34 * page)..<size]), at: 34 * page)        // unaligned length
            XCTAssertEqual(w.directBytes, expectDirect ? 32 * page : 0, path)
            var back = [UInt8](repeating: 0, count: size)
            try back.withUnsafeMutableBytes { try FileDescriptor.readFull(fd, path: path, into: $0, at: 0) }
            XCTAssertTrue(back.elementsEqual(all), path)
        }
        XCTAssertFalse(DirectWriter.takesDirectIO(directory: dir.file("missing")))
    }

    /// The hash of a file as it is written: ranges handed over from memory (in file order, not where
    /// the file holds them yet), the bytes between and after them read from the file. The SHA-256 is
    /// that of the finished file, and each range's `done` runs once it is hashed.
    func testHashingTheFileAsItIsWrittenMatchesTheFinishedFile() throws {
        let dir = TempDir("wfh"); defer { dir.cleanup() }
        let path = dir.file("f.bin")
        let size = (3 << 20) + 5
        let bytes = (0..<size).map { UInt8(truncatingIfNeeded: ($0 &* 2_654_435_761) >> 13) }
        let ranges = [4099..<(4099 + (1 << 20) + 17), (2 << 20)..<((2 << 20) + 300)]
        // The file holds everything but the ranges, which the hasher gets from memory only.
        var onDisk = bytes
        for r in ranges { for i in r { onDisk[i] = 0 } }
        XCTAssertTrue(FileManager.default.createFile(atPath: path, contents: Data(onDisk)))
        let fd = open(path, O_RDONLY)
        defer { close(fd) }
        let h = WrittenFileHasher(fd: fd, path: path)
        let done = Mutex(0)
        try bytes.withUnsafeBytes { all in
            for r in ranges { h.append(UnsafeRawBufferPointer(rebasing: all[r]), at: r.lowerBound, done: { done.withLock { $0 += 1 } }) }
            h.drain()
            XCTAssertEqual(done.withLock { $0 }, 2)
            XCTAssertEqual(try h.finish(size: size), SHA256Hasher.hash(bytes))
        }
    }

    /// Before MPI_Finalize every TCP connection of the process sends small messages at once.
    func testFinalizeTurnsNagleOffOnTheProcesssTCPConnections() {
        func socketOption(_ fd: Int32) -> Int32 {
            var v: Int32 = -1; var l = socklen_t(MemoryLayout<Int32>.size)
            XCTAssertEqual(getsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &v, &l), 0)
            return v
        }
        let server = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(server) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET); addr.sin_addr.s_addr = inet_addr("127.0.0.1"); addr.sin_port = 0
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        withUnsafeMutablePointer(to: &addr) { a in
            a.withMemoryRebound(to: sockaddr.self, capacity: 1) { p in
                XCTAssertEqual(bind(server, p, len), 0); XCTAssertEqual(listen(server, 1), 0)
                XCTAssertEqual(getsockname(server, p, &len), 0)
                let client = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
                defer { close(client) }
                XCTAssertEqual(connect(client, p, len), 0)
                let accepted = accept(server, nil, nil)
                defer { close(accepted) }
                XCTAssertEqual(socketOption(client), 0)
                XCTAssertEqual(socketOption(accepted), 0)
                XCTAssertGreaterThanOrEqual(Communicator.sendSmallMessagesAtOnce(), 2)
                XCTAssertNotEqual(socketOption(client), 0)
                XCTAssertNotEqual(socketOption(accepted), 0)
                // Still connected and working.
                var byte: UInt8 = 7
                XCTAssertEqual(send(client, &byte, 1, 0), 1)
                byte = 0
                XCTAssertEqual(recv(accepted, &byte, 1, 0), 1)
                XCTAssertEqual(byte, 7)
            }
        }
    }

    /// Frame sums are exact at the extremes: full-scale 16-bit frames of 256×256 pixels (the largest
    /// summed in 32 bits) and of 257×256 (summed in 64 bits), and 8-bit, signed and float frames.
    func testFrameSumsAreExactAtFullScale() {
        func sums(_ type: PixelType, _ h: Int, _ w: Int, frames: Int, fill: (UnsafeMutableRawBufferPointer) -> Void) -> [Double] {
            let g = ScanGeometry(scanY: 1, scanX: frames, frameHeight: h, frameWidth: w, pixelType: type)
            let b = UnsafeMutableRawBufferPointer.allocate(byteCount: frames * g.frameBytes, alignment: 64)
            defer { b.deallocate() }
            fill(b)
            return ParallelStackWriter.frameSums(b, frames: frames, geometry: g)
        }
        XCTAssertEqual(sums(.uint16, 256, 256, frames: 2) { $0.initializeMemory(as: UInt8.self, repeating: 0xFF) }, [65_536 * 65_535, 65_536 * 65_535])
        XCTAssertEqual(sums(.uint16, 257, 256, frames: 1) { $0.initializeMemory(as: UInt8.self, repeating: 0xFF) }, [257 * 256 * 65_535])
        XCTAssertEqual(sums(.uint8, 300, 300, frames: 1) { $0.initializeMemory(as: UInt8.self, repeating: 0xFF) }, [90_000 * 255])
        XCTAssertEqual(sums(.int16, 4, 4, frames: 2) { $0.initializeMemory(as: Int16.self, repeating: -3) }, [-48, -48])
        XCTAssertEqual(sums(.float32, 2, 3, frames: 1) { $0.initializeMemory(as: Float.self, repeating: 0.5) }, [3])
        // Each frame its own sum: frame k holds the value k.
        XCTAssertEqual(sums(.uint16, 16, 16, frames: 3) { b in
            for k in 0..<3 { UnsafeMutableRawBufferPointer(rebasing: b[(k * 512)..<((k + 1) * 512)]).initializeMemory(as: UInt16.self, repeating: UInt16(k)) }
        }, [0, 256, 512])
    }
}
