import XCTest
@testable import Engine
import WorkflowSpec
import Catalog
import POSIXFiles
import S3Stage
import TestSupport

final class EngineTests: XCTestCase {
    var t: TempDir!
    override func setUp() { t = TempDir("emflow-engine") }
    override func tearDown() { t.cleanup() }

    /// A spec's `s3:` section reaches the client's configuration (credentials never come from it).
    func testS3SettingsOfASpecReachTheClientConfiguration() {
        var s = S3Settings()
        s.etags = "opaque"; s.partSizeMiB = 8; s.concurrency = 3; s.addressing = "virtual"
        let o = S3Access.overrides(s)
        XCTAssertEqual(o.etags, .opaque)
        XCTAssertEqual(o.partSize, 8 << 20)
        XCTAssertEqual(o.concurrency, 3)
        XCTAssertEqual(o.addressing, .virtual)
        XCTAssertNil(S3Access.overrides(S3Settings()).etags, "the server's ETags are taken for MD5s unless the spec says otherwise")
    }

    func spec(stages: String, mode: String = "link", extra: String = "") -> String {
        t.write("spec.yaml", """
            name: test
            inputs:
              - path: drop
                include: ["**/*.tif"]
                layout: "{proposal}/{sample}/{experiment}/{file}"
            outputs: {root: managed}
            \(extra)
            stages:
            \(stages)
            """)
    }

    static let threeStages = """
          ingest: {uses: ingest, with: {mode: copy}, retry: {tries: 2, backoff: [0]}}
          checksum: {uses: checksum, needs: [ingest]}
          readme: {uses: readme, needs: [checksum]}
        """

    func run(_ specPath: String, dryRun: Bool = false) throws -> RunSummary {
        var o = RunOptions(); o.progress = false; o.dryRun = dryRun; o.jobs = 2
        return try RunDriver(specPath: specPath).run(o)
    }

    func line(_ s: RunSummary, _ stage: String) -> RunSummary.StageLine { s.stages.first { $0.stage == stage }! }

    func testFullRunThenRerunDoesNoWorkAndAMisfitFileFailsAlone() throws {
        t.write("drop/P1/S1/E1/a.tif", "aaaa"); t.write("drop/P1/S1/E1/b.tif", "bbbbbb"); t.write("drop/P1/S2/E1/c.tif", "c")
        t.write("drop/P1/stray.tif", "misplaced")   // does not fit the layout
        t.write("drop/P1/S1/E1/notes.txt", "not included")
        let s = spec(stages: Self.threeStages)
        let r1 = try run(s)
        XCTAssertEqual(r1.state, "failed")
        XCTAssertEqual(line(r1, "ingest").succeeded, 3)
        XCTAssertEqual(line(r1, "ingest").failed, 1)
        XCTAssertTrue(r1.failures[0].error.contains("does not fit the layout"), r1.failures[0].error)
        XCTAssertEqual(line(r1, "checksum").succeeded, 3)
        XCTAssertEqual(line(r1, "checksum").blocked, 1)
        XCTAssertEqual(t.read("managed/P1/S1/E1/raw/a.tif"), "aaaa")
        XCTAssertEqual(try FileStatus.of(path: t.file("managed/P1/S1/E1/raw/a.tif")).mode & 0o222, 0, "raw files are read-only")
        // SHA256SUMS that sha256sum -c accepts
        let check = try ProcessRunner.shell("cd '\(t.file("managed/P1/S1/E1/raw"))' && sha256sum -c SHA256SUMS")
        XCTAssertEqual(check.status, 0, check.combined)
        XCTAssertTrue(check.stdout.contains("a.tif: OK") && check.stdout.contains("b.tif: OK"))
        XCTAssertTrue(t.read("managed/P1/README.txt")?.contains("Samples:") ?? false)
        XCTAssertTrue(t.read("managed/P1/S1/E1/README.txt")?.contains(SHA256Hasher_abcd) ?? false)

        let r2 = try run(s)
        XCTAssertEqual(line(r2, "ingest").succeeded, 0)
        XCTAssertEqual(line(r2, "ingest").skipped, 3)
        XCTAssertEqual(line(r2, "checksum").skipped, 3)
        XCTAssertEqual(line(r2, "readme").skipped, line(r1, "readme").succeeded)
        XCTAssertEqual(line(r2, "ingest").failed, 1, "the misfit is reported again, not forgotten")

        let c = try Catalog(path: t.file("managed/.emflow/catalog.sqlite"))
        XCTAssertEqual(try c.objects().count, 3)
        XCTAssertEqual(try c.runs().count, 2)
        XCTAssertEqual(try c.object(uri: t.file("managed/P1/S1/E1/raw/a.tif"))?.proposal, "P1")
    }

    // sha256("aaaa")
    let SHA256Hasher_abcd = "61be55a8e2f6b4e172338bddf184d6dbee29c98853e0a0485ecee7f27b9af0b4"

