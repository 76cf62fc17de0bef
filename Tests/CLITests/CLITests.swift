import XCTest
import Foundation
import TestSupport
import POSIXFiles

/// The emflow binary as a user runs it: exit codes, messages, and crash safety under kill -9.
final class CLITests: XCTestCase {
    var t: TempDir!
    override func setUp() { t = TempDir("emflow-cli") }
    override func tearDown() { t.cleanup() }

    func emflow(_ args: [String]) throws -> ProcessOutput { try ProcessRunner.run(Tools.emflow, args) }

    func writeSpec(mode: String = "copy", root: String = "managed", name: String = "spec.yaml") -> String {
        t.write(name, """
            name: cli
            inputs: [{path: drop, include: ["**/*.tif"], layout: "{proposal}/{sample}/{experiment}/{file}"}]
            outputs: {root: \(root)}
            stages:
              ingest: {uses: ingest, with: {mode: \(mode)}, retry: {tries: 1}}
              checksum: {uses: checksum, needs: [ingest]}
              readme: {uses: readme, needs: [checksum]}
            """)
    }

    func makeDrop(files: Int, size: Int) {
        var bytes = [UInt8](repeating: 0, count: size)
        for i in 0..<files {
            for j in stride(from: 0, to: size, by: 4096) { bytes[j] = UInt8(truncatingIfNeeded: i &+ j) }
            t.write("drop/P\(i % 3)/S\(i % 2)/E1/img_\(i).tif", bytes)
        }
    }

    func testMalformedSpecExitsTwoWithFileLineColumn() throws {
        t.write("bad.yaml", "name: x\ninputs: [{path: d}]\noutputs: {root: o}\nstages:\n  a: {uses: checksum, bogus: 1}\n")
        let r = try emflow(["validate", t.file("bad.yaml")])
        XCTAssertEqual(r.status, 2)
        XCTAssertTrue(r.stderr.contains("bad.yaml:5:23: error: unknown key 'bogus'"), r.stderr)
        let j = try emflow(["validate", "--json", t.file("bad.yaml")])
        let doc = try JSONSerialization.jsonObject(with: Data(j.stdout.utf8)) as! [String: Any]
        XCTAssertEqual(doc["valid"] as? Bool, false)
        XCTAssertEqual(try emflow(["run", t.file("bad.yaml")]).status, 2)
        XCTAssertEqual(try emflow(["run", t.file("nope.yaml")]).status, 2)
    }

    func testMissingInputDirectoryExitsThreeAndSaysWhatToDo() throws {
        let r = try emflow(["run", "--quiet", writeSpec()])
        XCTAssertEqual(r.status, 3)
        XCTAssertTrue(r.stderr.contains("\(t.path)/drop does not exist"), r.stderr)
    }

    func testStatusAndCatalogSpeakJSON() throws {
        makeDrop(files: 4, size: 1000)
        let spec = writeSpec()
        let run = try emflow(["run", "--json", spec])
        XCTAssertEqual(run.status, 0, run.combined)
        let summary = try JSONSerialization.jsonObject(with: Data(run.stdout.utf8)) as! [String: Any]
        XCTAssertEqual(summary["state"] as? String, "succeeded")
        let again = try emflow(["run", spec])
        XCTAssertTrue(again.stdout.contains("nothing to do"), again.stdout)
        let st = try emflow(["status", "--spec", spec, "--json"])
        let detail = try JSONSerialization.jsonObject(with: Data(st.stdout.utf8)) as! [String: Any]
        XCTAssertEqual((detail["stages"] as! [[String: Any]]).count, 3)
        let ls = try emflow(["catalog", "ls", "--spec", spec, "--json"])
        let objects = try JSONSerialization.jsonObject(with: Data(ls.stdout.utf8)) as! [[String: Any]]
        XCTAssertEqual(objects.count, 4)
        let sha = objects[0]["sha256"] as! String
        let found = try emflow(["catalog", "find", "--spec", spec, "--sha256", sha])
        XCTAssertTrue(found.stdout.contains(objects[0]["uri"] as! String))
        XCTAssertEqual(try emflow(["status", "--spec", spec, "nosuchrun"]).status, 2)
        let all = try emflow(["status", "--spec", spec, "--all"])
        XCTAssertEqual(all.stdout.split(separator: "\n").count, 2)
    }

