import XCTest
@testable import Engine
import Catalog

/// `--select` as researchers type it: terms, quoting, lists, dates, and the errors that name the problem.
final class SelectionTests: XCTestCase {
    func testTermsListsQuotesDatesAndPaths() throws {
        let s = try Selection(#"proposal=P1 sample=S01,S02 instrument="Thermo Fisher*" date=2026-11-01..2026-11-05 mapping_version=2 output=out/a.nxs"#,
                              workflow: "w", directory: "/work")
        XCTAssertEqual(s.outputs.proposal, ["P1"])
        XCTAssertEqual(s.outputs.sample, ["S01", "S02"])
        XCTAssertEqual(s.outputs.instrument, ["Thermo Fisher*"], "a glob is kept as it is")
        XCTAssertEqual(s.outputs.dateFrom, "2026-11-01")
        XCTAssertEqual(s.outputs.dateTo, "2026-11-05")
        XCTAssertEqual(s.outputs.mappingVersion, ["2"])
        XCTAssertEqual(s.outputs.output, ["/work/out/a.nxs"])
        XCTAssertTrue(s.converted)
        XCTAssertFalse(s.failed)
        XCTAssertEqual(try Selection("instrument=Helios", workflow: nil, directory: "/").outputs.instrument, ["*Helios*"], "a word matches anywhere")
        let month = try Selection("date=2026-11", workflow: nil, directory: "/")
        XCTAssertEqual([month.outputs.dateFrom, month.outputs.dateTo], ["2026-11", "2026-11"])
        let open = try Selection("date=..2026-10-31", workflow: nil, directory: "/")
        XCTAssertNil(open.outputs.dateFrom)
        XCTAssertEqual(open.outputs.dateTo, "2026-10-31")
        let failed = try Selection("state=failed sample=S1", workflow: nil, directory: "/")
        XCTAssertTrue(failed.failed)
        XCTAssertFalse(failed.converted)
        XCTAssertTrue(failed.fieldsMatch(["proposal": "P", "sample": "S1"]))
        XCTAssertFalse(failed.fieldsMatch(["proposal": "P", "sample": "S2"]))
    }

    func testBadSelectionsSayWhatIsWrong() {
        func message(_ text: String) -> String {
            do { _ = try Selection(text, workflow: nil, directory: "/"); return "" } catch { return "\(error)" }
        }
        XCTAssertTrue(message("sampel=S1").contains("did you mean sample"))
        XCTAssertTrue(message("proposal").contains("not key=value"))
        XCTAssertTrue(message("date=yesterday").contains("2026-11-01..2026-11-05"))
        XCTAssertTrue(message("state=broken").contains("state=failed"))
        XCTAssertTrue(message("state=failed instrument=Helios").contains("cannot narrow"))
        XCTAssertTrue(message(#"sample="S1"#).contains("quote"))
        XCTAssertTrue(message("   ").contains("empty"))
        XCTAssertTrue(message("sample=").contains("no value"))
    }
}
