import XCTest
import Foundation
import TestSupport

/// Researchers and staff after a run: `emflow reprocess` with an edited mapping (new versions beside
/// the old ones, provenance linking them, catalog queries by mapping and version), `emflow diff`
/// showing exactly the edited field, failed items picked up by `state=failed`, and `emflow report`
/// rendered by a real headless Chromium.
final class ReprocessTests: XCTestCase {
    var t: TempDir!
    override func setUp() { t = TempDir("emflow-reprocess") }
    override func tearDown() { t?.cleanup() }

    func emflow(_ args: [String]) throws -> ProcessOutput { try ProcessRunner.run(Tools.emflow, args, cwd: t.path) }
    func json(_ text: String) -> Any? { try? JSONSerialization.jsonObject(with: Data(text.utf8)) }
    func sha(_ path: String) throws -> String {
        String(try ProcessRunner.run("/usr/bin/sha256sum", [path]).stdout.prefix(64))
    }

    /// Two samples of the vendor set, plus one damaged TIFF in its own experiment.
    func setUpDrop() throws -> (spec: String, fixtures: [String: String], bad: String) {
        let fixtures = try Fixtures.vendorSet(in: t.file("fixtures"), size: 32)
        for s in ["S1", "S2"] {
            for (name, path) in fixtures { t.write("drop/P1/\(s)/E1/\(name)", [UInt8](FileManager.default.contents(atPath: path)!)) }
            t.write("drop/P1/\(s)/E1/jeol_jsm.txt", [UInt8](FileManager.default.contents(atPath: t.file("fixtures/jeol_jsm.txt"))!))
        }
        let bad = t.write("drop/P1/S3/E1/broken.tif", Array("II*\u{0}this is not a TIFF".utf8))
        _ = try ProcessRunner.run("/bin/cp", ["-r", Tools.packageRoot + "/Mappings", t.file("mappings")])
        let spec = t.write("spec.yaml", """
            name: reprocess-cli
            inputs: [{path: drop, include: ["**/*.tif"], layout: "{proposal}/{sample}/{experiment}/{file}"}]
            outputs: {root: managed}
            context: {samples: {S1: {atom_types: "Fe, C"}, S2: {atom_types: "Au"}, S3: {atom_types: "Si"}}}
            stages:
              ingest: {uses: ingest, with: {mode: link}}
              checksum: {uses: checksum, needs: [ingest]}
              convert: {uses: convert, needs: [checksum], with: {to: nxem, mappings: mappings, timezone: Europe/Rome}, retry: {tries: 1}}
              readme: {uses: readme, needs: [checksum]}
            """)
        return (spec, fixtures, bad)
    }

