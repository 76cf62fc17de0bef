import XCTest
import Foundation
import TestSupport

/// `emflow backfill`, `emflow status --spec` and `emflow schedule` as operators use them: bounded
/// batches over several invocations with no repeated work, changed and broken files, the lock
/// against overlapping backfills, an S3 archive through the local Slurm, and recurring runs.
final class BackfillTests: XCTestCase {
    var t: TempDir!
    override func setUp() { t = TempDir("emflow-backfill") }
    override func tearDown() { t?.cleanup() }

    func json(_ text: String) -> [String: Any] { (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any] ?? [:] }

    func emflow(_ args: [String], env: [String: String]? = nil) throws -> ProcessOutput {
        try ProcessRunner.run(Tools.emflow, args, environment: env, cwd: t.path)
    }

    /// `n` converted-ready TIFFs (one vendor file under many names) in P1/S<i%3>/E1/.
    func makeArchive(_ n: Int, in dir: String) throws -> [String: String] {
        let fixtures = try Fixtures.vendorSet(in: t.file("fixtures"), size: 32)
        let bytes = try Data(contentsOf: URL(fileURLWithPath: fixtures["fei_helios.tif"]!))
        for i in 0..<n {
            let path = t.file("\(dir)/P1/S\(i % 3)/E1/f\(String(format: "%04d", i)).tif")
            try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try bytes.write(to: URL(fileURLWithPath: path))
        }
        return fixtures
    }

    func archive(_ spec: String, env: [String: String]? = nil, polling: Bool = false) throws -> [String: Any] {
        let s = try emflow(["status", "--spec", spec, "--json"], env: env)
        if !polling { XCTAssertEqual(s.status, 0, s.combined) }
        return json(s.stdout)["archive"] as? [String: Any] ?? [:]
    }

    func count(_ archive: [String: Any], _ state: String) -> Int {
        ((archive["states"] as? [String: Any])?[state] as? [String: Any])?["items"] as? Int ?? 0
    }

    func sha256(_ path: String) throws -> String { String(try ProcessRunner.run("/usr/bin/sha256sum", [path]).stdout.prefix(64)) }

    // MARK: - Local archive

