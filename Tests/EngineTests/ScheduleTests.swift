import XCTest
@testable import Engine

/// Cron expressions as cron(8) reads them, and the marked blocks emflow keeps in a user's crontab.
final class ScheduleTests: XCTestCase {
    let utc = TimeZone(identifier: "UTC")!
    func date(_ s: String) -> Date { ISO8601DateFormatter().date(from: s)! }
    func next(_ cron: String, after: String) throws -> String? {
        try CronSchedule(cron).next(after: date(after), timeZone: utc).map { ISO8601DateFormatter().string(from: $0) }
    }

    func testNextOccurrences() throws {
        XCTAssertEqual(try next("0 2 * * *", after: "2026-11-24T01:59:59Z"), "2026-11-24T02:00:00Z")
        XCTAssertEqual(try next("0 2 * * *", after: "2026-11-24T02:00:00Z"), "2026-11-25T02:00:00Z", "strictly after")
        XCTAssertEqual(try next("*/15 * * * *", after: "2026-11-24T10:07:30Z"), "2026-11-24T10:15:00Z")
        XCTAssertEqual(try next("30 22 * * sat,sun", after: "2026-11-24T00:00:00Z"), "2026-11-28T22:30:00Z")   // 24 Nov 2026 is a Tuesday
        XCTAssertEqual(try next("0 0 1 jan *", after: "2026-11-24T00:00:00Z"), "2027-01-01T00:00:00Z")
        XCTAssertEqual(try next("@weekly", after: "2026-11-24T00:00:00Z"), "2026-11-29T00:00:00Z")
        XCTAssertEqual(try next("0 12 29 2 *", after: "2026-03-01T00:00:00Z"), "2028-02-29T12:00:00Z")
        // Day of month and day of week both restricted: either matches (cron's rule).
        XCTAssertEqual(try next("0 0 1 * mon", after: "2026-11-24T00:00:00Z"), "2026-11-30T00:00:00Z")
        XCTAssertEqual(try next("0 9-17/4 * * 1-5", after: "2026-11-24T13:00:00Z"), "2026-11-24T17:00:00Z")
        XCTAssertEqual(try next("0 0 * * 7", after: "2026-11-24T00:00:00Z"), "2026-11-29T00:00:00Z", "7 is Sunday too")
    }

    func testBadExpressionsSayWhatIsWrong() {
        for (bad, says) in [("0 2 * *", "five fields"), ("61 * * * *", "minute '61'"), ("0 2 * * */0", "step"), ("0 5-2 * * *", "backwards"),
                            ("0 2 * foo *", "month 'foo'")] {
            XCTAssertThrowsError(try CronSchedule(bad), bad) { XCTAssertTrue("\($0)".contains(says), "\(bad): \($0)") }
        }
    }

    func testManagedBlocksLeaveTheUsersLinesAlone() {
        let mine = "MAILTO=ops@example.org\n0 * * * * /usr/bin/backup\n"
        var t = ManagedCrontab.install(mine, name: "nightly", lines: ["# x", "0 2 * * * emflow backfill a.yaml"])
        t = ManagedCrontab.install(t, name: "hourly", lines: ["0 * * * * emflow backfill b.yaml"])
        t = ManagedCrontab.install(t, name: "nightly", lines: ["0 3 * * * emflow backfill a.yaml"])   // replaced, not added
        XCTAssertEqual(ManagedCrontab.blocks(t).map(\.name), ["hourly", "nightly"])
        XCTAssertEqual(ManagedCrontab.blocks(t).last?.lines, ["0 3 * * * emflow backfill a.yaml"])
        XCTAssertTrue(t.hasPrefix(mine))
        XCTAssertEqual(ManagedCrontab.remove(ManagedCrontab.remove(t, name: "nightly"), name: "hourly"), mine)
        XCTAssertEqual(ManagedCrontab.remove("", name: "x"), "")
    }
}