    func testANewFileWithTheSameNameNeverOverwritesRawData() throws {
        t.write("drop/P/S/E/a.tif", "first")
        let s = spec(stages: "  ingest: {uses: ingest, with: {mode: copy}}")
        XCTAssertEqual(try run(s).state, "succeeded")
        t.write("drop/P/S/E/a.tif", "second version")
        let r = try run(s)
        XCTAssertEqual(r.state, "failed")
        XCTAssertTrue(r.failures[0].error.contains("never overwritten"), r.failures[0].error)
        XCTAssertEqual(t.read("managed/P/S/E/raw/a.tif"), "first")
    }

    func testVerifyReportsACorruptedFile() throws {
        t.write("drop/P/S/E/a.tif", "abcdef"); t.write("drop/P/S/E/b.tif", "ghijkl")
        let s = spec(stages: """
              ingest: {uses: ingest, with: {mode: copy}}
              checksum: {uses: checksum, needs: [ingest]}
            """)
        XCTAssertEqual(try run(s).state, "succeeded")
        // Bit rot: same size, same mtime, other bytes.
        let victim = t.file("managed/P/S/E/raw/a.tif")
        let st = try FileStatus.of(path: victim)
        chmod(victim, 0o644)
        t.write("managed/P/S/E/raw/a.tif", "abcdeX")
        var times = [timespec(tv_sec: Int(st.mtimeNanoseconds / 1_000_000_000), tv_nsec: Int(st.mtimeNanoseconds % 1_000_000_000)),
                     timespec(tv_sec: Int(st.mtimeNanoseconds / 1_000_000_000), tv_nsec: Int(st.mtimeNanoseconds % 1_000_000_000))]
        XCTAssertEqual(utimensat(AT_FDCWD, victim, &times, 0), 0)
        let v = t.write("verify.yaml", """
            name: verify
            inputs: [{path: managed, include: ["**/raw/*.tif"]}]
            outputs: {root: managed}
            stages:
              verify: {uses: checksum, with: {verify: true, manifest: false}}
            """)
        let r = try run(v)
        XCTAssertEqual(r.state, "failed")
        XCTAssertEqual(line(r, "verify").succeeded, 1)
        XCTAssertEqual(r.failures.count, 1)
        XCTAssertTrue(r.failures[0].error.contains("SHA-256 mismatch"), r.failures[0].error)
        XCTAssertTrue(r.failures[0].error.contains(victim))
        // Verification always re-reads: a second verify run runs again.
        XCTAssertEqual(line(try run(v), "verify").skipped, 0)
    }

    func testOutputSideErrorNamesThePathAndOtherItemsGoOn() throws {
        t.write("drop/P1/S/E/a.tif", "a"); t.write("drop/P2/S/E/b.tif", "b")
        t.write("managed/P2", "a file where a directory must go")
        let r = try run(spec(stages: "  ingest: {uses: ingest, with: {mode: copy}}"))
        XCTAssertEqual(line(r, "ingest").succeeded, 1)
        XCTAssertEqual(r.failures.count, 1)
        XCTAssertTrue(r.failures[0].error.contains(t.file("managed/P2")), r.failures[0].error)
        XCTAssertEqual(t.read("managed/P1/S/E/raw/a.tif"), "a")
    }

    func testDryRunListsWhatWouldRunAndWhatIsDone() throws {
        t.write("drop/P/S/E/a.tif", "a"); t.write("drop/P/S/E/b.tif", "b")
        let s = spec(stages: Self.threeStages)
        let d1 = try run(s, dryRun: true)
        XCTAssertNil(d1.runID)
        XCTAssertEqual(d1.plan?.filter { $0.stage == "ingest" && $0.action == "run" }.count, 2)
        XCTAssertEqual(d1.plan?.filter { $0.stage == "checksum" && $0.action == "after upstream" }.count, 2)
        XCTAssertFalse(t.exists("managed/P"), "a dry run writes no data")
        _ = try run(s)
        let d2 = try run(s, dryRun: true)
        XCTAssertEqual(d2.plan?.filter { $0.action == "done" }.count, d2.plan?.count)
        t.write("drop/P/S/E/c.tif", "c")
        let d3 = try run(s, dryRun: true)
        XCTAssertEqual(d3.plan?.filter { $0.stage == "ingest" && $0.action == "run" }.map(\.item), ["P/S/E/c.tif"])
    }

    func testMissingInputDirectoryIsAClearError() throws {
        let s = spec(stages: "  ingest: {uses: ingest}")
        XCTAssertThrowsError(try run(s)) { e in
            XCTAssertTrue("\(e)".contains("does not exist"), "\(e)")
            XCTAssertTrue("\(e)".contains("inputs[0].path"), "\(e)")
        }
    }