    func testBatchesOverSeveralInvocationsChangedAndBrokenFilesAndTheLock() throws {
        let fixtures = try makeArchive(12, in: "archive")
        _ = try ProcessRunner.run("/bin/cp", ["-r", Tools.packageRoot + "/Mappings", t.file("mappings")])
        let spec = t.write("spec.yaml", """
            name: archive-test
            inputs: [{path: archive, include: ["**/*.tif"], layout: "{proposal}/{sample}/{experiment}/{file}"}]
            outputs: {root: managed}
            workspace: ws
            stages:
              ingest: {uses: ingest, with: {mode: copy}}
              checksum: {uses: checksum, needs: [ingest]}
              convert: {uses: convert, needs: [checksum], with: {to: nxem, mappings: mappings, timezone: Europe/Rome}, retry: {tries: 1}}
              readme: {uses: readme, needs: [checksum]}
            """)
        // Three invocations of at most 5 items: 5, 5, 2; the later listings find nothing new.
        var batches: [Int] = []
        var runIDs: [String] = []
        for n in 0..<3 {
            let r = try emflow(["backfill", "--max-items", "5", "--json", spec])
            XCTAssertEqual(r.status, 0, r.combined)
            let rep = json(r.stdout)
            let reg = (rep["listing"] as? [String: Any])?["registration"] as? [String: Any] ?? [:]
            XCTAssertEqual(reg["new"] as? Int, n == 0 ? 12 : 0, r.stdout)
            XCTAssertEqual(reg["unchanged"] as? Int, n == 0 ? 0 : 12, r.stdout)
            let batch = rep["batch"] as? [String: Any] ?? [:]
            batches.append(batch["items"] as? Int ?? -1)
            runIDs.append(batch["runID"] as? String ?? "")
            XCTAssertEqual((batch["settled"] as? [String: Any])?["done"] as? Int, batch["items"] as? Int, r.stdout)
        }
        XCTAssertEqual(batches, [5, 5, 2])
        // No item ran twice: each run's ingest ran exactly its batch.
        for (run, n) in zip(runIDs, batches) {
            let s = json(try emflow(["status", run, "--spec", spec, "--json"]).stdout)
            let ingest = (s["stages"] as? [[String: Any]])?.first { $0["stage"] as? String == "ingest" }?["counts"] as? [String: Any]
            XCTAssertEqual(ingest?["succeeded"] as? Int, n, "\(s)")
            XCTAssertNil(ingest?["skipped"], "\(s)")
        }
        // Nothing pending: no new run is started.
        let runsBefore = (try JSONSerialization.jsonObject(with: Data(try emflow(["status", "--all", "--json", "--spec", spec]).stdout.utf8)) as? [Any])?.count
        let idle = try emflow(["backfill", spec])
        XCTAssertEqual(idle.status, 0, idle.combined)
        XCTAssertTrue(idle.stdout.contains("nothing pending"), idle.stdout)
        XCTAssertEqual((try JSONSerialization.jsonObject(with: Data(try emflow(["status", "--all", "--json", "--spec", spec]).stdout.utf8)) as? [Any])?.count, runsBefore)
        var a = try archive(spec)
        XCTAssertEqual(count(a, "done"), 12)
        XCTAssertEqual((a["total"] as? [String: Any])?["items"] as? Int, 12)

        // The experiment's README and SHA256SUMS describe every file, though no batch held them all.
        for s in 0..<3 {
            let readme = t.read("managed/P1/S\(s)/E1/README.txt") ?? ""
            XCTAssertTrue(readme.contains("Data: 4 file(s)"), readme)
            XCTAssertEqual(readme.components(separatedBy: "sha256:").count - 1, 4, readme)
            let sums = try ProcessRunner.shell("cd '\(t.file("managed/P1/S\(s)/E1/raw"))' && sha256sum -c --quiet SHA256SUMS && wc -l < SHA256SUMS")
            XCTAssertEqual(sums.stdout.trimmingCharacters(in: .whitespacesAndNewlines), "4", sums.combined)
        }
        let nexus = (0..<12).map { t.file("managed/P1/S\($0 % 3)/E1/nexus/f\(String(format: "%04d", $0)).nxs") }
        XCTAssertEqual(try NexusValidator.problems(nexus), [:])

        // A replaced file is pending again, and ingest refuses to overwrite the raw copy (by name); a
        // new broken file fails alone; what was written before stays as it was.
        let before = try sha256(nexus[1])
        try Data(contentsOf: URL(fileURLWithPath: fixtures["zeiss_sigma.tif"]!)).write(to: URL(fileURLWithPath: t.file("archive/P1/S1/E1/f0001.tif")))
        _ = t.write("archive/P1/S0/E1/f0012.tif", "not a TIFF at all")
        let changed = try emflow(["backfill", "--json", spec])
        XCTAssertEqual(changed.status, 1, changed.combined)
        let rep = json(changed.stdout)
        let reg = (rep["listing"] as? [String: Any])?["registration"] as? [String: Any]
        XCTAssertEqual(reg?["changed"] as? Int, 1); XCTAssertEqual(reg?["new"] as? Int, 1)
        XCTAssertEqual((rep["batch"] as? [String: Any])?["settled"] as? [String: Int], ["failed": 2])
        XCTAssertEqual(try sha256(nexus[1]), before)
        let text = try emflow(["backfill", "--retry-failed", spec])
        XCTAssertEqual(text.status, 1)
        XCTAssertTrue(text.stdout.contains("FAILED ingest P1/S1/E1/f0001.tif") && text.stdout.contains("raw data is never overwritten"), text.stdout)
        XCTAssertTrue(text.stdout.contains("FAILED convert P1/S0/E1/f0012.tif") && text.stdout.contains("not a readable TIFF"), text.stdout)
        a = try archive(spec)
        XCTAssertEqual(count(a, "done"), 11); XCTAssertEqual(count(a, "failed"), 2)
        let plain = try emflow(["status", "--spec", spec])
        XCTAssertTrue(plain.stdout.contains("archive of archive-test: 13 item(s)"), plain.stdout)
        XCTAssertTrue(plain.stdout.contains("failed 2"), plain.stdout)

        // A second backfill while one holds the lock: exits at once, says who holds it, changes nothing.
        let lock = t.file("ws/backfill-archive-test.lock")
        let holder = Process()
        holder.executableURL = URL(fileURLWithPath: "/usr/bin/flock")
        holder.arguments = [lock, "-c", "echo \"$$, since earlier\" > '\(lock)'; sleep 60"]
        try holder.run()
        defer { if holder.isRunning { kill(holder.processIdentifier, SIGKILL) } }
        XCTAssertTrue(waitFor(10) { (t.read(lock) ?? "").contains("since earlier") })
        let start = Date()
        let busy = try emflow(["backfill", spec])
        XCTAssertEqual(busy.status, 75, busy.combined)
        XCTAssertLessThan(Date().timeIntervalSince(start), 10)
        XCTAssertTrue(busy.stderr.contains("another backfill of workflow 'archive-test' is running (pid"), busy.stderr)
        XCTAssertTrue(busy.stderr.contains("this one did nothing"), busy.stderr)
        XCTAssertEqual(try archive(spec)["total"] as? [String: Int], a["total"] as? [String: Int])
    }

