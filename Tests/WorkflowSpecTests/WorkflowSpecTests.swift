import XCTest
import WorkflowSpec

final class WorkflowSpecTests: XCTestCase {
    let kinds: [String: ParameterSchema] = [
        "checksum": ParameterSchema(summary: "", fields: [.init("verify", .bool, default: .bool(false), help: "re-check")]),
        "ingest": ParameterSchema(summary: "", fields: [.init("mode", .string, default: .string("link"), allowed: ["link", "copy"], help: "how")]),
        "convert": ParameterSchema(summary: "", fields: [.init("to", .string, required: true, help: "target format")]),
    ]

    func parse(_ yaml: String) throws -> Workflow {
        try WorkflowParser(stageKinds: kinds).parse(text: yaml, file: "spec.yaml", baseDirectory: "/base")
    }

    func issues(_ yaml: String) -> [SpecIssue] {
        do { _ = try parse(yaml); XCTFail("expected the spec to be rejected"); return [] }
        catch let e as WorkflowSpecError { return e.issues }
        catch { XCTFail("\(error)"); return [] }
    }

    let valid = """
        name: demo
        inputs:
          - path: data/drop
            include: ["**/*.tif"]
            layout: "{proposal}/{sample}/{experiment}/{file}"
        outputs: {root: /managed}
        stages:
          ingest: {uses: ingest}
          sums:
            uses: checksum
            needs: [ingest]
            with: {verify: true}
            resources: {partition: short, time: "00:10:00", mem: 2G}
            retry: {tries: 2, backoff: [0.5]}
        """

    func testValidSpecIsTypedAndPathsAreResolvedFromTheSpecDirectory() throws {
        let wf = try parse(valid)
        XCTAssertEqual(wf.name, "demo")
        XCTAssertEqual(wf.inputs[0].location, .local(path: "/base/data/drop"))
        XCTAssertEqual(wf.outputs.root, "/managed")
        XCTAssertEqual(wf.workspace, "/managed/.emflow")
        XCTAssertEqual(wf.stages.map(\.name), ["ingest", "sums"])
        XCTAssertEqual(wf.stages[1].needs, ["ingest"])
        XCTAssertEqual(wf.stages[1].parameters["verify"], .bool(true))
        XCTAssertEqual(wf.stages[0].parameters["mode"], .string("link"), "defaults are filled in")
        XCTAssertEqual(wf.stages[1].resources.values["time"], "00:10:00")
        XCTAssertEqual(wf.stages[1].retry, RetryPolicy(tries: 2, backoff: [0.5]))
        XCTAssertEqual(wf.stages[0].retry, RetryPolicy(tries: 3, backoff: [10, 60, 300]))
    }

    func testUnknownKeyIsReportedAtItsLineAndColumnWithASuggestion() {
        let i = issues(valid.replacingOccurrences(of: "    needs: [ingest]", with: "    need: [ingest]"))
        XCTAssertEqual(i.count, 1)
        XCTAssertEqual(i[0].line, 11)
        XCTAssertEqual(i[0].column, 5)
        XCTAssertTrue(i[0].message.contains("unknown key 'need'"), i[0].message)
        XCTAssertTrue(i[0].hint?.contains("did you mean 'needs'") ?? false)
        XCTAssertTrue(i[0].description.hasPrefix("spec.yaml:11:5: error:"))
    }

    func testWrongTypesAndValuesAreErrors() {
        XCTAssertTrue(issues(valid.replacingOccurrences(of: "{verify: true}", with: "{verify: maybe}"))[0].message.contains("must be a bool"))
        XCTAssertTrue(issues(valid.replacingOccurrences(of: "ingest: {uses: ingest}", with: "ingest: {uses: ingest, with: {mode: move}}"))[0].message.contains("cannot be 'move'"))
        XCTAssertTrue(issues(valid.replacingOccurrences(of: "tries: 2", with: "tries: 0"))[0].message.contains("at least 1"))
        XCTAssertTrue(issues(valid.replacingOccurrences(of: "\"00:10:00\"", with: "ten minutes"))[0].message.contains("not a Slurm time"))
        XCTAssertTrue(issues(valid.replacingOccurrences(of: "mem: 2G", with: "mem: lots"))[0].message.contains("memory"))
    }

    func testS3SectionIsTypedAndItsValuesChecked() throws {
        let wf = try parse(valid + "\ns3: {endpoint: https://rgw.example.org, part_size_mib: 8, etags: opaque}")
        XCTAssertEqual(wf.s3.endpoint, "https://rgw.example.org")
        XCTAssertEqual(wf.s3.partSizeMiB, 8)
        XCTAssertEqual(wf.s3.etags, "opaque")
        XCTAssertNil(try parse(valid).s3.etags, "md5 unless the spec says otherwise")
        let bad = issues(valid + "\ns3: {etags: sha1}")
        XCTAssertEqual(bad.count, 1)
        XCTAssertTrue(bad[0].message.contains("s3.etags must be md5 or opaque"), bad[0].message)
        XCTAssertTrue(issues(valid + "\ns3: {part_size_mib: 4}")[0].message.contains("part_size_mib"))
    }