    /// kill -9 of `emflow run` at several points, then the same command: it finishes, nothing is done
    /// twice once done, the catalog matches the files, and no partial file is anywhere.
    func testKillNineAtSeveralPointsThenRerunFinishesWithoutDuplicates() throws {
        makeDrop(files: 120, size: 256 * 1024)
        let spec = writeSpec(mode: "copy")
        for delay in [0.15, 0.4, 0.8, 1.2] {
            try ProcessRunner.killAfter(delay, Tools.emflow, ["run", "--quiet", "--jobs", "2", spec])
        }
        let final = try emflow(["run", "--quiet", "--json", spec])
        XCTAssertEqual(final.status, 0, final.combined)
        let db = t.file("managed/.emflow/catalog.sqlite")
        func sql(_ q: String) throws -> String { try ProcessRunner.run("/usr/bin/sqlite3", [db, q]).stdout.trimmingCharacters(in: .whitespacesAndNewlines) }
        // Every managed file is in the catalog once, with the sum of its bytes.
        XCTAssertEqual(try sql("SELECT COUNT(*) FROM objects"), "120")
        XCTAssertEqual(try sql("SELECT COUNT(*) FROM objects WHERE sha256 IS NULL"), "0")
        let listed = try sql("SELECT uri || ' ' || sha256 FROM objects").split(separator: "\n")
        for row in listed.prefix(120) {
            let parts = row.split(separator: " ")
            let actual = try ProcessRunner.run("/usr/bin/sha256sum", [String(parts[0])]).stdout.prefix(64)
            XCTAssertEqual(String(actual), String(parts[1]), String(parts[0]))
        }
        // Once done, never done again: no key succeeded in two runs.
        XCTAssertEqual(try sql("SELECT COUNT(*) FROM (SELECT key FROM tasks WHERE state = 'succeeded' GROUP BY key HAVING COUNT(*) > 1)"), "0")
        XCTAssertEqual(try sql("SELECT COUNT(*) FROM runs WHERE state = 'running'"), "0")
        XCTAssertEqual(try sql("PRAGMA integrity_check"), "ok")
        // No temporaries, every manifest checks.
        let tmp = try ProcessRunner.shell("find '\(t.path)/managed' -name '.emflow-tmp-*' | wc -l")
        XCTAssertEqual(tmp.stdout.trimmingCharacters(in: .whitespacesAndNewlines), "0")
        let check = try ProcessRunner.shell("cd '\(t.path)/managed' && for d in $(find . -name SHA256SUMS -printf '%h\\n'); do (cd $d && sha256sum --quiet -c SHA256SUMS) || exit 1; done")
        XCTAssertEqual(check.status, 0, check.combined)
        let rerun = try emflow(["run", spec])
        XCTAssertTrue(rerun.stdout.contains("nothing to do"), rerun.stdout)
    }

    /// A run killed while writing a SHA256SUMS manifest leaves its temporary beside it; files
    /// checksummed in place have their manifest under the managed root, where no other task writes.
    /// The next run that writes that manifest removes the temporary of the process that is gone.
    func testAManifestRewrittenAfterAKillLeavesNoTemporary() throws {
        makeDrop(files: 2, size: 4096)
        let spec = t.write("inplace.yaml", """
            name: inplace
            inputs: [{path: drop, include: ["**/*.tif"]}]
            outputs: {root: managed}
            stages:
              checksum: {uses: checksum}
            """)
        XCTAssertEqual(try emflow(["run", spec]).status, 0)
        let manifest = try ProcessRunner.shell("find '\(t.path)/managed' -name SHA256SUMS -path '*P0*'").stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        XCTAssertTrue(manifest.hasSuffix("/drop/P0/S0/E1/SHA256SUMS"), manifest)
        let stale = Path.directory(of: manifest) + "/" + AtomicFile.temporaryPrefix + "\(AtomicFile.hostName)-999999999-x-SHA256SUMS"
        XCTAssertTrue(FileManager.default.createFile(atPath: stale, contents: Data("partial".utf8)))
        t.write("drop/P0/S0/E1/img_new.tif", [UInt8](repeating: 1, count: 4096))
        let again = try emflow(["run", spec])
        XCTAssertEqual(again.status, 0, again.combined)
        XCTAssertTrue(String(decoding: FileManager.default.contents(atPath: manifest) ?? Data(), as: UTF8.self).contains("img_new.tif"))
        XCTAssertEqual(try ProcessRunner.shell("find '\(t.path)/managed' -name '.emflow-tmp-*'").stdout, "")
    }

