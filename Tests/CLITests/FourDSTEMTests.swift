import XCTest
import Foundation
import TestSupport
import ParallelNexus

/// `convert` with `to: nxem-4d` as users run it: detector files of each format into NXem on 1, 2
/// and 3 MPI ranks (mpirun) with each compression, read back with h5py frame by frame against the
/// generator's own checksums, validated by pynxtools; bad input fails before a file appears.
final class FourDSTEMTests: XCTestCase {
    var t: TempDir!
    override func setUp() { t = TempDir("emflow-4d") }
    override func tearDown() { t?.cleanup() }

    func emflow(_ args: [String], environment: [String: String]? = nil) throws -> ProcessOutput {
        try ProcessRunner.run(Tools.emflow, args, environment: environment, cwd: t.path)
    }

    /// A one-stage workflow converting `include` under `drop` with `with` entries (YAML flow text).
    func spec(_ name: String, include: String, ranks: Int, with: String, drop: String = "drop") -> String {
        t.write("\(name).yaml", """
            name: \(name)
            inputs: [{path: \(drop), include: ["\(include)"]}]
            outputs: {root: out-\(name)}
            workspace: ws-\(name)
            context: {instrument: {vendor: Thermo Fisher Scientific, model: Spectra 300}}
            stages:
              convert:
                uses: convert
                resources: {ranks: \(ranks)}
                with: {to: nxem-4d, scan_step_nm: 0.5, detector_step: 0.02, detector_units: 1/nm, voltage_kv: 300, \(with)}
            """)
    }

    func outputs(_ name: String) throws -> [String] {
        try ProcessRunner.shell("find '\(t.path)/out-\(name)' -name '*.nxs' | sort").stdout.split(separator: "\n").map(String.init)
    }

    func temporaries(_ name: String) throws -> String {
        try ProcessRunner.shell("find '\(t.path)/out-\(name)' -name '.emflow-tmp-*' 2>/dev/null").stdout
    }

    /// An odd number of scan rows (7) split over 1, 2 and 3 ranks, for none, deflate and bitshuffle+LZ4.
    /// bitshuffle+LZ4 on 2 ranks (one frame a chunk) is compressed by both and stored by rank 0; on 3
    /// (two frames a chunk, which do not tile the 5-frame rows) it goes through HDF5's collective writes.
    func testEveryCompressionOnOneTwoThreeRanksKeepsEveryFrame() throws {
        let mib = try FourDFixtures.generate(in: t.file("drop"), ["--format", "mib", "--scan", "7x5", "--frame", "32x24", "--depth", "12"])
        var pairs: [(String, String)] = []
        for ranks in [1, 2, 3] {
            for comp in ["none", "deflate", "bitshuffle"] {
                let name = "r\(ranks)-\(comp)"
                let run = try emflow(["run", spec(name, include: "*.mib", ranks: ranks, with: "compression: \(comp), chunk_frames: \(ranks == 3 ? 2 : 1)")])
                XCTAssertEqual(run.status, 0, "\(name): \(run.combined)")
                let out = try outputs(name)
                XCTAssertEqual(out.count, 1, name)
                pairs += out.map { ($0, mib) }
                // More than one rank: one MPI launch, whose rank 0 wrote the result.
                let results = try ProcessRunner.shell("cat '\(t.path)'/ws-\(name)/runs/*/mpi/*.result 2>/dev/null").stdout
                if ranks > 1 {
                    XCTAssertTrue(results.contains("on \(ranks) rank(s)"), "\(name): \(results)")
                    let launch = try ProcessRunner.shell("grep -h '^launch:' '\(t.path)'/ws-\(name)/runs/*/mpi/*.log").stdout
                    XCTAssertTrue(launch.hasPrefix("launch: mpirun -np \(ranks) "), launch)
                    let envLine = try ProcessRunner.shell("grep -h '^environment:' '\(t.path)'/ws-\(name)/runs/*/mpi/*.log").stdout
                    XCTAssertTrue(envLine.contains("OMPI_MCA_pml=ob1 OMPI_MCA_btl=self,vader HWLOC_COMPONENTS=-linuxio,-pci HWLOC_PLUGINS_BLACKLIST=hwloc_pci,"), envLine)
                    XCTAssertTrue(envLine.contains(" PMIX_MCA_gds=hash OMPI_MCA_mpi_yield_when_idle=1"), envLine)
                } else { XCTAssertTrue(results.isEmpty) }
                let notes = try ProcessRunner.shell("cat '\(t.path)'/ws-\(name)/runs/*/results/convert/*.jsonl").stdout
                XCTAssertEqual(notes.contains("chunks compressed on every rank and stored by rank 0"), ranks == 2 && comp == "bitshuffle", "\(name): \(notes)")
            }
        }
        let checks = try FourDFixtures.check(pairs)
        XCTAssertEqual(checks.count, 9, checks.joined(separator: "\n"))
        XCTAssertTrue(checks.allSatisfy { $0.hasPrefix("ok ") }, checks.joined(separator: "\n"))
        // Compressed means smaller: Poisson counts shrink well over 2× with either filter.
        let compressed = checks.filter { $0.contains("32008") || $0.contains("gzip") }
        XCTAssertEqual(compressed.count, 6, checks.joined(separator: "\n"))
        XCTAssertTrue(compressed.allSatisfy { Double($0.components(separatedBy: "ratio=").last ?? "") ?? 0 > 2 }, compressed.joined(separator: "\n"))
        XCTAssertEqual(try NexusValidator.problems(pairs.map(\.0)), [:])
        // A second run finds the work done.
        let again = try emflow(["run", t.file("r2-bitshuffle.yaml")])
        XCTAssertEqual(again.status, 0, again.combined)
        XCTAssertTrue(again.stdout.contains("convert: 0 done, 1 already done"), again.stdout)
    }

