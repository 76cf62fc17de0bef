import XCTest
import Catalog
import TestSupport

/// The catalog's answers for reprocessing: versions of a dataset, outputs by mapping and its version,
/// the latest version only, date ranges and globs, and items whose last attempt failed.
final class LineageTests: XCTestCase {
    func output(_ uri: String, dataset: String, version: Int, run: String, mapping: String, mv: String?, sha: String,
                sample: String, date: String, item: String) -> OutputRecord {
        var o = OutputRecord(uri: uri, sha256: "f-" + uri, size: 1, taskKey: "k-" + uri, runID: run, stage: "convert", kind: "convert", createdAt: Double(version))
        o.item = item; o.dataset = dataset; o.version = version; o.predecessor = version > 1 ? dataset : nil
        o.mapping = mapping; o.mappingVersion = mv; o.mappingSHA256 = sha; o.instrument = mapping == "fei-sem" ? "FEI Helios NanoLab 600i" : "Zeiss Crossbeam 550"
        o.acquiredAt = date; o.proposal = "P1"; o.sample = sample; o.experiment = "E1"
        return o
    }

    func testVersionsLatestMappingQueriesAndFailedItems() throws {
        let t = TempDir(); defer { t.cleanup() }
        let c = try Catalog(path: t.file("catalog.sqlite"))
        for (id, wf, at) in [("r1", "w", 1.0), ("r2", "w", 2.0), ("x1", "other", 3.0)] {
            try c.insert(run: RunRecord(id: id, workflow: wf, specPath: "s", specSHA256: "h", executor: "local", startedAt: at, state: "succeeded", items: 2, emflowVersion: "0"))
        }
        try c.record(outputs: [
            output("/m/a.nxs", dataset: "/m/a.nxs", version: 1, run: "r1", mapping: "fei-sem", mv: nil, sha: "aaaa11", sample: "S1", date: "2026-11-03T10:00:00+01:00", item: "a.tif"),
            output("/m/a.v2.nxs", dataset: "/m/a.nxs", version: 2, run: "r2", mapping: "fei-sem", mv: "2", sha: "bbbb22", sample: "S1", date: "2026-11-03T10:00:00+01:00", item: "a.tif"),
            output("/m/b.nxs", dataset: "/m/b.nxs", version: 1, run: "r1", mapping: "zeiss-smartsem", mv: nil, sha: "cccc33", sample: "S2", date: "2026-12-01T08:00:00+01:00", item: "b.tif"),
            output("/o/c.nxs", dataset: "/o/c.nxs", version: 1, run: "x1", mapping: "fei-sem", mv: nil, sha: "aaaa11", sample: "S1", date: "2026-11-03T10:00:00+01:00", item: "c.tif"),
        ])
        // README-like outputs without lineage never count as datasets.
        try c.record(outputs: [OutputRecord(uri: "/m/README.txt", sha256: "r", size: 1, taskKey: "rk", runID: "r1", stage: "readme", kind: "readme", createdAt: 1)])

        XCTAssertEqual(try c.versions(of: "/m/a.v2.nxs").map(\.uri), ["/m/a.nxs", "/m/a.v2.nxs"])
        XCTAssertEqual(try c.versions(of: "/m/a.nxs").last?.predecessor, "/m/a.nxs")
        XCTAssertEqual(try c.versions(of: "/m/README.txt"), [])

        var s = OutputSelection(workflow: "w")
        XCTAssertEqual(try c.outputs(matching: s).map(\.uri), ["/m/a.v2.nxs", "/m/b.nxs"], "latest versions of this workflow only")
        s.allVersions = true
        XCTAssertEqual(try c.outputs(matching: s).count, 3)
        var m = OutputSelection(); m.mapping = ["fei-sem"]; m.mappingVersion = ["2"]
        XCTAssertEqual(try c.outputs(matching: m).map(\.uri), ["/m/a.v2.nxs"], "by declared version")
        m.mappingVersion = ["AAAA"]; m.allVersions = true
        XCTAssertEqual(try c.outputs(matching: m).map(\.uri), ["/m/a.nxs", "/o/c.nxs"], "by a prefix of the mapping's SHA-256")
        var d = OutputSelection(workflow: "w"); d.dateFrom = "2026-11"; d.dateTo = "2026-11"
        XCTAssertEqual(try c.outputs(matching: d).map(\.uri), ["/m/a.v2.nxs"], "a month")
        d.dateFrom = "2026-11-04"; d.dateTo = nil
        XCTAssertEqual(try c.outputs(matching: d).map(\.uri), ["/m/b.nxs"], "an open range")
        var g = OutputSelection(workflow: "w"); g.instrument = ["*Zeiss*"]; g.sample = ["S1", "S2"]
        XCTAssertEqual(try c.outputs(matching: g).map(\.uri), ["/m/b.nxs"])
        for named in ["/m/a.nxs", "/m/a.v2.nxs", "/m/a.v*.nxs"] {
            var o = OutputSelection(workflow: "w"); o.output = [named]
            XCTAssertEqual(try c.outputs(matching: o).map(\.uri), ["/m/a.v2.nxs"], "any version (\(named)) names the dataset; its latest is selected")
        }

        // Failed items: failed, then succeeded later → not failed; failed last → failed.
        func task(_ run: String, _ item: String, _ state: String, at: Double) -> TaskRecord {
            TaskRecord(runID: run, key: "\(run)-\(item)", stage: "convert", kind: "convert", item: item, state: state, tries: 1,
                       startedAt: at, finishedAt: at, bytes: 0, error: state == "failed" ? "boom" : nil, result: nil)
        }
        try c.record(tasks: [task("r1", "a.tif", "failed", at: 1), task("r2", "a.tif", "succeeded", at: 2),
                             task("r1", "b.tif", "succeeded", at: 1), task("r2", "b.tif", "failed", at: 2), task("x1", "c.tif", "failed", at: 3)])
        XCTAssertEqual(try c.failedItems(workflow: "w"), ["b.tif"])
        XCTAssertEqual(try c.failedItems(workflow: "w", runs: ["r1"]), [])
        let scope = try c.selectionScope(workflow: "w")
        XCTAssertEqual(scope.datasets, 2)
        XCTAssertEqual(scope.failed, 1)
    }
}
