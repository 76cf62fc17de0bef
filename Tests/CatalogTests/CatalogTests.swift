import XCTest
import Catalog
import TestSupport

final class CatalogTests: XCTestCase {
    func testRecordsAreIdempotentAndObjectFieldsMerge() throws {
        let t = TempDir(); defer { t.cleanup() }
        let c = try Catalog(path: t.file("ws/catalog.sqlite"))
        try c.insert(run: RunRecord(id: "r1", workflow: "w", specPath: "s", specSHA256: "h", executor: "local", startedAt: 1, state: "running", items: 1, emflowVersion: "0"))
        let task = TaskRecord(runID: "r1", key: "k1", stage: "ingest", kind: "ingest", item: "a.tif", state: "succeeded", tries: 1,
                              startedAt: 1, finishedAt: 2, bytes: 10, error: nil, result: "{}")
        let ingestObj = ObjectRecord(uri: "/m/P/S/E/raw/a.tif", size: 10, mtimeNanoseconds: 5, sha256: nil, proposal: "P", sample: "S",
                                     experiment: "E", file: "a.tif", sourceURI: "/drop/a.tif", runID: "r1", updatedAt: 2)
        try c.record(task: task, objects: [ingestObj])
        try c.record(task: task, objects: [ingestObj])   // a result ingested twice changes nothing
        // checksum learns the sum but not the hierarchy: fields are kept
        let sumObj = ObjectRecord(uri: "/m/P/S/E/raw/a.tif", size: 10, mtimeNanoseconds: 5, sha256: "ab", runID: "r1", updatedAt: 3)
        try c.record(task: TaskRecord(runID: "r1", key: "k2", stage: "checksum", kind: "checksum", item: "a.tif", state: "succeeded",
                                      tries: 1, startedAt: 2, finishedAt: 3, bytes: 10, error: nil, result: "{\"x\":1}"), objects: [sumObj])
        let o = try XCTUnwrap(c.object(uri: "/m/P/S/E/raw/a.tif"))
        XCTAssertEqual(o.sha256, "ab"); XCTAssertEqual(o.proposal, "P"); XCTAssertEqual(o.sourceURI, "/drop/a.tif")
        XCTAssertEqual(try c.objects().count, 1)
        // the file changes (size/mtime) with no new sum: the old sum is dropped, never kept stale
        try c.record(task: task, objects: [ObjectRecord(uri: "/m/P/S/E/raw/a.tif", size: 11, mtimeNanoseconds: 6, sha256: nil, runID: "r1", updatedAt: 4)])
        XCTAssertNil(try c.object(uri: "/m/P/S/E/raw/a.tif")?.sha256)
        XCTAssertEqual(try c.succeededResult(key: "k1"), "{}")
        XCTAssertEqual(try c.succeededResult(key: "k2"), "{\"x\":1}")
        XCTAssertNil(try c.succeededResult(key: "k3"))
        XCTAssertEqual(try c.latestResult(stage: "checksum", item: "a.tif")?.key, "k2")
        XCTAssertEqual(try c.stageCounts(runID: "r1").map(\.stage), ["ingest", "checksum"])
        XCTAssertTrue(try c.checkIntegrity())
    }

    func testSumsInDirectoryListOnlyDirectChildrenAndFindBySHA() throws {
        let t = TempDir(); defer { t.cleanup() }
        let c = try Catalog(path: t.file("catalog.sqlite"))
        try c.insert(run: RunRecord(id: "r", workflow: "w", specPath: "s", specSHA256: "h", executor: "local", startedAt: 1, state: "running", items: 1, emflowVersion: "0"))
        for (u, h) in [("/d/a_1.tif", "aa"), ("/d/b%.tif", "bb"), ("/d/sub/c.tif", "cc"), ("/dx/d.tif", "dd")] {
            try c.record(task: TaskRecord(runID: "r", key: u, stage: "s", kind: "k", item: u, state: "succeeded", tries: 1, startedAt: 0, finishedAt: 0, bytes: 0, error: nil, result: nil),
                         objects: [ObjectRecord(uri: u, size: 1, mtimeNanoseconds: 1, sha256: h, runID: "r", updatedAt: 0)])
        }
        XCTAssertEqual(try c.sums(inDirectory: "/d").map(\.name), ["a_1.tif", "b%.tif"])
        XCTAssertEqual(try c.find(sha256: "CC").objects.map(\.uri), ["/d/sub/c.tif"])
        XCTAssertEqual(try c.objects(prefix: "/d/").count, 3)
    }

    func testOpeningSomethingElseFailsClearly() throws {
        let t = TempDir(); defer { t.cleanup() }
        t.write("bad.sqlite", String(repeating: "not a database ", count: 100))
        XCTAssertThrowsError(try Catalog(path: t.file("bad.sqlite"))) { e in XCTAssertTrue("\(e)".contains("bad.sqlite"), "\(e)") }
        XCTAssertThrowsError(try Catalog.openExisting(path: t.file("none.sqlite"))) { e in XCTAssertTrue("\(e)".contains("run a workflow first")) }
    }
}