    /// The usual facility run: a checksum stage first, so the input's SHA-256 is known, and the output
    /// hashed as it is written instead of in a second pass. One process fills the chunks HDF5 reserved
    /// itself; 2 and 3 ranks (one node) take the steps in turns, each filling its chunks itself, and
    /// rank 0 hashes each round from the memory the ranks share (3 ranks: the last round leaves a rank
    /// without a step). Small buffers (many steps),
    /// two frames a chunk, more scan rows (301) than one chunk of the summary image holds (256), and a
    /// scan whose rows are larger than the buffer (steps within a row, dealt out too): every frame and
    /// sum must still be right, the file valid, and the SHA-256 in the catalog the file's own.
    func testKnownInputChecksumHashesTheOutputWhileWriting() throws {
        let tall = try FourDFixtures.generate(in: t.file("drop-tall"), ["--format", "raw", "--scan", "301x4", "--frame", "64x64", "--name", "tall"])
        let wide = try FourDFixtures.generate(in: t.file("drop-wide"), ["--format", "raw", "--scan", "5x160", "--frame", "64x64", "--name", "wide"])
        // The frames go with direct I/O where the file system takes it, or through the page cache when
        // told not to (names ending in "c").
        let direct = DirectWriter.takesDirectIO(directory: t.path)
        for (name, input, scan, ranks) in [("tall1", tall, "301x4", 1), ("tall1c", tall, "301x4", 1), ("tall2", tall, "301x4", 2),
                                           ("tall2c", tall, "301x4", 2), ("tall3", tall, "301x4", 3), ("wide2", wide, "5x160", 2)] {
            t.write("\(name).yaml", """
                name: \(name)
                inputs: [{path: drop-\(name.hasPrefix("tall") ? "tall" : "wide"), include: ["*.bin"]}]
                outputs: {root: out-\(name)}
                workspace: ws-\(name)
                stages:
                  checksum: {uses: checksum, with: {manifest: false}}
                  convert:
                    uses: convert
                    needs: [checksum]
                    resources: {ranks: \(ranks)}
                    with: {to: nxem-4d, dtype: uint16, frame_shape: 64x64, scan_shape: \(scan), compression: none, chunk_frames: 2, buffer_mib: 1, direct_io: \(!name.hasSuffix("c"))}
                """)
            let run = try emflow(["run", "--json", t.file("\(name).yaml")])
            XCTAssertEqual(run.status, 0, run.combined)
            let notes = try ProcessRunner.shell("cat '\(t.path)'/ws-\(name)/runs/*/results/convert/*.jsonl").stdout
            XCTAssertTrue(notes.contains("on \(ranks) rank(s)") && notes.contains("output hashed while written"), notes)
            XCTAssertEqual(notes.contains("frames written with direct I"), !name.hasSuffix("c") && direct, "\(name), direct I/O here: \(direct): \(notes)")
            let out = try outputs(name)
            XCTAssertEqual(out.count, 1)
            let checks = try FourDFixtures.check(out.map { ($0, input) })
            let frames = scan == "301x4" ? 1204 : 800
            XCTAssertTrue(checks.count == 1 && checks[0].hasPrefix("ok ") && checks[0].contains("frames=\(frames)/\(frames)"), checks.joined(separator: "\n"))
            XCTAssertEqual(try NexusValidator.problems(out), [:])
            let listed = try emflow(["catalog", "ls", "--spec", t.file("\(name).yaml"), "--outputs", "--json"])
            let rows = try JSONSerialization.jsonObject(with: Data(listed.stdout.utf8)) as? [[String: Any]] ?? []
            let recorded = rows.first { ($0["uri"] as? String) == out[0] }?["sha256"] as? String
            let actual = try ProcessRunner.shell("sha256sum '\(out[0])' | cut -d' ' -f1").stdout.trimmingCharacters(in: .whitespacesAndNewlines)
            XCTAssertEqual(recorded, actual, "\(name): \(listed.stdout)")
            XCTAssertEqual(try temporaries(name), "")
        }
    }

