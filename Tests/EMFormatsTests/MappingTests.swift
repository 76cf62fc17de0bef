import XCTest
import EMFormats
import Checksums
import TestSupport

final class MappingTests: XCTestCase {
    func parse(_ text: String) throws -> MappingTable { try MappingTable.parse(text: text, file: "m.json", sha256: "x") }

    func mapping(_ fields: String) -> String {
        """
        {
          "emflow_mapping": 1,
          "name": "t",
          "match": [{"key": "fei.Beam.HV"}],
          "fields": [
            \(fields)
          ]
        }
        """
    }

    func assertError(_ text: String, line: Int, contains: String, file: StaticString = #filePath, lineNo: UInt = #line) {
        XCTAssertThrowsError(try parse(text), file: file, line: lineNo) { e in
            guard let m = e as? MappingError else { return XCTFail("\(e)", file: file, line: lineNo) }
            XCTAssertEqual(m.line, line, "\(m)", file: file, line: lineNo)
            XCTAssertTrue(m.description.contains(contains), "\(m)", file: file, line: lineNo)
            XCTAssertTrue(m.description.hasPrefix("m.json:\(line):"), "\(m)", file: file, line: lineNo)
        }
    }

    func testMappingErrorsNameTheLine() {
        assertError(mapping(#"{"to": "measurement/event1/instrument/ebeam_column/electron_source/voltag", "from": "x", "unit": "V"}"#),
                    line: 6, contains: "did you mean 'measurement/event1/instrument/ebeam_column/electron_source/voltage'")
        assertError(mapping(#"{"to": "measurement/event1/instrument/ebeam_column/electron_source/voltage", "from": "x", "unit": "furlong"}"#),
                    line: 6, contains: "unknown unit 'furlong'")
        assertError(mapping(#"{"to": "measurement/event1/instrument/optics/working_distance", "from": "x"}"#),
                    line: 6, contains: "give the source \"unit\"")
        assertError(mapping(#"{"to": "measurement/event1/instrument/optics/working_distance", "from": "x", "unit": "kV"}"#),
                    line: 6, contains: "is a voltage, not a length")
        assertError(mapping(#"{"to": "start_time", "from": "x"}"#), line: 6, contains: "\"datetime\"")
        assertError(mapping(#"{"to": "measurement/instrument/type", "value": "SEM"}"#), line: 6, contains: "must be one of sem, fib, tem")
        assertError(mapping(#"{"to": "sample/name", "from": "x", "untis": "V"}"#), line: 6, contains: "did you mean 'unit'")
        assertError("{\n \"emflow_mapping\": 1,\n \"name\": \"t\",\n \"fields\": [\n  {\"to\": \"sample/name\", \"from\": \"x\"},\n", line: 6, contains: "not valid JSON")
        assertError("{\"emflow_mapping\": 2, \"name\": \"t\", \"fields\": []}", line: 1, contains: "emflow_mapping")
        assertError("{\"emflow_mapping\": 1, \"name\": \"t\", \"version\": [2], \"fields\": []}", line: 1, contains: "the mapping's own version")
    }

    func testDeclaredVersionIsKept() throws {
        let numbered = try MappingTable.parse(text: #"{"emflow_mapping": 1, "name": "t", "version": 3, "fields": []}"#, file: "t.json", sha256: "s")
        XCTAssertEqual(numbered.version, "3")
        let text = try MappingTable.parse(text: #"{"emflow_mapping": 1, "name": "t", "version": "2026-11b", "fields": []}"#, file: "t.json", sha256: "s")
        XCTAssertEqual(text.version, "2026-11b")
        XCTAssertNil(try MappingTable.parse(text: #"{"emflow_mapping": 1, "name": "t", "fields": []}"#, file: "t.json", sha256: "s").version)
    }

    func testApplyConvertsToSIAndReportsWhatItUsed() throws {
        let t = try parse(mapping("""
            {"to": "measurement/event1/instrument/ebeam_column/electron_source/voltage", "from": "zeiss.AP_ACTUALKV", "parse": "quantity"},
                {"to": "measurement/event1/instrument/optics/magnification", "from": "zeiss.AP_MAG", "parse": "quantity"},
                {"to": "measurement/event1/instrument/optics/working_distance", "from": "fei.EBeam.WD", "unit": "m", "required": true},
                {"to": "measurement/instrument/type", "from": "fei.System.Type", "map": {"DualBeam": "fib", "*": "sem"}},
                {"to": "sample/name", "from": "not.there"}
            """))
        var md = SourceMetadata()
        md.set("fei.Beam.HV", .int(15000)); md.set("fei.EBeam.WD", .double(0.0041)); md.set("fei.System.Type", .string("DualBeam"))
        md.set("zeiss.AP_ACTUALKV", .string("15.00 kV")); md.set("zeiss.AP_MAG", .string("10.00 K X"))
        let m = try t.apply(to: md, defaultTimezone: "UTC")
        XCTAssertEqual(m.values["measurement/event1/instrument/ebeam_column/electron_source/voltage"], .quantity(15000, unit: "V"))
        XCTAssertEqual(m.values["measurement/event1/instrument/optics/magnification"], .quantity(10000, unit: nil))
        XCTAssertEqual(m.values["measurement/event1/instrument/optics/working_distance"], .quantity(0.0041, unit: "m"))
        XCTAssertEqual(m.values["measurement/instrument/type"], .text("fib"))
        XCTAssertNil(m.values["sample/name"], "an absent optional key is skipped")
        XCTAssertEqual(m.used["zeiss.AP_MAG"], "measurement/event1/instrument/optics/magnification")
        XCTAssertEqual(t.score(md), 1)

        // A value with a unit the table does not know fails the file, naming key and rule line.
        md.set("zeiss.AP_ACTUALKV", .string("15.00 furlongs"))
        XCTAssertThrowsError(try t.apply(to: md, defaultTimezone: "UTC")) { e in
            XCTAssertTrue("\(e)".contains("zeiss.AP_ACTUALKV") && "\(e)".contains("unknown unit 'furlongs'") && "\(e)".contains("m.json:6"), "\(e)")
        }
    }

    func testShippedMappingsAllLoad() throws {
        let set = try MappingSet.load(directory: Tools.packageRoot + "/Mappings", hash: SHA256Hasher.hash)
        XCTAssertGreaterThanOrEqual(set.tables.count, 8)
        for needed in ["fei-sem", "zeiss-smartsem", "tvips-tem-camera", "tescan-sem", "jeol-sem", "ela-diffraction"] {
            XCTAssertNotNil(set.named(needed), needed)
        }
    }
}
