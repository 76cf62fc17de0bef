import XCTest
import Catalog
import TestSupport

/// The backfill registry: what a listing registers, how batches are cut, how items settle from tasks.
final class ArchiveTests: XCTestCase {
    func entry(_ i: Int, size: Int64 = 100, etag: String? = nil, mtime: Int64? = 1) -> ArchiveEntry {
        ArchiveEntry(item: String(format: "P/S/E/f%03d.tif", i), uri: "/a/f\(i).tif", size: size, mtimeNanoseconds: mtime, etag: etag,
                     fields: ["proposal": "P"], problem: nil)
    }

    func task(_ c: Catalog, run: String, stage: String, item: String, state: String, error: String? = nil) throws {
        try c.record(task: TaskRecord(runID: run, key: "\(run)/\(stage)/\(item)", stage: stage, kind: stage, item: item, state: state, tries: 1,
                                      startedAt: 1, finishedAt: 2, bytes: 0, error: error, result: "{}"))
    }

    func testRegisterBatchAndSettle() throws {
        let t = TempDir(); defer { t.cleanup() }
        let c = try Catalog(path: t.file("catalog.sqlite"))
        // Listing: all new, then nothing new; a changed size or mtime (files) or ETag (objects) is pending again.
        XCTAssertEqual(try c.register(workflow: "w", entries: (0..<10).map { entry($0) }, at: 1).new, 10)
        var again = (0..<10).map { entry($0) }
        XCTAssertEqual(try c.register(workflow: "w", entries: again, at: 2).unchanged, 10)
        XCTAssertEqual(try c.register(workflow: "other", entries: [entry(0)], at: 2).new, 1, "workflows keep their own archives")

        // Batches: in item order, bounded by items and bytes; a first item above the byte bound still goes alone.
        XCTAssertEqual(try c.nextBatch(workflow: "w", maxItems: 4, maxBytes: nil, includeFailed: false).map(\.item),
                       (0..<4).map { String(format: "P/S/E/f%03d.tif", $0) })
        XCTAssertEqual(try c.nextBatch(workflow: "w", maxItems: nil, maxBytes: 250, includeFailed: false).count, 2)
        XCTAssertEqual(try c.nextBatch(workflow: "w", maxItems: nil, maxBytes: 10, includeFailed: false).count, 1)

        // A batch of 4 runs: two items done, one failed in its second stage, one never reached.
        let batch = try c.nextBatch(workflow: "w", maxItems: 4, maxBytes: nil, includeFailed: false).map(\.item)
        try c.insert(run: RunRecord(id: "r1", workflow: "w", specPath: "s", specSHA256: "h", executor: "local", startedAt: 10, state: "running", items: 4, emflowVersion: "0"))
        try c.markRunning(workflow: "w", items: batch, runID: "r1", at: 11)
        XCTAssertEqual(try c.settle(workflow: "w", runID: "r1", stages: ["a", "b"], at: 12), [:], "a running run is not settled")
        XCTAssertEqual(try c.nextBatch(workflow: "w", maxItems: 4, maxBytes: nil, includeFailed: false).first?.item, "P/S/E/f004.tif", "running items are not handed out again")
        try task(c, run: "r1", stage: "a", item: batch[0], state: "succeeded"); try task(c, run: "r1", stage: "b", item: batch[0], state: "succeeded")
        try task(c, run: "r1", stage: "a", item: batch[1], state: "skipped"); try task(c, run: "r1", stage: "b", item: batch[1], state: "succeeded")
        try task(c, run: "r1", stage: "a", item: batch[2], state: "succeeded"); try task(c, run: "r1", stage: "b", item: batch[2], state: "failed", error: "bad TIFF")
        try c.finish(runID: "r1", state: "failed", at: 20)
        XCTAssertEqual(try c.settle(workflow: "w", runID: "r1", stages: ["a", "b"], at: 21), ["done": 2, "failed": 1, "pending": 1])
        let failed = try c.archiveItems(workflow: "w", state: .failed)
        XCTAssertEqual(failed.map(\.entry.item), [batch[2]]); XCTAssertEqual(failed.first?.error, "b: bad TIFF")
        XCTAssertEqual(try c.archiveItems(workflow: "w", state: .pending).first?.runID, nil)

        // Failed items come back only when asked; a changed file is pending again whatever its state.
        XCTAssertFalse(try c.nextBatch(workflow: "w", maxItems: nil, maxBytes: nil, includeFailed: false).map(\.item).contains(batch[2]))
        XCTAssertTrue(try c.nextBatch(workflow: "w", maxItems: nil, maxBytes: nil, includeFailed: true).map(\.item).contains(batch[2]))
        again[0].mtimeNanoseconds = 99
        XCTAssertEqual(try c.register(workflow: "w", entries: again, at: 30).changed, 1)

        let totals = try c.archiveTotals(workflow: "w")
        XCTAssertEqual(totals.total.items, 10)
        XCTAssertEqual(totals.states["done"]?.items, 1)
        XCTAssertEqual(totals.states["failed"]?.items, 1)
        XCTAssertEqual(totals.states["pending"]?.items, 8)
        XCTAssertEqual(totals.batches, 1); XCTAssertEqual(totals.batchSeconds, 10)
        XCTAssertEqual(totals.etaSeconds ?? -1, 800 / 10.0, accuracy: 1e-9, "100 B/s over the batch: 800 B left")
        XCTAssertTrue(try c.checkIntegrity())
    }

    func testObjectsCompareByETagNotModificationTime() throws {
        let t = TempDir(); defer { t.cleanup() }
        let c = try Catalog(path: t.file("catalog.sqlite"))
        _ = try c.register(workflow: "w", entries: [entry(1, etag: "e1", mtime: 5)], at: 1)
        XCTAssertEqual(try c.register(workflow: "w", entries: [entry(1, etag: "e1", mtime: 6)], at: 2).unchanged, 1, "same bytes uploaded again")
        XCTAssertEqual(try c.register(workflow: "w", entries: [entry(1, etag: "e2", mtime: 6)], at: 3).changed, 1)
    }
}