    /// Raw big-endian frames with per-frame header and footer, EMPAD, a TIFF stack, a detector HDF5
    /// file, and 1-, 6- and 24-bit MIB counters, each on 2 ranks.
    func testEachDetectorFormat() throws {
        let d = t.file("drop")
        let cases: [(String, [String], String)] = [
            ("raw", ["--format", "raw", "--scan", "5x3", "--frame", "16x20", "--big-endian", "--frame-header", "16", "--frame-footer", "8"],
             "dtype: uint16, frame_shape: 16x20, byte_order: big, frame_header: 16, frame_footer: 8, scan_shape: 5x3"),
            // EMPAD's scan shape comes from its file name.
            ("empad", ["--format", "empad", "--scan", "3x4", "--name", "scan_x4_y3"], "compression: bitshuffle"),
            ("tiff", ["--format", "tiff", "--scan", "3x5", "--frame", "24x24"], "scan_shape: 3x5, compression: deflate"),
            ("hdf5", ["--format", "hdf5", "--scan", "5x2", "--frame", "16x16", "--dtype", "uint32"], "dataset: /entry/data/data, scan_shape: 5x2"),
            ("mib1", ["--format", "mib", "--scan", "3x3", "--frame", "32x32", "--depth", "1"], "compression: bitshuffle"),
            ("mib6", ["--format", "mib", "--scan", "3x2", "--frame", "16x16", "--depth", "6"], "compression: none"),
            ("mib24", ["--format", "mib", "--scan", "4x4", "--frame", "16x16", "--depth", "24"], "compression: deflate"),
        ]
        var pairs: [(String, String)] = []
        for (name, gen, with) in cases {
            let src = try FourDFixtures.generate(in: d + "/" + name, ["--name", name] + gen)
            let ext = (src as NSString).pathExtension
            let run = try emflow(["run", spec(name, include: "*.\(ext)", ranks: 2, with: with, drop: "drop/\(name)")])
            XCTAssertEqual(run.status, 0, "\(name): \(run.combined)")
            let out = try outputs(name)
            XCTAssertEqual(out.count, 1, "\(name): \(out)")
            pairs += out.map { ($0, src) }
        }
        let checks = try FourDFixtures.check(pairs)
        XCTAssertEqual(checks.count, cases.count, checks.joined(separator: "\n"))
        XCTAssertTrue(checks.allSatisfy { $0.hasPrefix("ok ") }, checks.joined(separator: "\n"))
        XCTAssertEqual(try NexusValidator.problems(pairs.map(\.0)), [:])
        // The file says what it is: calibrated axes, the detector's header verbatim, the input's checksum.
        let facts = try NexusValidator.runPython("""
            import sys, h5py, hashlib
            f = h5py.File(sys.argv[1], "r"); g = f["entry1/measurement/event1/image1/image_4d"]
            print(list(g.attrs["axes"]), g["axis_m"].attrs["units"], g["axis_i"].attrs["units"], round(float(g["axis_k"][1]), 3))
            print(f["entry1/note_input/checksum"][()].decode() == hashlib.sha256(open(sys.argv[2], "rb").read()).hexdigest())
            print("hdr: Counter Depth (number)" in f["entry1/measurement/event1/detector_metadata"])
            """, [pairs.first { $0.1.hasSuffix("mib6.mib") }!.0, pairs.first { $0.1.hasSuffix("mib6.mib") }!.1])
        XCTAssertEqual(facts.split(separator: "\n").map(String.init), ["['axis_m', 'axis_k', 'axis_j', 'axis_i'] nm 1/nm 0.5", "True", "True"], facts)
    }

