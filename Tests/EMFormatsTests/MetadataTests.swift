import XCTest
@testable import EMFormats
import TestSupport

final class MetadataTests: XCTestCase {
    func pairs(_ p: [(String, MetaValue)]) -> [String: MetaValue] { Dictionary(p, uniquingKeysWith: { a, _ in a }) }

    func testNestedJSONBecomesTypedDottedKeys() throws {
        let p = pairs(try Flatten.json(#"{"a": {"b": 1, "c": [1, 2.5], "d": "15000", "e": true, "f": [{"g": "x"}]}, "Beam.HV": "3"}"#))
        XCTAssertEqual(p["a.b"], .int(1))
        XCTAssertEqual(p["a.c"], .numbers([1, 2.5]))
        XCTAssertEqual(p["a.d"], .string("15000"), "a JSON string stays a string")
        XCTAssertEqual(p["a.e"], .bool(true))
        XCTAssertEqual(p["a.f.0.g"], .string("x"))
        XCTAssertEqual(p["Beam.HV"], .string("3"))
        XCTAssertThrowsError(try Flatten.json(#"{"a": 1,"#)) { e in XCTAssertTrue("\(e)".contains("line"), "\(e)") }
    }

    func testINIAndKeyValueLines() {
        let ini = Flatten.ini("[Beam]\r\nHV=15000\r\n; comment\n[Scan]\nPixelWidth=1.5e-09\nName = TLD detector\n")!
        XCTAssertEqual(pairs(ini)["Beam.HV"], .int(15000))
        XCTAssertEqual(pairs(ini)["Scan.PixelWidth"], .double(1.5e-9))
        XCTAssertEqual(pairs(ini)["Scan.Name"], .string("TLD detector"))
        XCTAssertNil(Flatten.ini("no sections here"))
        XCTAssertEqual(pairs(Flatten.keyValueLines("ImageJ=1.54f\nslices=5\nunit=micron\n")!)["slices"], .int(5))
    }

    func testZeissLabelValuePairsKeepUnitsAsText() throws {
        let text = "\r\n0\r\nAP_MAG\r\nMag = 5.00 K X\r\nAP_WD\r\nWD = 8.5 mm\r\nAP_DATE\r\nDate :22 Jan 2024\r\n"
        let p = pairs(try Flatten.zeissSEM(text))
        XCTAssertEqual(p["AP_MAG"], .string("5.00 K X"))
        XCTAssertEqual(p["AP_MAG.name"], .string("Mag"))
        XCTAssertEqual(p["AP_DATE"], .string("22 Jan 2024"))
        XCTAssertThrowsError(try Flatten.zeissSEM("random text\nwithout labels"))
    }

    func testOMEAndGenericXML() throws {
        let p = pairs(try Flatten.xml(#"<OME><Image ID="I0"><Pixels PhysicalSizeX="0.65" PhysicalSizeXUnit="µm"><Channel Name="A"/><Channel Name="B"/></Pixels></Image></OME>"#))
        XCTAssertEqual(p["OME.Image.Pixels.PhysicalSizeX"], .double(0.65))
        XCTAssertEqual(p["OME.Image.Pixels.PhysicalSizeXUnit"], .string("µm"))
        XCTAssertEqual(p["OME.Image.Pixels.Channel.Name"], .string("A"))
        XCTAssertEqual(p["OME.Image.Pixels.Channel#2.Name"], .string("B"))
        XCTAssertThrowsError(try Flatten.xml("<a><b attr=\"1></b></a>"))
    }

    func testJEOLSidecarLines() {
        let p = pairs(Flatten.jeolText("$CM_FORMAT JEOL/SEM\n$CM_ACCEL_VOLT 15.00\n$$SM_MICRON_MARKER 100nm\nnoise\n")!)
        XCTAssertEqual(p["CM_ACCEL_VOLT"], .double(15))
        XCTAssertEqual(p["SM_MICRON_MARKER"], .string("100nm"))
    }

    func testTVIPSHeaderSizesAndDamage() throws {
        // Version 1 is 41 int32 + 80 bytes of comment; version 2 adds the EM-MENU block ending with the magic.
        XCTAssertEqual(TVIPSHeader.v1Size, 244)
        var v1 = [UInt8](repeating: 0, count: TVIPSHeader.v1Size)
        v1[0] = 1
        v1[84] = 200   // HighTension (kV in version 1)
        let p = pairs(try TVIPSHeader.parse(v1))
        XCTAssertEqual(p["Version"], .int(1))
        XCTAssertEqual(p["HighTension"], .int(200))
        XCTAssertThrowsError(try TVIPSHeader.parse(Array(v1.prefix(100))))
        var v2 = v1; v2[0] = 2
        XCTAssertThrowsError(try TVIPSHeader.parse(v2 + [UInt8](repeating: 0, count: TVIPSHeader.v2Size))) { e in
            XCTAssertTrue("\(e)".contains("magic"), "\(e)")
        }
    }

    func testUnitsConvertToSIAndRefuseUnknownOrMismatchedUnits() throws {
        XCTAssertEqual(try Units.toSI(15, unit: "kV", expecting: .voltage), 15000)
        XCTAssertEqual(try Units.toSI(8.5, unit: "mm", expecting: .length), 0.0085, accuracy: 1e-15)
        XCTAssertEqual(try Units.toSI(1.5, unit: "µm", expecting: .length), 1.5e-6, accuracy: 1e-18)
        XCTAssertEqual(try Units.toSI(1.5, unit: "μm", expecting: .length), 1.5e-6, accuracy: 1e-18)   // Greek mu accepted on input
        XCTAssertEqual(try Units.toSI(3, unit: "Å", expecting: .length), 3e-10, accuracy: 1e-22)
        XCTAssertEqual(try Units.toSI(100, unit: "ns", expecting: .time), 1e-7, accuracy: 1e-20)
        XCTAssertEqual(try Units.toSI(180, unit: "deg", expecting: .angle), Double.pi, accuracy: 1e-12)
        XCTAssertEqual(try Units.toSI(1, unit: "mbar", expecting: .pressure), 100)
        XCTAssertEqual(try Units.toSI(5, unit: "K X", expecting: .magnification), 5000)
        XCTAssertThrowsError(try Units.toSI(1, unit: "furlong", expecting: .length)) { e in XCTAssertTrue("\(e)".contains("unknown unit 'furlong'")) }
        XCTAssertThrowsError(try Units.toSI(1, unit: "keV", expecting: .voltage))
        XCTAssertThrowsError(try Units.toSI(1, unit: "mm", expecting: .voltage)) { e in XCTAssertTrue("\(e)".contains("length, not a voltage")) }
        XCTAssertEqual(Units.splitQuantity("10.00 K X")?.0, 10)
        XCTAssertEqual(Units.splitQuantity("10.00 K X")?.1, "K X")
        XCTAssertEqual(Units.splitQuantity("3.2e-004 Pa")?.0, 3.2e-4)
        XCTAssertEqual(Units.splitQuantity("8.5mm")?.1, "mm")
        XCTAssertNil(Units.splitQuantity("about ten"))
    }

    func testTimesBecomeTimezoneAwareISO() {
        XCTAssertEqual(MappingTable.isoDate("05/01/2024 10:00:00 AM", format: "MM/dd/yyyy hh:mm:ss a", timezone: "Europe/Rome"), "2024-05-01T10:00:00+02:00")
        XCTAssertEqual(MappingTable.isoDate("22 Jan 2024 10:00:00", format: "dd MMM yyyy HH:mm:ss", timezone: "Europe/Rome"), "2024-01-22T10:00:00+01:00")
        XCTAssertEqual(MappingTable.isoDate("2024-05-01T10:00:00.125+02:00", format: "iso", timezone: "UTC"), "2024-05-01T10:00:00+02:00")
        XCTAssertEqual(MappingTable.isoDate("2024-05-01T08:00:00Z", format: "iso", timezone: "Europe/Rome"), "2024-05-01T08:00:00+00:00")
        XCTAssertEqual(MappingTable.isoDate("2024-05-01T10:00:00", format: "iso", timezone: "America/New_York"), "2024-05-01T10:00:00-04:00")
        XCTAssertNil(MappingTable.isoDate("yesterday", format: "iso", timezone: "UTC"))
    }
}