    func waitFor(_ seconds: Double, _ cond: () -> Bool) -> Bool {
        let end = Date().addingTimeInterval(seconds)
        while Date() < end { if cond() { return true }; Thread.sleep(forTimeInterval: 0.2) }
        return cond()
    }

    // MARK: - S3 archive on Slurm

    /// The acceptance scenario at test size: an S3 archive through stage-in, checksum and convert on
    /// the local Slurm in bounded batches over several invocations; later listings repeat no work.
    func testS3ArchiveInBatchesThroughSlurm() throws {
        let server = try S3TestServer.require()
        let cluster = try SlurmTestCluster.require()
        let n = 150
        _ = try makeArchive(n, in: "upload")
        _ = try ProcessRunner.run("/bin/cp", ["-r", Tools.packageRoot + "/Mappings", t.file("mappings")])
        let bucket = S3TestServer.bucketName("backfill")
        let env = cluster.environment(extra: server.childEnvironment())
        XCTAssertEqual(try emflow(["s3", "mb", "s3://\(bucket)"], env: env).status, 0)
        let up = try emflow(["s3", "cp", "--recursive", "--quiet", t.file("upload") + "/", "s3://\(bucket)/"], env: env)
        XCTAssertEqual(up.status, 0, up.combined)
        let site = t.write("site.yaml", """
            name: test
            partitions: {default: debug}
            resources: {partition: default, time: "00:10:00", mem: 500M, cpus-per-task: 1}
            throttle: 20
            poll_interval: 1
            """)
        let spec = t.write("spec.yaml", """
            name: s3-archive
            inputs: [{path: "s3://\(bucket)/", include: ["**/*.tif"], layout: "{proposal}/{sample}/{experiment}/{file}"}]
            outputs: {root: managed}
            workspace: ws
            executor: {kind: slurm, site: \(site)}
            stages:
              stage-in: {uses: stage-in, with: {to: staging}, resources: {batch: 25}}
              checksum: {uses: checksum, needs: [stage-in], resources: {batch: 25}}
              convert: {uses: convert, needs: [checksum], with: {to: nxem, mappings: mappings, timezone: Europe/Rome}, resources: {batch: 25}}
            """)
        let counter = try SlurmCallCounter(in: t.path)
        var batches: [Int] = []
        for i in 0..<3 {
            let r = try emflow(["backfill", "--max-items", "60", "--wait", "--json", spec], env: cluster.environment(counter: counter, extra: server.childEnvironment()))
            if r.status != 0 {
                let logs = try emflow(["logs", "--failed", "--lines", "40", "--spec", spec], env: env)
                XCTFail("backfill exited \(r.status): \(r.stderr.suffix(3000))\n\(logs.stdout.prefix(6000))")
            }
            let rep = json(r.stdout)
            let reg = (rep["listing"] as? [String: Any])?["registration"] as? [String: Any] ?? [:]
            XCTAssertEqual(reg["listed"] as? Int, n)
            XCTAssertEqual(reg["new"] as? Int, i == 0 ? n : 0, "the later listings register nothing again")
            let batch = rep["batch"] as? [String: Any] ?? [:]
            batches.append(batch["items"] as? Int ?? -1)
            XCTAssertEqual((batch["settled"] as? [String: Any])?["done"] as? Int, batch["items"] as? Int, r.stdout)
            // Each stage ran exactly the batch's items: nothing done before was staged or converted again.
            let stages = ((rep["submission"] as? [String: Any])?["summary"] as? [String: Any])?["stages"] as? [[String: Any]] ?? []
            XCTAssertEqual(stages.map { $0["succeeded"] as? Int ?? -1 }, [1, 1, 1].map { $0 * (batch["items"] as? Int ?? 0) }, r.stdout)
            XCTAssertEqual(stages.map { $0["skipped"] as? Int ?? -1 }, [0, 0, 0], r.stdout)
        }
        XCTAssertEqual(batches, [60, 60, 30])
        counter.reset()
        let idle = try emflow(["backfill", "--json", spec], env: cluster.environment(counter: counter, extra: server.childEnvironment()))
        XCTAssertEqual(idle.status, 0, idle.combined)
        XCTAssertNil(json(idle.stdout)["batch"], idle.stdout)
        XCTAssertEqual(counter.count("sbatch"), 0)
        let a = try archive(spec, env: env)
        XCTAssertEqual(count(a, "done"), n)
        XCTAssertNotNil(a["etaSeconds"] ?? (a["batches"] as? Int), "\(a)")
        XCTAssertEqual(a["batches"] as? Int, 3)
        let files = (0..<n).map { t.file("managed/P1/S\($0 % 3)/E1/nexus/f\(String(format: "%04d", $0)).nxs") }
        XCTAssertEqual(files.filter { !t.exists($0) }.count, 0)
        guard files.allSatisfy({ t.exists($0) }) else { return }
        XCTAssertEqual(try NexusValidator.problems(files), [:])
    }