    /// A truncated MIB, a frame header that disagrees with the first, a declared scan shape that
    /// does not fit, and a missing bitshuffle filter: one clear error each, the good item beside
    /// them still converts, and no file (final or temporary) is left for the bad ones.
    func testBadInputFailsClearlyAndLeavesNoFile() throws {
        let good = try FourDFixtures.generate(in: t.file("drop"), ["--format", "mib", "--scan", "7x5", "--frame", "32x24", "--name", "good"])
        let bytes = [UInt8](FileManager.default.contents(atPath: good)!)
        let record = 384 + 32 * 24 * 2
        _ = t.write("drop/truncated.mib", Array(bytes.dropLast(100)))
        var mismatch = bytes
        let at = record * 3 + 30   // frame 3's pixel depth field: U16 → U08
        XCTAssertEqual(String(decoding: mismatch[at..<(at + 3)], as: UTF8.self), "U16")
        mismatch.replaceSubrange(at..<(at + 3), with: Array("U08".utf8))
        _ = t.write("drop/mismatch.mib", mismatch)
        let run = try emflow(["run", spec("bad", include: "*.mib", ranks: 2, with: "scan_shape: 7x5, buffer_mib: 1")])
        XCTAssertNotEqual(run.status, 0, run.combined)
        XCTAssertTrue(run.stdout.contains("truncated.mib: truncated or mis-declared: 34 whole frame(s) of 1920 bytes and 1820 bytes more"), run.stdout)
        XCTAssertTrue(run.stdout.contains("mismatch.mib: header/size mismatch: frame 3 says 24×32 U08"), run.stdout)
        XCTAssertEqual(try outputs("bad").map { ($0 as NSString).lastPathComponent }, ["good.nxs"])
        XCTAssertEqual(try temporaries("bad"), "")

        // The same mismatch found mid-write, in a step of the second of two ranks on one node: uncompressed
        // (the input's checksum known), each rank filling its chunks itself; bitshuffle+LZ4, both ranks
        // compressing while rank 0 stores the chunks. Both stop and nothing is left. Mended, the same
        // command converts it with every frame right: eight steps, four a rank, so each rank's buffers
        // (or slots) are used again once rank 0 is done with them.
        let long = try FourDFixtures.generate(in: t.file("drop-long"), ["--format", "mib", "--scan", "64x16", "--frame", "64x64", "--name", "long"])
        let clean = [UInt8](FileManager.default.contents(atPath: long)!)
        let lateAt = (384 + 64 * 64 * 2) * (5 * 8 * 16 + 3) + 30   // 1 MiB steps of 8 rows: step 5 is rank 1's third
        XCTAssertEqual(String(decoding: clean[lateAt..<(lateAt + 3)], as: UTF8.self), "U16")
        var broken = clean
        broken.replaceSubrange(lateAt..<(lateAt + 3), with: Array("U08".utf8))
        for (name, compression, way) in [("midway", "none", "output hashed while written"),
                                         ("midway-bs", "bitshuffle", "chunks compressed on every rank and stored by rank 0")] {
            _ = t.write("drop-long/long.mib", broken)
            t.write("\(name).yaml", """
                name: \(name)
                inputs: [{path: drop-long, include: ["*.mib"]}]
                outputs: {root: out-\(name)}
                workspace: ws-\(name)
                stages:
                  checksum: {uses: checksum, with: {manifest: false}}
                  convert: {uses: convert, needs: [checksum], resources: {ranks: 2}, with: {to: nxem-4d, compression: \(compression), buffer_mib: 1}}
                """)
            let midway = try emflow(["run", t.file("\(name).yaml")])
            XCTAssertEqual(midway.status, 1, midway.combined)
            XCTAssertTrue(midway.stdout.contains("rank 1: ") && midway.stdout.contains("header/size mismatch: frame 643 says 64×64 U08"), midway.stdout)
            XCTAssertEqual(try outputs(name), [])
            XCTAssertEqual(try temporaries(name), "")
            _ = t.write("drop-long/long.mib", clean)
            let mended = try emflow(["run", t.file("\(name).yaml")])
            XCTAssertEqual(mended.status, 0, mended.combined)
            let notes = try ProcessRunner.shell("cat '\(t.path)'/ws-\(name)/runs/*/results/convert/*.jsonl").stdout
            XCTAssertTrue(notes.contains("on 2 rank(s)") && notes.contains(way), notes)
            let out = try outputs(name)
            let checks = try FourDFixtures.check(out.map { ($0, long) })
            XCTAssertTrue(checks.count == 1 && checks[0].hasPrefix("ok ") && checks[0].contains("frames=1024/1024"), checks.joined(separator: "\n"))
            XCTAssertEqual(try NexusValidator.problems(out), [:])
        }

        // A declared shape that does not fit the file size.
        _ = t.write("raw/frames.bin", [UInt8](repeating: 7, count: 10 * 16 * 16 * 2))
        let shape = try emflow(["run", spec("shape", include: "*.bin", ranks: 3, with: "dtype: uint16, frame_shape: 16x16, scan_shape: 4x4", drop: "raw")])
        XCTAssertNotEqual(shape.status, 0)
        XCTAssertTrue(shape.stdout.contains("the declared scan shape 4×4 needs 16 frames, but the file holds 10"), shape.stdout)
        XCTAssertEqual(try outputs("shape"), [])
        XCTAssertEqual(try temporaries("shape"), "")

        // bitshuffle asked for where the filter cannot be found: refused before any task runs.
        let empty = t.file("no-plugins")
        try FileManager.default.createDirectory(atPath: empty, withIntermediateDirectories: true)
        var env = ProcessInfo.processInfo.environment
        env["HDF5_PLUGIN_PATH"] = empty
        let nofilter = try emflow(["run", spec("nofilter", include: "good.mib", ranks: 2, with: "compression: bitshuffle")], environment: env)
        XCTAssertNotEqual(nofilter.status, 0)
        XCTAssertTrue(nofilter.combined.contains("bitshuffle HDF5 filter (id 32008)"), nofilter.combined)
        XCTAssertEqual(try outputs("nofilter"), [])
    }
}