    func testTransientFailuresAreRetriedWithBackoffOthersAreNot() throws {
        let ctx = TaskContext(outputRoot: t.path, workflow: "w", specSHA256: "", context: .map([:]), reportBytes: { _ in })
        let task = TaskInput(key: "k", runID: "r", stage: "s", kind: "flaky", itemID: "i", item: nil, input: nil, directory: nil,
                             group: nil, parameters: [:], recordedSHA256: nil)
        let start = Date()
        let ok = RunDriver.execute(task, impl: FlakyStage(failures: 2, retryable: true), retry: RetryPolicy(tries: 3, backoff: [0.1, 0.2]), ctx: ctx)
        XCTAssertEqual(ok.state, .succeeded)
        XCTAssertEqual(ok.tries, 3)
        XCTAssertGreaterThanOrEqual(Date().timeIntervalSince(start), 0.8 * 0.3, "waited the backoff between tries")
        let gaveUp = RunDriver.execute(task, impl: FlakyStage(failures: 5, retryable: true), retry: RetryPolicy(tries: 2, backoff: [0]), ctx: ctx)
        XCTAssertEqual(gaveUp.state, .failed)
        XCTAssertEqual(gaveUp.error, "flaky storage (after 2 tries)")
        let permanent = RunDriver.execute(task, impl: FlakyStage(failures: 1, retryable: false), retry: RetryPolicy(tries: 5, backoff: [0]), ctx: ctx)
        XCTAssertEqual(permanent.tries, 1, "bad input is not retried")
    }

    func testProgressLineShowsBytesHashedBeforeAnUploadStarts() throws {
        let pipe = Pipe()
        let p = ProgressReporter(enabled: true, terminal: true, output: pipe.fileHandleForWriting)
        p.begin(stage: "upload", total: 2, skipped: 0)
        p.addHashedBytes(3 << 30)
        p.taskEnded(failed: false)
        p.end()
        try pipe.fileHandleForWriting.close()
        let text = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let last = try XCTUnwrap(text.components(separatedBy: "\r").last)
        XCTAssertTrue(last.contains("upload: 1/2 items (50%)"), last)
        XCTAssertTrue(last.contains(formatBytes(3 << 30) + " hashed first"), last)
        XCTAssertFalse(last.contains(" at "), "nothing sent yet, so no transfer rate: \(last)")
    }

    func testLocalMPILaunchesUseSharedMemoryUnlessTheUserChoseATransport() {
        let local = MPIStages.launchEnvironment(.mpirun, ["PATH": "/usr/bin"])
        XCTAssertEqual(local["OMPI_MCA_pml"], "ob1")
        XCTAssertEqual(local["OMPI_MCA_btl"], "self,vader")
        XCTAssertEqual(local["OMPI_MCA_mpi_yield_when_idle"], "1")
        XCTAssertEqual(local["HWLOC_COMPONENTS"], "-linuxio,-pci")
        XCTAssertEqual(local["PMIX_MCA_gds"], "hash")
        XCTAssertEqual(local["HWLOC_PLUGINS_BLACKLIST"]?.split(separator: ",").contains("hwloc_pci"), true)
        XCTAssertEqual(local["PATH"], "/usr/bin")
        // hwloc's and PMIx's own settings stand too.
        XCTAssertEqual(MPIStages.launchEnvironment(.mpirun, ["HWLOC_COMPONENTS": "-pci"])["HWLOC_COMPONENTS"], "-pci")
        XCTAssertEqual(MPIStages.launchEnvironment(.mpirun, ["PMIX_MCA_gds": "ds21"])["PMIX_MCA_gds"], "ds21")
        // The user's or site's transport stands, whichever of the two it names, and then nothing but
        // the yielding is chosen (with a network transport, the NICs' placement matters).
        let yielding = ["OMPI_MCA_mpi_yield_when_idle": "1"]
        XCTAssertEqual(MPIStages.launchEnvironment(.mpirun, ["OMPI_MCA_btl": "self,tcp"]), ["OMPI_MCA_btl": "self,tcp"].merging(yielding) { a, _ in a })
        XCTAssertEqual(MPIStages.launchEnvironment(.mpirun, ["OMPI_MCA_pml": "ucx"]), ["OMPI_MCA_pml": "ucx"].merging(yielding) { a, _ in a })
        XCTAssertEqual(MPIStages.launchEnvironment(.mpirun, ["OMPI_MCA_mpi_yield_when_idle": "0"])["OMPI_MCA_mpi_yield_when_idle"], "0")
        // srun may place ranks on several nodes: nothing is chosen for it.
        XCTAssertEqual(MPIStages.launchEnvironment(.srun(plugin: "pmix"), ["PATH": "/usr/bin"]), ["PATH": "/usr/bin"])
    }
}

/// Fails its first `failures` calls (per instance), then succeeds.
struct FlakyStage: Stage {
    static let kind = "flaky"
    static let version = 1
    static let schema = ParameterSchema(summary: "test", fields: [])
    let failures: Int
    let retryable: Bool
    let calls = ManagedCounter()
    func run(_ task: TaskInput, _ ctx: TaskContext) throws(StageError) -> TaskResult.Partial {
        if calls.next() <= failures { throw StageError("flaky storage", retryable: retryable) }
        return TaskResult.Partial(artifact: nil)
    }
}

final class ManagedCounter: @unchecked Sendable {
    // @unchecked: guarded by `lock`.
    private let lock = NSLock()
    private var value = 0
    func next() -> Int { lock.lock(); defer { lock.unlock() }; value += 1; return value }
}
