import XCTest
import Foundation
import TestSupport

/// The convert stage in a workflow, as users run it: bad files fail alone, kill -9 and re-run leave
/// one complete, valid NeXus file per input, and an edited mapping makes a new version.
final class ConvertCLITests: XCTestCase {
    var t: TempDir!
    override func setUp() { t = TempDir("emflow-convert") }
    override func tearDown() { t.cleanup() }

    func emflow(_ args: [String]) throws -> ProcessOutput { try ProcessRunner.run(Tools.emflow, args) }

    func testWorkflowConvertsGoodFilesFailsBadOnesSurvivesKillsAndVersionsOnMappingEdits() throws {
        let fixtures = try Fixtures.vendorSet(in: t.file("fixtures"), size: 64)
        let bad = try Fixtures.badSet(in: t.file("fixtures"))
        // Six copies of the vendor set (so a kill lands mid-stage) and the damaged files in their own experiment.
        for copy in 1...6 {
            for (name, path) in fixtures {
                t.write("drop/P1/S1/E\(copy)/\(name)", [UInt8](FileManager.default.contents(atPath: path)!))
            }
            let side = t.file("fixtures/jeol_jsm.txt")
            t.write("drop/P1/S1/E\(copy)/jeol_jsm.txt", [UInt8](FileManager.default.contents(atPath: side)!))
        }
        for (name, path) in bad { t.write("drop/P1/S2/E1/\(name)", [UInt8](FileManager.default.contents(atPath: path)!)) }
        _ = try ProcessRunner.run("/bin/cp", ["-r", Tools.packageRoot + "/Mappings", t.file("mappings")])
        let spec = t.write("spec.yaml", """
            name: convert-cli
            inputs: [{path: drop, include: ["**/*.tif"], layout: "{proposal}/{sample}/{experiment}/{file}"}]
            outputs: {root: managed}
            context: {samples: {S1: {atom_types: "Fe, C"}}}
            stages:
              ingest: {uses: ingest, with: {mode: copy}, retry: {tries: 1}}
              checksum: {uses: checksum, needs: [ingest]}
              convert: {uses: convert, needs: [checksum], with: {to: nxem, mappings: mappings, timezone: Europe/Rome}, retry: {tries: 1}}
            """)
        let good = fixtures.count * 6
        for delay in [0.5, 1.2] {
            try ProcessRunner.killAfter(delay, Tools.emflow, ["run", "--quiet", "--jobs", "2", spec])
        }
        let final = try emflow(["run", "--quiet", "--json", spec])
        XCTAssertEqual(final.status, 1, "damaged inputs fail the run: \(final.combined)")
        let failed = try emflow(["status", "--spec", spec, "--failed", "--json"])
        let detail = try JSONSerialization.jsonObject(with: Data(failed.stdout.utf8)) as! [String: Any]
        let failures = (detail["failures"] as? [[String: Any]]) ?? []
        let failedItems = Set(failures.map { ($0["item"] as? String ?? "") })
        for name in bad.keys { XCTAssertTrue(failedItems.contains { $0.hasSuffix(name) }, "\(name) not among failures: \(failedItems)") }
        XCTAssertTrue(failures.allSatisfy { ($0["error"] as? String ?? "").contains("/P1/S2/E1/") }, "\(failures)")

        let nxs = try ProcessRunner.shell("find '\(t.path)/managed' -name '*.nxs' | sort").stdout.split(separator: "\n").map(String.init)
        XCTAssertEqual(nxs.count, good, "one NeXus file per good input, no duplicate versions after kills")
        XCTAssertFalse(nxs.contains { $0.contains(".v2.") })
        let tmp = try ProcessRunner.shell("find '\(t.path)/managed' -name '.emflow-tmp-*' | wc -l")
        let listing = try ProcessRunner.shell("find '\(t.path)/managed' -name '.emflow-tmp-*' -ls").stdout
        XCTAssertEqual(tmp.stdout.trimmingCharacters(in: .whitespacesAndNewlines), "0", listing)
        XCTAssertEqual(try NexusValidator.problems(nxs), [:])
        // The catalog knows each output with its checksum.
        let db = t.file("managed/.emflow/catalog.sqlite")
        let rows = try ProcessRunner.run("/usr/bin/sqlite3", [db, "SELECT COUNT(DISTINCT uri) FROM outputs WHERE kind = 'convert'"]).stdout
        XCTAssertEqual(rows.trimmingCharacters(in: .whitespacesAndNewlines), String(good))

        let again = try emflow(["run", "--json", spec])
        let summary = try JSONSerialization.jsonObject(with: Data(again.stdout.utf8)) as! [String: Any]
        let convert = (summary["stages"] as! [[String: Any]]).first { $0["stage"] as? String == "convert" }!
        XCTAssertEqual(convert["skipped"] as? Int, good)
        XCTAssertEqual(convert["succeeded"] as? Int, 0)

        // Editing a mapping changes the task keys: a re-run writes new versions beside the old files.
        let fei = t.file("mappings/fei-sem.json")
        var text = String(decoding: FileManager.default.contents(atPath: fei)!, as: UTF8.self)
        text = text.replacingOccurrences(of: "\"value\": \"xT microscope control\"", with: "\"value\": \"xT\"")
        t.write("mappings/fei-sem.json", text)
        _ = try emflow(["run", "--quiet", spec])
        let v2 = try ProcessRunner.shell("find '\(t.path)/managed' -name '*.v2.nxs' | wc -l").stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        XCTAssertEqual(v2, String(good))

        // A broken mapping stops the run before any task, naming file and line.
        t.write("mappings/broken.json", "{\n  \"emflow_mapping\": 1,\n  \"name\": \"broken\",\n  \"fields\": [{\"to\": \"nowhere\", \"value\": \"x\"}]\n}\n")
        let broken = try emflow(["run", "--quiet", spec])
        XCTAssertEqual(broken.status, 2, broken.combined)
        XCTAssertTrue(broken.stderr.contains("broken.json:4:"), broken.stderr)
    }

    func testConvertCommandAndMappingsListing() throws {
        let fixtures = try Fixtures.vendorSet(in: t.file("in"), size: 64)
        let r = try emflow(["convert", fixtures["zeiss_sigma.tif"]!, "-o", t.file("z.nxs"), "--timezone", "Europe/Rome", "--json"])
        XCTAssertEqual(r.status, 0, r.combined)
        let reports = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as! [[String: Any]]
        XCTAssertEqual(reports.first?["mapping"] as? String, "zeiss-smartsem")
        XCTAssertEqual(try NexusValidator.problems([t.file("z.nxs")]), [:])
        let bad = try emflow(["convert", t.write("x.tif", "not a tiff"), "--out-dir", t.file("o")])
        XCTAssertEqual(bad.status, 1)
        XCTAssertTrue(bad.stderr.contains("x.tif: not a readable TIFF"), bad.stderr)
        let list = try emflow(["mappings", "--json"])
        let tables = try JSONSerialization.jsonObject(with: Data(list.stdout.utf8)) as! [[String: Any]]
        XCTAssertTrue(tables.contains { $0["name"] as? String == "tvips-tem-camera" })
        let meta = try emflow(["inspect", "--metadata", "--json", fixtures["tvips_camera.tif"]!])
        XCTAssertTrue(meta.stdout.contains("tvips.TemHighTension"), meta.stdout)
    }
}