    func testNeedsMustNameEarlierStagesSoCyclesAreImpossible() {
        let unknown = issues(valid.replacingOccurrences(of: "needs: [ingest]", with: "needs: [ingets]"))
        XCTAssertTrue(unknown[0].message.contains("not a stage"), unknown[0].message)
        let cycle = issues("""
            name: c
            inputs: [{path: /d}]
            outputs: {root: /o}
            stages:
              a: {uses: checksum, needs: [b]}
              b: {uses: checksum, needs: [a]}
            """)
        XCTAssertTrue(cycle.contains { $0.message.contains("comes later") }, "\(cycle)")
    }

    func testUnknownStageKindAndMissingRequiredParameter() {
        let i = issues(valid.replacingOccurrences(of: "uses: checksum", with: "uses: chcksum"))
        XCTAssertTrue(i[0].message.contains("unknown stage kind 'chcksum'"))
        XCTAssertTrue(i[0].hint?.contains("checksum") ?? false)
        let r = issues(valid.replacingOccurrences(of: "ingest: {uses: ingest}", with: "ingest: {uses: convert}"))
        XCTAssertTrue(r[0].message.contains("needs 'to'"), r[0].message)
    }

    func testBadGlobLayoutAndMissingTopLevelKeys() {
        XCTAssertTrue(issues(valid.replacingOccurrences(of: "**/*.tif", with: "**/[ab.tif"))[0].message.contains("bad glob"))
        XCTAssertTrue(issues(valid.replacingOccurrences(of: "{proposal}/{sample}", with: "{proposal/{sample}"))[0].message.contains("bad layout"))
        let m = issues("name: x\n")
        XCTAssertEqual(Set(m.map(\.message)), ["missing key 'inputs'", "missing key 'outputs'", "missing key 'stages'"])
    }

    func testYAMLSyntaxErrorHasALocation() {
        let i = issues("name: x\ninputs: [\n  - path\n")
        XCTAssertEqual(i.count, 1)
        XCTAssertGreaterThan(i[0].line, 1)
        XCTAssertTrue(i[0].message.contains("YAML"))
    }

    func testGlobSemantics() throws {
        let g = try Glob("**/*.tif")
        XCTAssertTrue(g.matches("a.tif")); XCTAssertTrue(g.matches("p/s/e/a.tif")); XCTAssertFalse(g.matches("p/a.tiff"))
        let name = try Glob("*.{tif,tiff}")
        XCTAssertTrue(name.matches("deep/dir/x.tiff"), "a pattern without / matches names at any depth")
        let anchored = try Glob("raw/*.mib")
        XCTAssertTrue(anchored.matches("raw/a.mib")); XCTAssertFalse(anchored.matches("x/raw/a.mib")); XCTAssertFalse(anchored.matches("raw/s/a.mib"))
        let cls = try Glob("img_[0-9][!a].tif")
        XCTAssertTrue(cls.matches("img_1b.tif")); XCTAssertFalse(cls.matches("img_1a.tif")); XCTAssertFalse(cls.matches("img_xb.tif"))
        XCTAssertTrue(try Glob(".*").matches("a/.hidden"))
        XCTAssertThrowsError(try Glob("a{b"))
    }

    func testPathTemplateFitsOnlyMatchingPaths() throws {
        let t = try PathTemplate("{proposal}/{sample}_{grid}/{experiment}/{file}")
        XCTAssertEqual(t.match("P1/S2_g3/E4/a.tif"), ["proposal": "P1", "sample": "S2", "grid": "g3", "experiment": "E4", "file": "a.tif"])
        XCTAssertNil(t.match("P1/S2/E4/a.tif"), "literal '_' missing")
        XCTAssertNil(t.match("P1/S2_g3/E4/extra/a.tif"), "extra level is not guessed")
        XCTAssertEqual(t.render(["proposal": "P", "sample": "S", "grid": "G", "experiment": "E", "file": "f"]), "P/S_G/E/f")
        XCTAssertThrowsError(try PathTemplate("{a}{b}/x"))
    }

    func testCanonicalJSONIgnoresYAMLStyle() throws {
        let a = try parse(valid)
        let b = try parse(valid.replacingOccurrences(of: "with: {verify: true}", with: "with:\n      verify: yes"))
        XCTAssertEqual(ParamValue.map(a.stages[1].parameters).canonicalJSON, ParamValue.map(b.stages[1].parameters).canonicalJSON)
        XCTAssertEqual(ParamValue.map(["b": .int(1), "a": .string("x\"y")]).canonicalJSON, #"{"a":"x\"y","b":1}"#)
    }

    func testRetryDelays() {
        let r = RetryPolicy(tries: 4, backoff: [10, 60])
        XCTAssertEqual(r.delay(beforeAttempt: 1), 0)
        XCTAssertEqual(r.delay(beforeAttempt: 2), 10)
        XCTAssertEqual(r.delay(beforeAttempt: 3), 60)
        XCTAssertEqual(r.delay(beforeAttempt: 4), 60)
    }
}