    // MARK: - Schedules

    /// On the local Slurm (Debian's has no scrontab): the schedule's job runs a backfill now, queues
    /// itself for the next time, and goes away on remove.
    func testSlurmScheduleRunsBackfillAndQueuesTheNextTime() throws {
        let cluster = try SlurmTestCluster.require()
        _ = try makeArchive(6, in: "archive")
        let site = t.write("site.yaml", """
            name: test
            partitions: {default: debug}
            resources: {partition: default, time: "00:10:00", mem: 500M, cpus-per-task: 1}
            poll_interval: 1
            """)
        let spec = t.write("spec.yaml", """
            name: sched-test
            inputs: [{path: archive, include: ["**/*.tif"], layout: "{proposal}/{sample}/{experiment}/{file}"}]
            outputs: {root: managed}
            workspace: ws
            executor: {kind: slurm, site: \(site)}
            stages:
              checksum: {uses: checksum}
            """)
        let env = cluster.environment()
        let name = "sched\(UInt32.random(in: 0...UInt32.max))"
        let inst = try emflow(["schedule", "install", spec, "--at", "0 3 * * *", "--name", name, "--max-items", "4", "--now", "--json"], env: env)
        XCTAssertEqual(inst.status, 0, inst.combined)
        let entry = json(inst.stdout)
        let backend = entry["backend"] as? String
        XCTAssertTrue(["sbatch-begin", "scrontab"].contains(backend ?? ""), inst.stdout)
        defer { _ = try? emflow(["schedule", "remove", name, "--spec", spec], env: env) }
        guard backend == "sbatch-begin" else { return }
        // The first occurrence runs at once: it submits a batch of 4, which status collects once it ended.
        XCTAssertTrue(waitFor(90) { (try? self.archive(spec, env: env, polling: true)).map { self.count($0, "done") } == 4 },
                      (try? String(contentsOfFile: t.file("ws/schedule/\(name)-\(entry["jobID"] as? String ?? "").log"), encoding: .utf8)) ?? "no log")
        // ... and queued the next one for 03:00, waiting on its begin time.
        var next = ""
        XCTAssertTrue(waitFor(30) {
            let out = (try? self.emflow(["schedule", "list", "--spec", spec, "--json"], env: env))?.stdout ?? "[]"
            let l = ((try? JSONSerialization.jsonObject(with: Data(out.utf8))) as? [[String: Any]])?.first { $0["name"] as? String == name }
            next = l?["jobID"] as? String ?? ""
            return !next.isEmpty && next != entry["jobID"] as? String
        })
        // While this occurrence's job is still ending, --dependency=singleton holds the next one
        // (reason Dependency); once it has left the queue, the next one waits on its begin time.
        var line = ""
        XCTAssertTrue(waitFor(60) {
            line = (try? ProcessRunner.run("/usr/bin/squeue", ["--noheader", "--jobs=\(next)", "--format=%j|%T|%r|%S"], environment: env))?.stdout ?? ""
            XCTAssertTrue(line.contains("emflow-schedule-\(name)|PENDING|BeginTime|") || line.contains("emflow-schedule-\(name)|PENDING|Dependency|"), line)
            return line.contains("|BeginTime|")
        }, line)
        XCTAssertTrue(line.contains("T03:00:00"), line)
        let rm = try emflow(["schedule", "remove", name, "--spec", spec], env: env)
        XCTAssertEqual(rm.status, 0, rm.combined)
        let gone = try ProcessRunner.run("/usr/bin/squeue", ["--noheader", "--name=emflow-schedule-\(name)", "--states=PENDING"], environment: env)
        XCTAssertEqual(gone.stdout.trimmingCharacters(in: .whitespacesAndNewlines), "", gone.combined)
        let unknown = try emflow(["schedule", "remove", name, "--spec", spec], env: env)
        XCTAssertEqual(unknown.status, 2)
        XCTAssertTrue(unknown.stderr.contains("no schedule named '\(name)'"), unknown.stderr)
    }