    func testReprocessWithEditedMappingWritesLinkedVersionsThatDiffShowsAndReportsRender() throws {
        let (spec, fixtures, bad) = try setUpDrop()
        let first = try emflow(["run", "--quiet", "--json", spec])
        XCTAssertEqual(first.status, 1, "the broken TIFF fails alone: \(first.combined)")
        let firstRunID = try XCTUnwrap((json(first.stdout) as? [String: Any])?["runID"] as? String)
        let v1 = try ProcessRunner.shell("find '\(t.path)/managed' -name '*.nxs' | sort").stdout.split(separator: "\n").map(String.init)
        XCTAssertEqual(v1.count, fixtures.count * 2)
        var v1Sums: [String: String] = [:]
        for f in v1 { v1Sums[f] = try sha(f) }

        // Which of them the FEI mapping made, as the catalog answers it.
        let feiList = try emflow(["catalog", "ls", "--spec", spec, "--select", "mapping=fei-sem", "--json"])
        XCTAssertEqual(feiList.status, 0, feiList.combined)
        let feiV1 = ((json(feiList.stdout) as? [[String: Any]]) ?? []).compactMap { $0["uri"] as? String }
        XCTAssertGreaterThanOrEqual(feiV1.count, 2, feiList.stdout)
        XCTAssertTrue(feiV1.allSatisfy { !$0.contains(".v2.") })

        // Bad selections: nothing matched, an unknown key, a filter that cannot apply to failed items.
        let none = try emflow(["reprocess", spec, "--select", "mapping=fei-sem sample=S9"])
        XCTAssertEqual(none.status, 2, none.combined)
        XCTAssertTrue(none.stderr.contains("matches nothing") && none.stderr.contains("converted dataset"), none.stderr)
        let typo = try emflow(["reprocess", spec, "--select", "sampel=S1"])
        XCTAssertEqual(typo.status, 2)
        XCTAssertTrue(typo.stderr.contains("did you mean sample"), typo.stderr)
        let mixed = try emflow(["reprocess", spec, "--select", "state=failed mapping=fei-sem"])
        XCTAssertEqual(mixed.status, 2)
        XCTAssertTrue(mixed.stderr.contains("cannot narrow"), mixed.stderr)

        // The researcher edits the FEI mapping: another vendor text, and the mapping's own version.
        let mappingPath = t.file("mappings/fei-sem.json")
        var mapping = t.read("mappings/fei-sem.json")!
        XCTAssertTrue(mapping.contains(#"{"to": "measurement/instrument/fabrication/vendor", "value": "FEI"}"#))
        mapping = mapping.replacingOccurrences(of: #""value": "FEI"}"#, with: #""value": "Thermo Fisher Scientific"}"#)
            .replacingOccurrences(of: #""emflow_mapping": 1,"#, with: #""emflow_mapping": 1, "version": "2","#)
        try mapping.write(toFile: mappingPath, atomically: true, encoding: .utf8)

        let dry = try emflow(["reprocess", spec, "--select", "mapping=fei-sem sample=S1", "--dry-run", "--json"])
        XCTAssertEqual(dry.status, 0, dry.combined)
        let drySelected = ((json(dry.stdout) as? [String: Any])?["selected"] as? [[String: Any]]) ?? []
        XCTAssertEqual(drySelected.count, feiV1.filter { $0.contains("/S1/") }.count)
        XCTAssertEqual(try ProcessRunner.shell("find '\(t.path)/managed' -name '*.v2.nxs' | wc -l").stdout.trimmingCharacters(in: .whitespacesAndNewlines), "0",
                       "--dry-run writes nothing")

        let re = try emflow(["reprocess", spec, "--select", "mapping=fei-sem", "--json", "--quiet"])
        XCTAssertEqual(re.status, 0, re.combined)
        let report = json(re.stdout) as? [String: Any] ?? [:]
        let made = (report["made"] as? [[String: Any]]) ?? []
        XCTAssertEqual(made.count, feiV1.count, re.stdout)
        let runID = try XCTUnwrap(report["runID"] as? String)

        // v1 untouched; one v2 beside each FEI v1 and no other file reconverted.
        for f in v1 { XCTAssertEqual(try sha(f), v1Sums[f], "\(f) changed") }
        let v2 = try ProcessRunner.shell("find '\(t.path)/managed' -name '*.v2.nxs' | sort").stdout.split(separator: "\n").map(String.init)
        XCTAssertEqual(Set(v2), Set(feiV1.map { $0.replacingOccurrences(of: ".nxs", with: ".v2.nxs") }))
        XCTAssertEqual(try NexusValidator.problems(v2), [:])

        for old in feiV1 {
            let new = old.replacingOccurrences(of: ".nxs", with: ".v2.nxs")
            // diff: exactly the edited field among the metadata, the provenance apart.
            let d = try emflow(["diff", old, new, "--json"])
            XCTAssertEqual(d.status, 1, "diff(1) convention: 1 when something differs")
            let dj = json(d.stdout) as? [String: Any] ?? [:]
            let meta = (dj["metadata"] as? [[String: Any]]) ?? []
            XCTAssertEqual(meta.map { $0["path"] as? String ?? "" }, ["/entry1/measurement/instrument/fabrication/vendor"], d.stdout)
            XCTAssertEqual(meta.first?["a"] as? String, #"string "FEI""#)
            XCTAssertEqual(meta.first?["b"] as? String, #"string "Thermo Fisher Scientific""#)
            // Provenance: the new file names and hashes its predecessor.
            let prov = Dictionary(uniqueKeysWithValues: ((dj["provenance"] as? [[String: Any]]) ?? []).map { ($0["path"] as? String ?? "", $0["b"] as? String ?? "") })
            XCTAssertEqual(prov["/entry1/note_predecessor/checksum"], "string \"\(v1Sums[old]!)\"")
            XCTAssertTrue(prov["/entry1/note_predecessor/file_name"]?.contains((old as NSString).lastPathComponent) == true)
            // The catalog: both versions, the latest last, linked.
            let vs = try emflow(["catalog", "versions", "--spec", spec, old, "--json"])
            let rows = (json(vs.stdout) as? [[String: Any]]) ?? []
            XCTAssertEqual(rows.map { $0["version"] as? Int ?? 0 }, [1, 2], vs.combined)
            XCTAssertEqual(rows.last?["uri"] as? String, new)
            XCTAssertEqual(rows.last?["predecessor"] as? String, old)
            XCTAssertEqual(rows.last?["mapping_version"] as? String, "2")
            XCTAssertEqual(rows.last?["sha256"] as? String, try sha(new))
        }
        // The same file compared with itself: nothing differs, exit 0.
        let same = try emflow(["diff", feiV1[0], feiV1[0]])
        XCTAssertEqual(same.status, 0, same.combined)
        XCTAssertTrue(same.stdout.contains("no metadata differs"))
        // "Which outputs were made with mapping X version Y".
        let byVersion = try emflow(["catalog", "ls", "--spec", spec, "--select", "mapping=fei-sem mapping-version=2", "--json"])
        XCTAssertEqual(Set(((json(byVersion.stdout) as? [[String: Any]]) ?? []).compactMap { $0["uri"] as? String }), Set(v2))
        let allVersions = try emflow(["catalog", "ls", "--spec", spec, "--select", "mapping=fei-sem", "--all-versions", "--json"])
        XCTAssertEqual(((json(allVersions.stdout) as? [[String: Any]]) ?? []).count, feiV1.count * 2)

        // Again with nothing edited: no third version.
        let again = try emflow(["reprocess", spec, "--select", "mapping=fei-sem", "--json", "--quiet"])
        XCTAssertEqual(again.status, 0, again.combined)
        let againReport = json(again.stdout) as? [String: Any] ?? [:]
        XCTAssertEqual((againReport["made"] as? [Any])?.count, 0)
        XCTAssertEqual(againReport["unchanged"] as? Int, feiV1.count)
        XCTAssertEqual(try ProcessRunner.shell("find '\(t.path)/managed' -name '*.v3.nxs' | wc -l").stdout.trimmingCharacters(in: .whitespacesAndNewlines), "0")

        // The broken input, replaced by a good file (its raw copy moved aside, as ingest asks: raw data
        // is never overwritten), is picked up by state=failed, and only it.
        try FileManager.default.removeItem(atPath: t.file("managed/P1/S3/E1/raw/broken.tif"))
        try FileManager.default.removeItem(atPath: bad)
        t.write("drop/P1/S3/E1/broken.tif", [UInt8](FileManager.default.contents(atPath: fixtures["fei_helios.tif"]!)!))
        let fixed = try emflow(["reprocess", spec, "--select", "state=failed", "--json", "--quiet"])
        XCTAssertEqual(fixed.status, 0, fixed.combined)
        let fixedReport = json(fixed.stdout) as? [String: Any] ?? [:]
        XCTAssertEqual(((fixedReport["selected"] as? [[String: Any]]) ?? []).map { $0["item"] as? String ?? "" }, ["P1/S3/E1/broken.tif"])
        XCTAssertTrue(t.exists("managed/P1/S3/E1/nexus/broken.nxs"))
        let nothingFailed = try emflow(["reprocess", spec, "--select", "state=failed"])
        XCTAssertEqual(nothingFailed.status, 2)
        XCTAssertTrue(nothingFailed.stderr.contains("0 failed item(s)"), nothingFailed.stderr)

        // The report of the reprocess run: JSON with its numbers, HTML in a real browser.
        let rj = try emflow(["report", runID, "--spec", spec, "--json"])
        XCTAssertEqual(rj.status, 0, rj.combined)
        let r = json(rj.stdout) as? [String: Any] ?? [:]
        let convert = ((r["stages"] as? [[String: Any]]) ?? []).first { $0["stage"] as? String == "convert" }
        XCTAssertEqual((convert?["counts"] as? [String: Int])?["succeeded"], feiV1.count)
        let outputs = (r["outputs"] as? [[String: Any]]) ?? []
        for f in v2 { XCTAssertEqual(outputs.first { $0["uri"] as? String == f }?["sha256"] as? String, try sha(f)) }
        XCTAssertEqual(((r["tasks"] as? [[String: Any]]) ?? []).filter { $0["stage"] as? String == "convert" }.count, feiV1.count)
        XCTAssertTrue((r["spec"] as? String ?? "").contains("name: reprocess-cli"))

        let html = t.file("report.html")
        let rh = try emflow(["report", runID, "--spec", spec, "--html", html])
        XCTAssertEqual(rh.status, 0, rh.combined)
        let page = try Browser.render(html, screenshot: Browser.artifact("report-reprocess.png"))
        XCTAssertTrue(page.dom.contains(runID), "the rendered page names the run")
        XCTAssertTrue(page.dom.contains("id=\"timeline\""), "the timeline SVG is in the DOM")
        XCTAssertTrue(page.dom.contains(#"<div class="card" id="items"><b>\#(feiV1.count)</b>items</div>"#), "the item count of the run")
        for f in v2 { XCTAssertTrue(page.dom.contains(f), "output \(f) listed") }
        let source = t.read("report.html")!
        for fetch in ["src=", "href=", "url(", "<link", "<script", "@import"] {
            XCTAssertFalse(source.contains(fetch), "self-contained: nothing fetched at view time (\(fetch))")
        }
        XCTAssertGreaterThan(page.screenshotBytes, 20_000, "a real rendering, not a blank page")

        // The first run's report lists its failure with the error.
        let firstRun = try emflow(["report", firstRunID, "--spec", spec, "--json"])
        XCTAssertEqual(firstRun.status, 0, firstRun.combined)
        let failures = ((json(firstRun.stdout) as? [String: Any])?["failures"] as? [[String: Any]]) ?? []
        XCTAssertEqual(failures.map { $0["item"] as? String ?? "" }, ["P1/S3/E1/broken.tif"])
        XCTAssertTrue((failures.first?["error"] as? String ?? "").contains("broken.tif"), "\(failures)")
        let unknown = try emflow(["report", "no-such-run", "--spec", spec])
        XCTAssertEqual(unknown.status, 2)
        XCTAssertTrue(unknown.stderr.contains(runID), "names the runs that exist: \(unknown.stderr)")
    }
}