    func testSecondDriverOnTheSameWorkspaceIsRefused() throws {
        makeDrop(files: 60, size: 512 * 1024)
        let spec = writeSpec(mode: "copy")
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Tools.emflow)
        p.arguments = ["run", "--quiet", "--jobs", "1", spec]
        p.standardOutput = FileHandle.nullDevice; p.standardError = FileHandle.nullDevice
        try p.run()
        defer { p.terminate(); p.waitUntilExit() }
        // Wait until the first driver holds the lock.
        for _ in 0..<100 where !t.exists("managed/.emflow/lock") { Thread.sleep(forTimeInterval: 0.02) }
        Thread.sleep(forTimeInterval: 0.1)
        let r = try emflow(["run", "--quiet", spec])
        XCTAssertEqual(r.status, 2, r.combined)
        XCTAssertTrue(r.stderr.contains("another emflow run (pid \(p.processIdentifier), since "), r.stderr)
    }

    /// Unreadable input and an unwritable output directory, as an ordinary user (root reads everything).
    func testPermissionErrorsNameTheFileAndOtherItemsGoOn() throws {
        makeDrop(files: 3, size: 100)
        let spec = writeSpec(mode: "copy")
        let unreadable = t.file("drop/P0/S0/E1/img_0.tif")
        chmod(unreadable, 0o000)
        // The run goes as 'nobody': the test tree must be reachable for it.
        _ = try ProcessRunner.run("/bin/chmod", ["-R", "a+rwX", t.path])
        chmod(unreadable, 0o000)
        chmod(t.path, 0o777)
        var args = ["--reuid=65534", "--regid=65534", "--clear-groups", Tools.emflow, "run", "--quiet", spec]
        if !Tools.isRoot { args = [Tools.emflow, "run", "--quiet", spec] }
        let r = try ProcessRunner.run(Tools.isRoot ? "/usr/bin/setpriv" : args.removeFirst(), args)
        XCTAssertEqual(r.status, 1, r.combined)
        XCTAssertTrue(r.stdout.contains("\(unreadable): Permission denied"), r.stdout)
        XCTAssertTrue(r.stdout.contains("check the permissions"), r.stdout)
        XCTAssertTrue(t.exists("managed/P1/S1/E1/raw/img_1.tif"))
        XCTAssertTrue(t.exists("managed/P2/S0/E1/raw/img_2.tif"))
        XCTAssertFalse(t.exists("managed/P0/S0/E1/raw/img_0.tif"))
    }

    /// A full disk on the output side: the failing copy is removed, completed files stay whole.
    func testDiskFullLeavesNoPartialFile() throws {
        // Needs a user+mount namespace (unshare -rm) for a private 1 MiB tmpfs: no root, no real disk filled.
        var big = [UInt8](repeating: 7, count: 700 * 1024)
        t.write("drop/P/S/E/a.tif", big)
        big[0] = 8
        t.write("drop/P/S/E/b.tif", big)
        let spec = writeSpec(mode: "copy", root: "small")
        try FileManager.default.createDirectory(atPath: t.file("small"), withIntermediateDirectories: true)
        // A 1 MiB tmpfs holds one file, not two. Workspace elsewhere so the catalog still fits.
        let s = t.read("spec.yaml")!.replacingOccurrences(of: "outputs: {root: small}", with: "outputs: {root: small}\nworkspace: ws")
        t.write("spec.yaml", s)
        let script = """
            mount -t tmpfs -o size=1m tmpfs '\(t.file("small"))' || exit 99
            '\(Tools.emflow)' run --quiet --jobs 1 '\(spec)'; echo "exit=$?"
            find '\(t.file("small"))' -name '.emflow-tmp-*' | sed 's/^/TEMP /'
            for f in '\(t.file("small"))'/P/S/E/raw/*.tif; do [ -f "$f" ] && echo "FILE $(basename $f) $(stat -c %s "$f")"; done
            """
        let r = try ProcessRunner.run("/usr/bin/unshare", ["-rm", "bash", "-c", script])
        XCTAssertTrue(r.stdout.contains("exit=1"), r.combined)
        XCTAssertTrue(r.stdout.contains("No space left on device"), r.stdout)
        XCTAssertTrue(r.stdout.contains("free space"), r.stdout)
        XCTAssertFalse(r.stdout.contains("TEMP "), r.stdout)
        XCTAssertTrue(r.stdout.contains("FILE a.tif \(700 * 1024)"), r.stdout)
        XCTAssertFalse(r.stdout.contains("FILE b.tif"), r.stdout)
    }
}