    /// The local executor's schedule is a crontab line in a marked block; the user's own lines stay.
    func testCrontabScheduleKeepsTheUsersLines() throws {
        let spec = t.write("spec.yaml", """
            name: cron-test
            inputs: [{path: archive}]
            outputs: {root: managed}
            workspace: ws
            stages:
              checksum: {uses: checksum}
            """)
        try FileManager.default.createDirectory(atPath: t.file("archive"), withIntermediateDirectories: true)
        let saved = try ProcessRunner.run("/usr/bin/crontab", ["-l"])
        let original = saved.status == 0 ? saved.stdout : nil
        defer {
            if let original { _ = try? ProcessRunner.shell("printf '%s' '\(original.replacingOccurrences(of: "'", with: "'\\''"))' | crontab -") }
            else { _ = try? ProcessRunner.run("/usr/bin/crontab", ["-r"]) }
        }
        let mine = (original ?? "") + "# a line of the user's own\n17 4 * * * /bin/true\n"
        XCTAssertEqual(try ProcessRunner.shell("printf '%s' '\(mine.replacingOccurrences(of: "'", with: "'\\''"))' | crontab -").status, 0)
        let name = "cron\(UInt32.random(in: 0...UInt32.max))"
        let inst = try emflow(["schedule", "install", spec, "--at", "@daily", "--name", name, "--max-bytes", "2T"])
        XCTAssertEqual(inst.status, 0, inst.combined)
        let table = try ProcessRunner.run("/usr/bin/crontab", ["-l"]).stdout
        XCTAssertTrue(table.hasPrefix(mine), table)
        XCTAssertTrue(table.contains("@daily \(Tools.emflow) backfill \(t.file("spec.yaml")) --max-bytes 2T --quiet >> \(t.file("ws/schedule/\(name).log")) 2>&1")
                      || table.contains("backfill \(spec) --max-bytes 2T --quiet"), table)
        let list = try emflow(["schedule", "list", "--json"])
        XCTAssertTrue(list.stdout.contains("\"name\" : \"\(name)\""), list.stdout)
        XCTAssertTrue(list.stdout.contains("\"backend\" : \"crontab\""), list.stdout)
        XCTAssertEqual(try emflow(["schedule", "remove", name]).status, 0)
        XCTAssertEqual(try ProcessRunner.run("/usr/bin/crontab", ["-l"]).stdout, mine)
    }
}
