import XCTest
import EMFormats
import TestSupport

final class TIFFProbeTests: XCTestCase {
    func testExampleDropTIFFsAreDescribed() throws {
        let t = TempDir(); defer { t.cleanup() }
        let gen = try ProcessRunner.run("/usr/bin/env", ["python3", Tools.packageRoot + "/examples/generate", "--out", t.path,
                                                         "--proposals", "1", "--samples", "1", "--experiments", "1", "--images", "1", "--size", "64"])
        XCTAssertEqual(gen.status, 0, gen.combined)
        let s = try TIFFProbe.inspect(path: t.file("P2026-001/S01/E001/img_0001.tif"))
        XCTAssertEqual(s.pages.count, 1)
        XCTAssertEqual(s.pages[0].width, 64)
        XCTAssertEqual(s.pages[0].height, 64)
        XCTAssertEqual(s.pages[0].dataType, "uint16")
        XCTAssertEqual(s.pages[0].compression, 1)
        XCTAssertTrue(s.pages[0].description?.contains("Beam.HV") ?? false)
    }

    func testNonTIFFsAndTruncatedFilesFailWithTheirName() throws {
        let t = TempDir(); defer { t.cleanup() }
        let text = t.write("notes.tif", "this is a text file renamed .tif")
        let empty = t.write("empty.tif", "")
        for (p, why) in [(text, "not a readable TIFF"), (empty, "empty (0 bytes)"), (t.file("missing.tif"), "cannot read")] {
            XCTAssertThrowsError(try TIFFProbe.inspect(path: p)) { e in
                XCTAssertTrue("\(e)".hasPrefix(p + ": "), "\(e)")
                XCTAssertTrue("\(e)".contains(why), "\(e)")
            }
        }
        // A valid header whose first directory points past the end of the file.
        let cut = t.write("cut.tif", [0x49, 0x49, 0x2A, 0x00, 0x00, 0x10, 0x00, 0x00, 0, 0])
        XCTAssertThrowsError(try TIFFProbe.inspect(path: cut))
    }
}
