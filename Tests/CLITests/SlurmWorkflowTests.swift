import XCTest
import Foundation
import TestSupport

/// The Slurm executor on a real single-machine cluster (scripts/slurm-cluster): packing and array
/// splitting, scheduler calls counted through PATH wrappers, failures with their Slurm states,
/// a controller outage, a killed driver, cancel, and spec values that must never reach a shell.
final class SlurmWorkflowTests: XCTestCase {
    var t: TempDir!
    override func setUp() { t = TempDir("emflow-slurm") }
    override func tearDown() { t?.cleanup() }

    /// `n` 4 KiB files in the layout P/S/E/file (3 samples).
    func makeDrop(_ n: Int, start: Int = 0, dir: String = "drop") {
        for i in start..<(start + n) {
            let bytes = (0..<4096).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ i &* 7 &+ ($0 >> 7) &* i) }
            _ = t.write("\(dir)/P1/S\(i % 3)/E1/f\(i).tif", bytes)
        }
    }

    /// A site profile for this test: the local cluster's, plus set-up lines.
    func site(_ setup: [String] = [], poll: Double = 1) -> String {
        let lines = setup.map { "  - " + yamlQuote($0) }.joined(separator: "\n")
        return t.write("site.yaml", """
            name: test
            partitions: {default: debug}
            resources: {partition: default, time: "00:10:00", mem: 500M, cpus-per-task: 1}
            setup:
            \(lines.isEmpty ? "  []" : lines)
            throttle: 20
            poll_interval: \(poll)
            """)
    }

    func yamlQuote(_ s: String) -> String { "'" + s.replacingOccurrences(of: "'", with: "''") + "'" }

    func emflow(_ args: [String], cluster: SlurmTestCluster, counter: SlurmCallCounter? = nil) throws -> ProcessOutput {
        try ProcessRunner.run(Tools.emflow, args, environment: cluster.environment(counter: counter), cwd: t.path)
    }

    func background(_ args: [String], cluster: SlurmTestCluster, log: String) throws -> Process {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Tools.emflow)
        p.arguments = args
        p.environment = cluster.environment()
        p.currentDirectoryURL = URL(fileURLWithPath: t.path)
        FileManager.default.createFile(atPath: log, contents: nil)
        let h = FileHandle(forWritingAtPath: log)!
        p.standardOutput = h; p.standardError = h
        try p.run()
        return p
    }

    func json(_ text: String) -> [String: Any] {
        (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any] ?? [:]
    }

    /// Every result line of every run of the workspace: (stage, item, state).
    func resultLines(_ workspace: String) -> [(String, String, String)] {
        var out: [(String, String, String)] = []
        let runs = workspace + "/runs"
        for run in (try? FileManager.default.contentsOfDirectory(atPath: runs)) ?? [] {
            let rd = runs + "/" + run + "/results"
            for stage in (try? FileManager.default.contentsOfDirectory(atPath: rd)) ?? [] {
                for f in (try? FileManager.default.contentsOfDirectory(atPath: rd + "/" + stage)) ?? [] {
                    let text = (try? String(contentsOfFile: rd + "/" + stage + "/" + f, encoding: .utf8)) ?? ""
                    for l in text.split(separator: "\n") {
                        let o = json(String(l))
                        out.append((stage, o["itemID"] as? String ?? "?", o["state"] as? String ?? "?"))
                    }
                }
            }
        }
        return out
    }

    func waitFor(_ seconds: Double, _ cond: () -> Bool) -> Bool {
        let end = Date().addingTimeInterval(seconds)
        while Date() < end { if cond() { return true }; Thread.sleep(forTimeInterval: 0.2) }
        return cond()
    }

    func planJobs(_ workspace: String) -> [String] {
        let runs = (try? FileManager.default.contentsOfDirectory(atPath: workspace + "/runs")) ?? []
        return runs.flatMap { r -> [String] in
            let text = (try? String(contentsOfFile: "\(workspace)/runs/\(r)/slurm/plan.json", encoding: .utf8)) ?? ""
            return ((json(text)["stages"] as? [[String: Any]]) ?? []).flatMap { ($0["arrays"] as? [[String: Any]] ?? []).compactMap { $0["jobID"] as? String } }
        }
    }

    // MARK: -

    /// 1,000 items through three per-item stages and a README stage: as many sbatch calls as the
    /// packing says (arrays split at MaxArraySize 50), few squeue calls, everything recorded; the
    /// second run submits nothing.
    func testThousandItemsThroughThreeStagesAsPackedArrays() throws {
        let cluster = try SlurmTestCluster.require()
        let counter = try SlurmCallCounter(in: t.path)
        makeDrop(1000)
        let spec = t.write("spec.yaml", """
            name: thousand
            inputs: [{path: drop, layout: "{proposal}/{sample}/{experiment}/{file}"}]
            outputs: {root: managed}
            executor: {kind: slurm, site: \(site())}
            stages:
              ingest: {uses: ingest, resources: {batch: 10}}
              checksum: {uses: checksum, needs: [ingest], resources: {batch: 40}}
              verify: {uses: checksum, needs: [checksum], with: {verify: true, manifest: false}, resources: {batch: 100}}
              readme: {uses: readme, needs: [checksum]}
            """)
        let start = Date()
        let run = try emflow(["run", "--wait", "--json", spec], cluster: cluster, counter: counter)
        let wall = Date().timeIntervalSince(start)
        XCTAssertEqual(run.status, 0, run.combined)
        let sub = json(run.stdout)
        let arrays = sub["arrays"] as? [[String: Any]] ?? []
        // ingest: 100 tasks → arrays of 50 + 50; checksum: 25 tasks; verify: 10 tasks.
        XCTAssertEqual(arrays.map { $0["tasks"] as? Int ?? 0 }, [50, 50, 25, 10])
        XCTAssertEqual(counter.count("sbatch"), 4)
        XCTAssertEqual(sub["sbatchCalls"] as? Int, 4)
        let squeues = counter.count("squeue")
        XCTAssertLessThanOrEqual(Double(squeues), wall / 1.0 + 3, "one squeue per poll interval (1 s) for all arrays: \(squeues) in \(wall) s")
        let summary = sub["summary"] as? [String: Any] ?? [:]
        XCTAssertEqual(summary["state"] as? String, "succeeded", run.stdout)
        let stages = summary["stages"] as? [[String: Any]] ?? []
        XCTAssertEqual(stages.map { $0["succeeded"] as? Int ?? -1 }, [1000, 1000, 1000, 7])
        // The data: ingested, summed (sha256sum -c accepts the manifests), README per level.
        let check = try ProcessRunner.shell("cd '\(t.file("managed/P1/S1/E1/raw"))' && sha256sum -c --quiet SHA256SUMS && wc -l < SHA256SUMS")
        XCTAssertEqual(check.status, 0, check.combined)
        XCTAssertEqual(check.stdout.trimmingCharacters(in: .whitespacesAndNewlines), "333")
        XCTAssertTrue(t.exists("managed/P1/README.txt"))
        // Each item ran once per stage.
        let lines = resultLines(t.file("managed/.emflow"))
        XCTAssertEqual(lines.count, 3000)
        XCTAssertEqual(Set(lines.map { "\($0.0)/\($0.1)" }).count, 3000)
        // The scripts are plain and kept.
        let scripts = try ProcessRunner.shell("ls \(t.path)/managed/.emflow/runs/*/slurm/ingest/array-1.sh && cat \(t.path)/managed/.emflow/runs/*/slurm/ingest/array-1.sh")
        XCTAssertTrue(scripts.stdout.contains("#SBATCH --array=0-49%20"), scripts.stdout)
        XCTAssertTrue(scripts.stdout.contains("slice=$(( 50 + SLURM_ARRAY_TASK_ID ))"), scripts.stdout)

        counter.reset()
        let again = try emflow(["run", "--wait", spec], cluster: cluster, counter: counter)
        XCTAssertEqual(again.status, 0, again.combined)
        // Only the verification stage, which always runs (as on the local executor): one array.
        XCTAssertEqual(counter.count("sbatch"), 1, again.combined)
        XCTAssertTrue(again.stdout.contains("ingest: 0 done, 1000 already done"), again.stdout)
        XCTAssertTrue(again.stdout.contains("verify: 1000 done"), again.stdout)
        let status = try emflow(["status", "--spec", spec, "--json"], cluster: cluster)
        XCTAssertEqual(json(status.stdout)["run"].flatMap { ($0 as? [String: Any])?["state"] as? String }, "succeeded", status.stdout)
    }

    /// A failing item, a TIMEOUT and an OUT_OF_MEMORY, on a cluster with accounting (sacct) where
    /// finished jobs leave squeue after 2 s: each item ends in the right state and `emflow logs`
    /// says why, with the array task's exit code and stderr.
    func testFailureTimeoutAndOutOfMemoryAreReportedWithTheirCause() throws {
        let cluster = try SlurmTestCluster.start(["--cpus", "16", "--accounting", "--min-job-age", "2"]).get()
        defer { cluster.stop() }
        let counter = try SlurmCallCounter(in: t.path)
        makeDrop(6)
        // (slow and hungry differ in a parameter: the same kind, parameters and input would be one task.)
        // Raw data is never overwritten: this item's ingest fails.
        _ = t.write("managed/P1/S2/E1/raw/f2.tif", "other content")
        let siteFile = site([
            "case \"$SLURM_JOB_NAME\" in *-slow) sleep 300;; esac",
            "case \"$SLURM_JOB_NAME\" in *-hungry) python3 -c 'import time; a = bytearray(600 << 20); time.sleep(20)';; esac",
        ], poll: 2)
        let spec = t.write("spec.yaml", """
            name: faults
            inputs: [{path: drop, layout: "{proposal}/{sample}/{experiment}/{file}"}]
            outputs: {root: managed}
            executor: {kind: slurm, site: \(siteFile)}
            stages:
              ingest: {uses: ingest, resources: {batch: 3}}
              slow: {uses: checksum, with: {manifest: false}, resources: {time: "1", batch: 6}}
              hungry: {uses: checksum, with: {manifest: true}, resources: {mem: 50M, batch: 6}}
            """)
        let run = try emflow(["run", "--wait", spec], cluster: cluster, counter: counter)
        XCTAssertEqual(run.status, 1, run.combined)
        XCTAssertTrue(run.stdout.contains("ingest: 5 done, 0 already done, 1 FAILED"), run.stdout)
        XCTAssertTrue(run.stdout.contains("slow: 0 done, 0 already done, 6 FAILED"), run.stdout)
        XCTAssertTrue(run.stdout.contains("hungry: 0 done, 0 already done, 6 FAILED"), run.stdout)
        XCTAssertGreaterThan(counter.count("sacct"), 0, "final states come from accounting")

        let logs = try emflow(["logs", "--failed", "--spec", spec], cluster: cluster)
        XCTAssertEqual(logs.status, 0, logs.combined)
        XCTAssertTrue(logs.stdout.contains("FAILED ingest P1/S2/E1/f2.tif"), logs.stdout)
        XCTAssertTrue(logs.stdout.contains("exit 1:0"), "the worker's exit code, from sacct: \(logs.stdout)")
        XCTAssertTrue(logs.stdout.contains("ended TIMEOUT"), logs.stdout)
        XCTAssertTrue(logs.stdout.contains("raise resources.time"), logs.stdout)
        XCTAssertTrue(logs.stdout.contains("DUE TO TIME LIMIT"), "stderr tail: \(logs.stdout)")
        // Slurm here kills a job over its memory by polling (no cgroups); it reports FAILED, and
        // emflow reads slurmstepd's message to say OUT_OF_MEMORY.
        XCTAssertTrue(logs.stdout.contains("ended OUT_OF_MEMORY"), logs.stdout)
        XCTAssertTrue(logs.stdout.contains("Exceeded job memory limit"), logs.stdout)
        let js = try emflow(["logs", "--failed", "--json", "--spec", spec], cluster: cluster)
        let entries = (try? JSONSerialization.jsonObject(with: Data(js.stdout.utf8))) as? [[String: Any]] ?? []
        XCTAssertEqual(entries.count, 13)

        // The run's report: failures with their stderr tails, tasks with their array task and queue wait.
        let rep = try emflow(["report", "--json", "--spec", spec], cluster: cluster)
        XCTAssertEqual(rep.status, 0, rep.combined)
        let report = (try? JSONSerialization.jsonObject(with: Data(rep.stdout.utf8))) as? [String: Any] ?? [:]
        let failures = report["failures"] as? [[String: Any]] ?? []
        XCTAssertEqual(failures.count, 13)
        XCTAssertTrue(failures.contains { ($0["stderrTail"] as? [String] ?? []).joined().contains("DUE TO TIME LIMIT") }, "\(failures)")
        let tasks = report["tasks"] as? [[String: Any]] ?? []
        let ingest = tasks.filter { $0["stage"] as? String == "ingest" }
        XCTAssertEqual(ingest.count, 6, rep.stdout)
        XCTAssertTrue(ingest.allSatisfy { ($0["arrayTask"] as? String ?? "").contains("_") && ($0["wait"] as? Double ?? -1) >= 0 }, "\(ingest)")
        let html = t.file("report.html")
        XCTAssertEqual(try emflow(["report", "--spec", spec, "--html", html], cluster: cluster).status, 0)
        let page = try Browser.render(html, screenshot: Browser.artifact("report-slurm-faults.png"))
        XCTAssertTrue(page.dom.contains("DUE TO TIME LIMIT"), "the stderr tail is on the page")
        XCTAssertTrue(page.dom.contains("queued in Slurm"), "the timeline explains the Slurm wait")
    }

    /// slurmctld stopped and started again while a run is followed: the driver retries and says so,
    /// nothing is marked failed. Then the driver is killed with -9 mid-run: running `emflow run`
    /// again submits nothing while the jobs are in Slurm, and following the run finishes it with
    /// every item run exactly once.
    func testControllerOutageAndKilledDriver() throws {
        let cluster = try SlurmTestCluster.require()
        makeDrop(40)
        let slow = t.file("slow")
        _ = t.write("slow", "")
        let spec = t.write("spec.yaml", """
            name: outage
            inputs: [{path: drop, layout: "{proposal}/{sample}/{experiment}/{file}"}]
            outputs: {root: managed}
            executor: {kind: slurm, site: \(site(["if [ -e '\(slow)' ]; then sleep 6; fi"]))}
            stages:
              ingest: {uses: ingest, resources: {batch: 5}}
              checksum: {uses: checksum, needs: [ingest], resources: {batch: 10}}
            """)
        let ws = t.file("managed/.emflow")
        let log1 = t.file("driver1.log")
        let driver = try background(["run", "--wait", spec], cluster: cluster, log: log1)
        XCTAssertTrue(waitFor(30) { planJobs(ws).count >= 2 }, "submitted")
        cluster.stopController()
        Thread.sleep(forTimeInterval: 25)
        XCTAssertTrue(cluster.startController())
        driver.waitUntilExit()
        let out1 = (try? String(contentsOfFile: log1, encoding: .utf8)) ?? ""
        XCTAssertEqual(driver.terminationStatus, 0, out1)
        XCTAssertTrue(out1.contains("slurmctld is not answering"), out1)
        XCTAssertTrue(out1.contains("ingest: 40 done"), out1)

        // kill -9 of the driver while its arrays run.
        makeDrop(30, start: 40)
        let jobsBefore = planJobs(ws).count
        let driver2 = try background(["run", "--wait", spec], cluster: cluster, log: t.file("driver2.log"))
        XCTAssertTrue(waitFor(30) { planJobs(ws).count >= jobsBefore + 2 }, "second run submitted")
        kill(driver2.processIdentifier, SIGKILL)
        driver2.waitUntilExit()
        let counter = try SlurmCallCounter(in: t.path)
        let again = try emflow(["run", spec], cluster: cluster, counter: counter)
        XCTAssertEqual(again.status, 0, again.combined)
        XCTAssertTrue(again.combined.contains("still in Slurm") || again.combined.contains("nothing to do"), again.combined)
        XCTAssertEqual(counter.count("sbatch"), 0, "nothing submitted twice")
        try? FileManager.default.removeItem(atPath: slow)
        let follow = try emflow(["run", "--wait", spec], cluster: cluster, counter: counter)
        XCTAssertEqual(follow.status, 0, follow.combined)
        XCTAssertEqual(counter.count("sbatch"), 0, "the killed run finished everything: \(follow.combined)")
        let lines = resultLines(ws)
        for stage in ["ingest", "checksum"] {
            let items = lines.filter { $0.0 == stage && $0.2 == "succeeded" }.map(\.1)
            XCTAssertEqual(items.count, 70, "\(stage): every item once")
            XCTAssertEqual(Set(items).count, 70, "\(stage): no item twice")
        }
        let status = try emflow(["status", "--all", "--spec", spec, "--json"], cluster: cluster)
        let runs = (try? JSONSerialization.jsonObject(with: Data(status.stdout.utf8))) as? [[String: Any]] ?? []
        XCTAssertTrue(runs.allSatisfy { ($0["state"] as? String) == "succeeded" }, status.stdout)
    }

    /// `emflow cancel` ends a run's jobs and records what was not done; running again resubmits it.
    func testCancelThenRunAgain() throws {
        let cluster = try SlurmTestCluster.require()
        makeDrop(12)
        let slow = t.write("slow", "")
        let spec = t.write("spec.yaml", """
            name: cancel
            inputs: [{path: drop, layout: "{proposal}/{sample}/{experiment}/{file}"}]
            outputs: {root: managed}
            executor: {kind: slurm, site: \(site(["if [ -e '\(slow)' ]; then sleep 120; fi"]))}
            stages:
              ingest: {uses: ingest, resources: {batch: 4}}
              checksum: {uses: checksum, needs: [ingest]}
            """)
        let sub = try emflow(["run", "--json", spec], cluster: cluster)
        XCTAssertEqual(sub.status, 0, sub.combined)
        let runID = json(sub.stdout)["runID"] as? String ?? ""
        XCTAssertFalse(runID.isEmpty, sub.stdout)
        let cancel = try emflow(["cancel", runID, "--spec", spec], cluster: cluster)
        XCTAssertEqual(cancel.status, 0, cancel.combined)
        let status = try emflow(["status", runID, "--spec", spec], cluster: cluster)
        XCTAssertTrue(status.stdout.contains("cancel"), status.stdout)
        let logs = try emflow(["logs", runID, "--failed", "--spec", spec], cluster: cluster)
        XCTAssertTrue(logs.stdout.contains("CANCELLED"), logs.stdout)
        try FileManager.default.removeItem(atPath: slow)
        let again = try emflow(["run", "--wait", spec], cluster: cluster)
        let why = again.status == 0 ? "" : (try emflow(["logs", "--failed", "--spec", spec], cluster: cluster)).stdout
        XCTAssertEqual(again.status, 0, again.combined + why)
        XCTAssertTrue(again.stdout.contains("ingest: 12 done"), again.stdout)
        let unknown = try emflow(["logs", "nosuchrun", "--spec", spec], cluster: cluster)
        XCTAssertEqual(unknown.status, 2)
        XCTAssertTrue(unknown.stderr.contains(runID), "names the runs that exist: \(unknown.stderr)")
    }

    /// `$(…)`, quotes and newlines in spec values and file names never run: resources with them are
    /// refused, a run directory that cannot go into #SBATCH lines is refused before any sbatch, and
    /// names that do reach the script are quoted or reduced to safe characters.
    func testShellMetacharactersAreQuotedOrRefused() throws {
        let cluster = try SlurmTestCluster.require()
        let counter = try SlurmCallCounter(in: t.path)
        let pwned = t.file("PWNED")
        makeDrop(2)
        // Jobs start in the submission directory (t.path): an executed `touch PWNED` would land there.
        _ = t.write("drop/P1/S0/E1/x$(touch PWNED).tif", "evil name")
        _ = t.write("drop/P1/S0/E1/q'\"`touch PWNED`\nz.tif", "evil name 2")
        let siteFile = site()
        let badResources = t.write("bad.yaml", """
            name: bad
            inputs: [{path: drop}]
            outputs: {root: managed}
            executor: {kind: slurm, site: \(siteFile)}
            stages:
              ingest: {uses: ingest, resources: {partition: "debug$(touch PWNED)"}}
            """)
        let r1 = try emflow(["run", badResources], cluster: cluster, counter: counter)
        XCTAssertEqual(r1.status, 2, r1.combined)
        XCTAssertTrue(r1.stderr.contains("partition"), r1.stderr)

        let badWorkspace = t.write("badws.yaml", """
            name: badws
            inputs: [{path: drop}]
            outputs: {root: managed}
            workspace: "ws $(touch PWNED) 'x'"
            executor: {kind: slurm, site: \(siteFile)}
            stages:
              ingest: {uses: ingest}
            """)
        let r2 = try emflow(["run", badWorkspace], cluster: cluster, counter: counter)
        XCTAssertEqual(r2.status, 2, r2.combined)
        XCTAssertTrue(r2.stderr.contains("#SBATCH"), r2.stderr)
        XCTAssertEqual(counter.count("sbatch"), 0)

        let odd = t.write("odd.yaml", """
            name: "we$(touch PWNED)ird 'name' \\"x\\""
            inputs: [{path: drop, layout: "{proposal}/{sample}/{experiment}/{file}"}]
            outputs: {root: managed}
            executor: {kind: slurm, site: \(siteFile)}
            stages:
              ingest: {uses: ingest}
              checksum: {uses: checksum, needs: [ingest]}
            """)
        // Credentials in the environment reach jobs through sbatch's export, never through files.
        let secret = "emflowSecret" + String(UInt64.random(in: 0...UInt64.max), radix: 36)
        let r3 = try ProcessRunner.run(Tools.emflow, ["run", "--wait", odd],
                                       environment: cluster.environment(counter: counter, extra: ["AWS_SECRET_ACCESS_KEY": secret]), cwd: t.path)
        XCTAssertEqual(r3.status, 0, r3.combined)
        XCTAssertTrue(r3.stdout.contains("ingest: 4 done"), r3.stdout)
        XCTAssertFalse(FileManager.default.fileExists(atPath: pwned), "nothing was executed")
        let script = try ProcessRunner.shell("cat \(t.path)/managed/.emflow/runs/*/slurm/ingest/array-0.sh")
        XCTAssertTrue(script.stdout.contains("#SBATCH --job-name=emflow-we__touch_"), script.stdout)
        let leaks = try ProcessRunner.run("/bin/grep", ["-rl", secret, t.file("managed/.emflow")])
        XCTAssertEqual(leaks.stdout, "", "the secret is in no script, log, result or catalog file")
    }

    /// TIFF → NXem as Slurm arrays (the mapping folder's hash computed in each worker): the files
    /// the array tasks write are valid NXem for pynxtools, and a re-run submits nothing.
    func testConversionUnderSlurmWritesValidNXem() throws {
        let cluster = try SlurmTestCluster.require()
        let counter = try SlurmCallCounter(in: t.path)
        let fixtures = try Fixtures.vendorSet(in: t.file("fixtures"), size: 64)
        let names = ["fei_helios.tif", "zeiss_sigma.tif", "jeol_jsm.tif", "tvips_camera.tif"]
        try FileManager.default.createDirectory(atPath: t.file("drop/P1/S1/E1"), withIntermediateDirectories: true)
        for n in names { _ = try ProcessRunner.run("/bin/cp", [fixtures[n]!, t.file("drop/P1/S1/E1/")]) }
        _ = try ProcessRunner.run("/bin/cp", [t.file("fixtures/jeol_jsm.txt"), t.file("drop/P1/S1/E1/")])
        let spec = t.write("spec.yaml", """
            name: slurm-convert
            inputs: [{path: drop, include: ["**/*.tif"], layout: "{proposal}/{sample}/{experiment}/{file}"}]
            outputs: {root: managed}
            executor: {kind: slurm, site: \(site())}
            stages:
              ingest: {uses: ingest}
              checksum: {uses: checksum, needs: [ingest]}
              convert: {uses: convert, needs: [checksum], with: {to: nxem, mappings: \(Tools.packageRoot)/Mappings, timezone: Europe/Rome}, resources: {batch: 2}}
            """)
        let run = try emflow(["run", "--wait", spec], cluster: cluster, counter: counter)
        XCTAssertEqual(run.status, 0, run.combined)
        XCTAssertTrue(run.stdout.contains("convert: 4 done"), run.stdout)
        let nxs = names.map { t.file("managed/P1/S1/E1/nexus/\($0.dropLast(4)).nxs") }
        XCTAssertEqual(try NexusValidator.problems(nxs), [:])
        counter.reset()
        let again = try emflow(["run", "--wait", spec], cluster: cluster, counter: counter)
        XCTAssertEqual(again.status, 0, again.combined)
        XCTAssertEqual(counter.count("sbatch"), 0, again.combined)
        XCTAssertTrue(again.stdout.contains("convert: 0 done, 4 already done"), again.stdout)
    }

    /// A 4D-STEM conversion on 3 MPI ranks under Slurm: the array task holds 3 tasks and starts one
    /// `srun --mpi=pmix` step per item; every frame reads back byte for byte and pynxtools accepts it.
    /// Compressed, the ranks write through HDF5's collective I/O; uncompressed, the ranks of the one node
    /// fill their chunks themselves from memory they share (Slurm's PMIx) and the file is hashed as it fills.
    func testFourDSTEMOnThreeRanksWithSrun() throws {
        let cluster = try SlurmTestCluster.require()
        let counter = try SlurmCallCounter(in: t.path)
        var sources: [String] = []
        for (i, scan) in ["7x5", "4x6"].enumerated() {
            sources.append(try FourDFixtures.generate(in: t.file("drop/P1/S1/E\(i)"), ["--format", "mib", "--scan", scan, "--frame", "32x32", "--name", "scan\(i)", "--seed", "\(i + 3)"]))
        }
        func specFile(_ root: String, compression: String) -> String {
            t.write("\(root).yaml", """
                name: slurm-4d-\(compression)
                inputs: [{path: drop, include: ["**/*.mib"], layout: "{proposal}/{sample}/{experiment}/{file}"}]
                outputs: {root: \(root)}
                executor: {kind: slurm, site: \(site())}
                stages:
                  checksum: {uses: checksum}
                  convert: {uses: convert, needs: [checksum], resources: {ranks: 3, batch: 2}, with: {to: nxem-4d, compression: \(compression), vendor: JEOL, model: ARM300F}}
                """)
        }
        let spec = specFile("managed", compression: "bitshuffle")
        let dry = try emflow(["run", "--dry-run", spec], cluster: cluster)
        XCTAssertTrue(dry.stdout.contains("#SBATCH --ntasks=3"), dry.stdout)
        // Runs `spec` under `root`; every frame must read back and pynxtools accept both files. Returns
        // the outputs and what the ranks reported.
        func convert(_ spec: String, root: String) throws -> (nxs: [String], results: String) {
            let run = try emflow(["run", "--wait", spec], cluster: cluster, counter: counter)
            XCTAssertEqual(run.status, 0, run.combined)
            XCTAssertTrue(run.stdout.contains("convert: 2 done"), run.stdout)
            let nxs = (0..<2).map { t.file("\(root)/P1/S1/E\($0)/nexus/scan\($0).nxs") }
            let checks = try FourDFixtures.check(Array(zip(nxs, sources)))
            XCTAssertTrue(checks.count == 2 && checks.allSatisfy { $0.hasPrefix("ok ") }, checks.joined(separator: "\n"))
            XCTAssertEqual(try NexusValidator.problems(nxs), [:])
            return (nxs, try ProcessRunner.shell("cat '\(t.path)'/\(root)/.emflow/runs/*/mpi/*.result").stdout)
        }
        // Each item ran as a 3-rank srun step inside the array task (the ranks saw Slurm's PMIx).
        let results = try convert(spec, root: "managed").results
        XCTAssertEqual(results.components(separatedBy: "on 3 rank(s)").count - 1, 2, results)
        let launches = try ProcessRunner.shell("grep -h '^launch:' '\(t.path)'/managed/.emflow/runs/*/mpi/*.log").stdout
        XCTAssertEqual(launches.components(separatedBy: "launch: srun --mpi=pmix --ntasks=3 ").count - 1, 2, launches)
        let again = try emflow(["run", "--wait", spec], cluster: cluster, counter: counter)
        XCTAssertTrue(again.stdout.contains("convert: 0 done, 2 already done"), again.stdout)

        let plain = try convert(specFile("plain", compression: "none"), root: "plain")
        XCTAssertEqual(plain.results.components(separatedBy: "output hashed while written").count - 1, 2, plain.results)
        let listed = try emflow(["catalog", "ls", "--spec", t.file("plain.yaml"), "--outputs", "--json"], cluster: cluster)
        for nxs in plain.nxs {
            let actual = try ProcessRunner.shell("sha256sum '\(nxs)' | cut -d' ' -f1").stdout.trimmingCharacters(in: .whitespacesAndNewlines)
            XCTAssertTrue(listed.stdout.contains(actual), "\(nxs): \(listed.stdout)")
        }
    }
}
