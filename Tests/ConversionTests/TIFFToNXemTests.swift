import XCTest
import Foundation
import Engine
import EMFormats
import ParallelNexus
import Checksums
import TestSupport

final class TIFFToNXemTests: XCTestCase {
    static let ev = "measurement/event1/instrument"

    func converter(key: String? = "task-1", unmapped: TIFFToNXem.Unmapped = .fail) throws -> TIFFToNXem {
        var o = TIFFToNXem.Options(mappings: try MappingSet.load(directory: Tools.packageRoot + "/Mappings", hash: SHA256Hasher.hash))
        o.timezone = "Europe/Rome"
        o.taskKey = key
        o.unmapped = unmapped
        o.atomTypes = "Fe, C"
        return TIFFToNXem(options: o)
    }

    /// Reads back pixels (against tifffile's reading of the TIFF) and selected fields with h5py.
    static let readBack = #"""
import json, sys, h5py, numpy, tifffile
pairs = json.loads(sys.argv[1])
out = {}
for tif, nxs in pairs:
    t = tifffile.TiffFile(tif)
    with h5py.File(nxs, "r") as f:
        e = f["entry1"]
        ev = e["measurement/event1"]
        images = sorted(k for k in ev if k.startswith("image"))
        first = ev[images[0]]
        data = first[[k for k in first if k.startswith("image_")][0]]
        full = [p for p in t.pages if not (p.subfiletype & 1)]
        shape0 = full[0].shape
        pages = [p for p in full if p.shape == shape0]
        src = numpy.stack([p.asarray() for p in pages]) if len(pages) > 1 else pages[0].asarray()
        equal = True
        if src.ndim == 3 and len(pages) == 1:   # RGB(A): one image per sample plane
            planar = full[0].planarconfig == 2
            for c in range(src.shape[0 if planar else 2]):
                plane = src[c] if planar else src[..., c]
                real = ev[images[c]][[k for k in ev[images[c]] if k.startswith("image_")][0]]["real"][()]
                equal = equal and numpy.array_equal(plane, real)
        else:
            equal = numpy.array_equal(src, data["real"][()])
        fields = {}
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and "source_" not in name and obj.size == 1 and obj.ndim == 0:
                v = obj[()]
                fields[name] = v.decode() if isinstance(v, bytes) else (bool(v) if isinstance(v, numpy.bool_) else float(v))
        e.visititems(visit)
        axis_i = data["axis_i"][()]
        out[nxs] = {"equal": bool(equal), "images": len(images), "group": data.name.split("/")[-1],
                    "shape": list(data["real"].shape), "dtype": str(data["real"].dtype),
                    "step_i": float(axis_i[1] - axis_i[0]), "axis_units": data["axis_i"].attrs.get("units", ""),
                    "fields": fields, "kept": sorted(e["measurement/event1/source_metadata"].keys())}
print(json.dumps(out))
"""#

    func testEveryVendorFixtureBecomesValidNXemWithItsPixelsAndSIValues() throws {
        let dir = TempDir("conv"); defer { dir.cleanup() }
        let files = try Fixtures.vendorSet(in: dir.file("in"))
        try FileManager.default.createDirectory(atPath: dir.file("out"), withIntermediateDirectories: true)
        let conv = try converter()
        var reports: [String: TIFFToNXem.Report] = [:]
        for (name, path) in files.sorted(by: { $0.key < $1.key }) {
            reports[name] = try conv.convert(input: path, inputSHA256: nil, output: dir.file("out/" + name.replacingOccurrences(of: ".tif", with: ".nxs")))
        }
        XCTAssertEqual(reports.count, 14)
        XCTAssertEqual(try NexusValidator.problems(reports.values.map(\.output)), [:])

        let pairs = reports.values.map { [$0.input, $0.output] }
        let json = try NexusValidator.runPython(Self.readBack, [String(decoding: try JSONSerialization.data(withJSONObject: pairs), as: UTF8.self)])
        let back = try JSONSerialization.jsonObject(with: Data(json.utf8)) as! [String: [String: Any]]
        for (name, r) in reports {
            let b = back[r.output]!
            XCTAssertEqual(b["equal"] as? Bool, true, "pixels of \(name) differ from the TIFF's")
        }
        func fields(_ name: String) -> [String: Any] { back[reports[name]!.output]!["fields"] as! [String: Any] }
        func num(_ name: String, _ path: String) -> Double? { fields(name)[path] as? Double }
        func str(_ name: String, _ path: String) -> String? { fields(name)[path] as? String }
        func step(_ name: String) -> Double { back[reports[name]!.output]!["step_i"] as! Double }
        let volt = "\(Self.ev)/ebeam_column/electron_source/voltage", mag = "\(Self.ev)/optics/magnification"
        let dwell = "\(Self.ev)/ebeam_column/scan_controller/dwell_time", wd = "\(Self.ev)/optics/working_distance"
        let det = "measurement/instrument/detector1/name"

        // Per vendor: voltage (V), magnification, pixel size (axis step, nm), dwell time (s), working distance (m), detector, time.
        struct Expect { var v: Double; var mag: Double?; var px: Double?; var dwell: Double?; var wd: Double?; var det: String; var time: String }
        let expect: [String: Expect] = [
            "fei_helios.tif": .init(v: 15000, mag: 0.1275 / (1.5e-9 * 64), px: 1.5, dwell: 3e-6, wd: 0.0041, det: "TLD", time: "2024-05-01T10:00:00+02:00"),
            "zeiss_sigma.tif": .init(v: 15000, mag: 5000, px: 1.5, dwell: 1e-7, wd: 0.0085, det: "InLens", time: "2024-01-22T10:00:00+01:00"),
            "tvips_camera.tif": .init(v: 200000, mag: 50000, px: 0.25, dwell: nil, wd: nil, det: "TemCam-XF416", time: "2024-05-01T10:30:00+02:00"),
            "tescan_mira.tif": .init(v: 15000, mag: 5000, px: 15, dwell: 1e-5, wd: 0.0045, det: "SE", time: "2024-05-01T10:00:00+02:00"),
            "jeol_jsm.tif": .init(v: 15000, mag: 5000, px: 1.5, dwell: 1e-5, wd: 0.01, det: "SEI", time: "2024-05-01T10:00:00+02:00"),
            "ela_diffraction.tif": .init(v: 300000, mag: nil, px: nil, dwell: nil, wd: nil, det: "ELA", time: "2024-05-01T10:00:00+02:00"),
            "lab_float64.tif": .init(v: 15000, mag: nil, px: 1.5, dwell: nil, wd: nil, det: "SE", time: "2026-11-10T10:00:00+01:00"),
        ]
        for (name, e) in expect {
            XCTAssertEqual(num(name, volt) ?? -1, e.v, accuracy: e.v * 1e-9, "\(name) voltage")
            if let m = e.mag { XCTAssertEqual(num(name, mag) ?? -1, m, accuracy: m * 1e-6, "\(name) magnification") } else { XCTAssertNil(num(name, mag), name) }
            if let p = e.px { XCTAssertEqual(step(name), p, accuracy: p * 1e-6, "\(name) pixel size (nm)") }
            if let d = e.dwell { XCTAssertEqual(num(name, dwell) ?? -1, d, accuracy: d * 1e-6, "\(name) dwell time") }
            if let w = e.wd { XCTAssertEqual(num(name, wd) ?? -1, w, accuracy: w * 1e-9, "\(name) working distance") }
            XCTAssertEqual(str(name, det), e.det, name)
            XCTAssertEqual(str(name, "start_time"), e.time, name)
        }
        XCTAssertEqual(num("ela_diffraction.tif", "\(Self.ev)/optics/camera_length"), 0.5)
        XCTAssertEqual(str("fei_helios.tif", "measurement/instrument/type"), "fib")
        XCTAssertEqual(num("fei_helios.tif", "\(Self.ev)/stage/rotation") ?? 0, 0.5236, accuracy: 1e-9)
        XCTAssertEqual(num("zeiss_sigma.tif", "\(Self.ev)/stage/rotation") ?? 0, 30 * Double.pi / 180, accuracy: 1e-9, "degrees → rad")
        XCTAssertEqual(str("fei_helios.tif", "sample/atom_types"), "Fe, C")
        XCTAssertEqual(str("fei_helios.tif", "note_input/checksum"), try FileHasher.sha256(path: files["fei_helios.tif"]!).sha256)
        XCTAssertEqual(str("fei_helios.tif", "note_mapping/checksum"), try FileHasher.sha256(path: Tools.packageRoot + "/Mappings/fei-sem.json").sha256)

        // Pixel layouts: stacks, RGB planes, types, thumbnails left out.
        func info(_ name: String) -> [String: Any] { back[reports[name]!.output]! }
        XCTAssertEqual(info("ela_diffraction.tif")["group"] as? String, "image_3d")
        XCTAssertEqual(info("ela_diffraction.tif")["shape"] as? [Int], [4, 32, 32])
        XCTAssertEqual(info("imagej_stack.tif")["shape"] as? [Int], [5, 24, 32])
        XCTAssertEqual(info("imagej_stack.tif")["dtype"] as? String, "float32")
        XCTAssertEqual(step("imagej_stack.tif"), 500, accuracy: 1e-6, "1/XResolution µm → nm")
        XCTAssertEqual(info("rgb_preview.tif")["images"] as? Int, 3)
        XCTAssertEqual(info("rgb_planar.tif")["images"] as? Int, 3)
        XCTAssertEqual(info("ome_tiled.tif")["dtype"] as? String, "int16")
        XCTAssertEqual(step("ome_tiled.tif"), 650, accuracy: 1e-6)
        XCTAssertEqual(info("lab_int8.tif")["dtype"] as? String, "int8")
        XCTAssertEqual(info("lab_uint32.tif")["dtype"] as? String, "uint32")
        XCTAssertEqual(info("zeiss_sigma.tif")["shape"] as? [Int], [48, 64])
        XCTAssertEqual(reports["zeiss_sigma.tif"]!.pagesSkipped, [1])
        XCTAssertTrue(reports["zeiss_sigma.tif"]!.warnings.contains { $0.contains("skipped page(s) 1") })

        // What each vendor fixture maps, and what it keeps only verbatim (everything is kept verbatim too).
        let mappedKeys: [String: Set<String>] = [
            "fei_helios.tif": ["fei.User.Date", "fei.User.Time", "fei.System.SystemType", "fei.System.Dnumber", "fei.System.Type",
                               "fei.System.Software", "fei.System.Source", "fei.Detectors.Name", "fei.Detectors.Mode", "fei.EBeam.HV",
                               "fei.EBeam.EmissionCurrent", "fei.EBeam.LensMode", "fei.Scan.Dwelltime", "fei.EBeam.WD", "fei.EBeam.BeamCurrent",
                               "fei.EBeam.HFW", "fei.Image.MagCanvasRealWidth", "fei.Stage.StageX", "fei.Stage.StageY", "fei.Stage.StageZ",
                               "fei.Stage.StageR", "fei.Stage.StageT", "fei.Stage.StageTb", "fei.Scan.PixelWidth", "fei.Scan.PixelHeight"],
            "zeiss_sigma.tif": ["zeiss.AP_DATE", "zeiss.AP_TIME", "zeiss.SV_INSTRUMENT_ID", "zeiss.SV_SERIAL_NUMBER", "zeiss.SV_VERSION",
                                "zeiss.DP_GUN_TYPE", "zeiss.DP_DETECTOR_CHANNEL", "zeiss.AP_ACTUALKV", "zeiss.AP_DWELL_TIME", "zeiss.AP_MAG",
                                "zeiss.AP_WD", "zeiss.AP_IPROBE", "zeiss.AP_STAGE_AT_X", "zeiss.AP_STAGE_AT_Y", "zeiss.AP_STAGE_AT_Z",
                                "zeiss.AP_STAGE_AT_T", "zeiss.AP_STAGE_AT_R", "zeiss.AP_PIXEL_SIZE"],
            "tvips_camera.tif": ["tvips.DateTime", "tvips.CameraType", "tvips.TemType", "tvips.TemHighTension", "tvips.TemMagnification",
                                 "tvips.PixelSizeX", "tvips.PixelSizeY"],
            "tescan_mira.tif": ["tescan.MAIN.Date", "tescan.MAIN.Time", "tescan.MAIN.Device", "tescan.MAIN.SerialNumber", "tescan.MAIN.Software",
                                "tescan.SEM.Detector", "tescan.SEM.HV", "tescan.SEM.EmissionCurrent", "tescan.SEM.DwellTime", "tescan.SEM.ScanMode",
                                "tescan.MAIN.Magnification", "tescan.SEM.WD", "tescan.SEM.PredictedBeamCurrent", "tescan.SEM.StageX",
                                "tescan.SEM.StageY", "tescan.SEM.StageZ", "tescan.SEM.StageRotation", "tescan.SEM.StageTilt",
                                "tescan.MAIN.PixelSizeX", "tescan.MAIN.PixelSizeY"],
            "jeol_jsm.tif": ["jeol.CM_DATE", "jeol.CM_TIME", "jeol.CM_INSTRUMENT", "jeol.CM_SIGNAL", "jeol.CM_ACCEL_VOLT", "jeol.SM_EMI_CURRENT",
                             "jeol.SM_DWELL_TIME", "jeol.CM_MAG", "jeol.SM_WD", "jeol.SM_PIXEL_SIZE"],
        ]
        let keptKeys: [String: Set<String>] = [
            "fei_helios.tif": ["fei.User.User", "fei.User.UserText", "fei.System.Column", "fei.System.Chamber", "fei.System.Stage",
                               "fei.Beam.HV", "fei.Beam.Spot", "fei.Beam.ScanRotation", "fei.Beam.Beam", "fei.Beam.Scan", "fei.EBeam.Source",
                               "fei.EBeam.ColumnType", "fei.EBeam.ApertureDiameter", "fei.Scan.InternalScan", "fei.Scan.HorFieldsize",
                               "fei.Scan.FrameTime", "fei.Detectors.Number", "fei.TLD.Contrast", "fei.TLD.Brightness", "fei.Image.DigitalContrast"],
            "zeiss_sigma.tif": ["zeiss.AP_APERTURESIZE", "zeiss.AP_VACUUM"],
            "tescan_mira.tif": ["tescan.MAIN.Company", "tescan.MAIN.UserName", "tescan.SEM.SpotSize", "tescan.SEM.ChamberPressure"],
            "jeol_jsm.tif": ["jeol.CM_FORMAT", "jeol.CM_VERSION", "jeol.CM_FULL_SIZE", "jeol.SM_MICRON_BAR", "jeol.SM_MICRON_MARKER", "jeol.SM_SCAN_ROTATION"],
        ]
        for (name, keys) in mappedKeys { XCTAssertEqual(Set(reports[name]!.mapped.keys), keys, "mapped keys of \(name)") }
        for (name, keys) in keptKeys {
            // Zeiss labels also carry their display names (`AP_MAG.name`): kept, never mapped.
            let kept = Set(reports[name]!.kept.filter { !$0.hasSuffix(".name") })
            XCTAssertEqual(kept, keys, "verbatim-only keys of \(name)")
        }
        XCTAssertTrue(reports["tvips_camera.tif"]!.kept.contains("tvips.Comment"))
        // Every source key is in the file verbatim.
        for name in ["fei_helios.tif", "zeiss_sigma.tif", "tescan_mira.tif"] {
            let kept = Set(info(name)["kept"] as! [String])
            let all = Set(reports[name]!.mapped.keys).union(reports[name]!.kept)
            XCTAssertEqual(kept, all, name)
        }
    }

    func testBadInputsFailWithTheirReasonAndLeaveNothing() throws {
        let dir = TempDir("conv"); defer { dir.cleanup() }
        _ = try Fixtures.vendorSet(in: dir.file("in"))
        let bad = try Fixtures.badSet(in: dir.file("in"))
        try FileManager.default.createDirectory(atPath: dir.file("out"), withIntermediateDirectories: true)
        let reasons = [
            "truncated.tif": "not a readable TIFF", "empty.tif": "empty (0 bytes)", "text.tif": "not a readable TIFF",
            "bad_json.tif": "starts like JSON but not valid JSON", "fei_garbage.tif": "FEI tag 34682",
            "tvips_garbage.tif": "TVIPS tag 37706", "unknown_instrument.tif": "no mapping in",
        ]
        let conv = try converter()
        for (name, path) in bad {
            XCTAssertThrowsError(try conv.convert(input: path, inputSHA256: nil, output: dir.file("out/\(name).nxs")), name) { e in
                XCTAssertTrue("\(e)".contains(path), "\(name): \(e)")
                XCTAssertTrue("\(e)".contains(reasons[name]!), "\(name): \(e)")
            }
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir.file("out")), [], "no partial output, no temporary")
        // unmapped: keep converts the unknown instrument, with a warning, and it is still valid NXem.
        let r = try converter(unmapped: .keep).convert(input: bad["unknown_instrument.tif"]!, inputSHA256: nil, output: dir.file("out/u.nxs"))
        XCTAssertNil(r.mapping)
        XCTAssertTrue(r.warnings.contains { $0.contains("no mapping matches") }, "\(r.warnings)")
        XCTAssertEqual(r.kept, ["description.text"])
        XCTAssertEqual(try NexusValidator.problems([r.output]), [:])
    }

    func testSameTaskReusesItsFileAndAnotherTaskWritesANewVersion() throws {
        let dir = TempDir("conv"); defer { dir.cleanup() }
        let files = try Fixtures.vendorSet(in: dir.file("in"))
        let out = dir.file("fei.nxs")
        let first = try converter(key: "k1").convert(input: files["fei_helios.tif"]!, inputSHA256: nil, output: out)
        XCTAssertFalse(first.reused)
        let again = try converter(key: "k1").convert(input: files["fei_helios.tif"]!, inputSHA256: nil, output: out)
        XCTAssertTrue(again.reused)
        XCTAssertEqual(again.outputSHA256, first.outputSHA256)
        let other = try converter(key: "k2").convert(input: files["fei_helios.tif"]!, inputSHA256: nil, output: out)
        XCTAssertEqual(other.output, dir.file("fei.v2.nxs"))
        XCTAssertEqual(try FileHasher.sha256(path: out).sha256, first.outputSHA256, "the first version is untouched")
    }

    /// Uncompressed native-order pixels are written straight from a memory map in whole chunks; a
    /// last, partial chunk goes through a selection. Both must land exactly.
    func testMappedPixelsWithAPartialLastChunkRoundTrip() throws {
        let dir = TempDir("conv"); defer { dir.cleanup() }
        let tif = dir.file("wide.tif")
        _ = try NexusValidator.runPython("""
            import sys; sys.path.insert(0, sys.argv[2]); import emfixtures
            emfixtures.write_tiff(sys.argv[1], [emfixtures.page("uint16", 20000, 30, seed=3, rows_per_strip=7,
                description='{"Beam.HV": "15000", "Scan.PixelSize": "1e-9", "Acquisition.Date": "2026-11-10T10:00:00+01:00"}')])
            """, [tif, Tools.packageRoot + "/examples"])
        let r = try converter().convert(input: tif, inputSHA256: nil, output: dir.file("wide.nxs"))
        XCTAssertEqual(r.shape, [30, 20000])
        let same = try NexusValidator.runPython("""
            import sys, h5py, numpy, tifffile
            a = tifffile.imread(sys.argv[1]); b = h5py.File(sys.argv[2])["entry1/measurement/event1/image1/image_2d/real"]
            print(numpy.array_equal(a, b[()]), b.chunks)
            """, [tif, r.output])
        XCTAssertEqual(same.trimmingCharacters(in: .whitespacesAndNewlines), "True (26, 20000)")
        XCTAssertEqual(try NexusValidator.problems([r.output]), [:])
    }

    /// Mutated fixtures: flipped bytes, truncations, bad tag values. Every one either converts to a
    /// valid file or fails with a message naming the file — never a crash, hang or partial output.
    func testMutatedFixturesNeverCrash() throws {
        let dir = TempDir("fuzz"); defer { dir.cleanup() }
        let files = try Fixtures.vendorSet(in: dir.file("in"), size: 32)
        try FileManager.default.createDirectory(atPath: dir.file("m"), withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: dir.file("out"), withIntermediateDirectories: true)
        var rng = SplitMix(seed: 20261123)
        let conv = try converter(unmapped: .keep)
        var converted: [String] = [], failed = 0
        let sources = files.keys.sorted()
        for i in 0..<240 {
            let name = sources[i % sources.count]
            var bytes = [UInt8](FileManager.default.contents(atPath: files[name]!)!)
            switch i % 4 {
            case 0: for _ in 0..<(1 + Int(rng.next() % 8)) { bytes[Int(rng.next() % UInt64(bytes.count))] ^= UInt8(truncatingIfNeeded: rng.next() | 1) }
            case 1: bytes = Array(bytes.prefix(Int(rng.next() % UInt64(bytes.count))))
            case 2:   // damage the header and first directory area, where sizes and offsets live
                for _ in 0..<4 { bytes[Int(rng.next() % UInt64(min(bytes.count, 64)))] = UInt8(truncatingIfNeeded: rng.next()) }
                let tail = max(0, bytes.count - 400)
                for _ in 0..<6 { bytes[tail + Int(rng.next() % UInt64(bytes.count - tail))] = UInt8(truncatingIfNeeded: rng.next()) }
            default: for _ in 0..<32 { bytes[Int(rng.next() % UInt64(bytes.count))] = UInt8(truncatingIfNeeded: rng.next()) }
            }
            let path = dir.file("m/\(i)-\(name)")
            _ = FileManager.default.createFile(atPath: path, contents: Data(bytes))
            do {
                converted.append(try conv.convert(input: path, inputSHA256: nil, output: dir.file("out/\(i).nxs")).output)
            } catch {
                failed += 1
                XCTAssertTrue("\(error)".contains(path), "error does not name the file: \(error)")
            }
        }
        XCTAssertGreaterThan(failed, 20)
        XCTAssertGreaterThan(converted.count, 20)
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: dir.file("out")).filter { !$0.hasSuffix(".nxs") || $0.hasPrefix(".") }
        XCTAssertEqual(leftovers, [])
        XCTAssertEqual(try NexusValidator.problems(converted), [:])
    }
}
