import Foundation
import Synchronization
import POSIXFiles
import Checksums
import Catalog
import WorkflowSpec

public struct RunOptions: Sendable {
    public var jobs: Int?
    public var dryRun = false
    public var progress = true
    /// Plain log lines (run started, stage summaries); the CLI prints them.
    public var log: @Sendable (String) -> Void = { _ in }
    /// The items to run instead of the inputs' listing (a backfill batch, a reprocess selection).
    public var items: ItemSource? = nil
    public init() {}
}

/// Items chosen by the caller rather than listed from the inputs; called once the executor has
/// its lock and has dealt with earlier runs, just before it plans.
public typealias ItemSource = @Sendable () throws(EngineError) -> [Item]

extension InputScanner {
    static func items(_ workflow: Workflow, source: ItemSource?) throws(EngineError) -> Result {
        if let source { return Result(items: try source(), problems: []) }
        return try scan(workflow, skip: [workflow.workspace])
    }
}

/// The outcome of one `emflow run`, for printing and for `--json`.
public struct RunSummary: Codable, Sendable {
    public struct StageLine: Codable, Sendable {
        public var stage: String
        public var kind: String
        public var total = 0, succeeded = 0, skipped = 0, failed = 0, blocked = 0
        public var bytes: Int64 = 0
        public var seconds = 0.0
    }
    public struct Failure: Codable, Sendable { public var stage: String; public var item: String; public var error: String }
    public struct Planned: Codable, Sendable { public var stage: String; public var item: String; public var action: String; public var key: String? }

    public var runID: String?
    public var workflow: String
    public var workspace: String
    public var dryRun: Bool
    public var items: Int
    public var stages: [StageLine]
    public var failures: [Failure]
    public var inputProblems: [String]
    public var plan: [Planned]?
    public var seconds: Double
    public var state: String
    public var didWork: Bool { stages.contains { $0.succeeded + $0.failed > 0 } }
}

/// Drives one run of a workflow with the local executor: freezes the spec into a run directory,
/// expands items, and runs each stage's tasks on a worker pool, skipping tasks whose key is done.
public final class RunDriver: Sendable {
    public let workflow: Workflow
    public let specPath: String
    public let specText: [UInt8]
    public let specSHA256: String
    public let catalog: Catalog

    public var runsDirectory: String { Path.join(workflow.workspace, "runs") }

    public convenience init(specPath: String) throws(EngineError) {
        let workflow: Workflow
        do { workflow = try StageRegistry.parser.load(path: specPath) } catch { throw .spec(error) }
        let text: [UInt8]
        do { text = try readFile(workflow.sourceFile.hasPrefix("/") ? workflow.sourceFile : Path.join(currentDirectory(), specPath)) }
        catch { throw .io(error) }
        try self.init(workflow: workflow, specPath: specPath, specText: text)
    }

    /// A run's frozen spec (runs/<id>/spec.yaml), its relative paths taken from the original's directory.
    public convenience init(frozenSpec text: [UInt8], originalPath: String) throws(EngineError) {
        let workflow: Workflow
        do {
            workflow = try StageRegistry.parser.parse(text: String(decoding: text, as: UTF8.self), file: originalPath,
                                                      baseDirectory: (originalPath as NSString).deletingLastPathComponent)
        } catch { throw .spec(error) }
        try self.init(workflow: workflow, specPath: originalPath, specText: text)
    }

    init(workflow: Workflow, specPath: String, specText: [UInt8]) throws(EngineError) {
        self.workflow = workflow
        self.specPath = specPath
        self.specText = specText
        specSHA256 = SHA256Hasher.hash(specText)
        do {
            try makeDirectories(workflow.workspace)
            catalog = try Catalog(path: Path.join(workflow.workspace, "catalog.sqlite"))
        } catch let e as POSIXFileError { throw .io(e) } catch let e as CatalogError { throw .catalog(e) } catch { throw .input("\(error)") }
    }

    static func now() -> Double { Date().timeIntervalSince1970 }

    /// s3:// items reach stages only through a stage-in (whatever the executor).
    func checkFirstStages(_ items: [Item]) throws(EngineError) {
        try MPIStages.check(workflow)
        if items.contains(where: { $0.source.isS3 }) {
            for stage in workflow.stages where stage.needs.isEmpty && stage.uses != StageInStage.kind {
                throw .usage("stage \(stage.name) (\(stage.uses)) would read s3:// inputs directly; add a stage-in stage (uses: stage-in) and make \(stage.name) need it")
            }
        }
    }

    /// What tasks of this workflow may use.
    func context(reportBytes: @escaping @Sendable (Int) -> Void = { _ in }) -> TaskContext {
        Self.context(workflow: workflow, specSHA256: specSHA256, reportBytes: reportBytes)
    }

    static func context(workflow: Workflow, specSHA256: String, reportBytes: @escaping @Sendable (Int) -> Void = { _ in }) -> TaskContext {
        var ctx = TaskContext(outputRoot: workflow.outputs.root, workflow: workflow.name, specSHA256: specSHA256,
                              specPath: Path.resolve(workflow.sourceFile, against: currentDirectory()), naming: workflow.outputs.naming,
                              workspace: workflow.workspace, s3: workflow.s3, context: workflow.context, reportBytes: reportBytes)
        if let s = workflow.executor.site, let site = try? SiteProfile.load(path: s) {
            ctx.stripeBytes = site.storage["stripe_size_mib"].flatMap { Double($0) }.map { Int($0 * 1048576) }
            ctx.mpiPlugin = site.mpi
        }
        return ctx
    }

    public static func newRunID(now: Date = Date()) -> String {
        let f = DateFormatter()
        f.locale = Locale(identifier: "en_US_POSIX"); f.timeZone = TimeZone(identifier: "UTC"); f.dateFormat = "yyyyMMdd'T'HHmmss'Z'"
        return f.string(from: now) + "-" + String(UInt32.random(in: 0...UInt32.max) & 0xFFFFFF, radix: 16)
    }

    // MARK: - Run

    public func run(_ options: RunOptions) throws(EngineError) -> RunSummary {
        let started = Self.now()
        let lock: WorkspaceLock
        do { lock = try WorkspaceLock(workspace: workflow.workspace) } catch { throw error }
        defer { withExtendedLifetime(lock) {} }

        try collectInterruptedRuns(options)
        let scan = try InputScanner.items(workflow, source: options.items)
        let items = scan.items
        for p in scan.problems { options.log("input problem: \(p)") }
        try checkFirstStages(items)

        let runID = options.dryRun ? nil : Self.newRunID()
        let runDir = runID.map { Path.join(runsDirectory, $0) }
        if let runID, let runDir {
            do {
                try makeDirectories(Path.join(runDir, "results"))
                // In the catalog first: a run killed while writing its spec is found (and its directory
                // cleaned) by the next one.
                try catalog.insert(run: RunRecord(id: runID, workflow: workflow.name, specPath: workflow.sourceFile,
                                                  specSHA256: specSHA256, executor: "local", startedAt: started, state: "running",
                                                  items: items.count, emflowVersion: EmflowVersion.current))
                try AtomicFile.write(specText, to: Path.join(runDir, "spec.yaml"))
            } catch let e as POSIXFileError { throw .io(e) } catch let e as CatalogError { throw .catalog(e) } catch { throw .input("\(error)") }
            options.log("run \(runID): \(workflow.name), \(items.count) item(s), \(workflow.stages.count) stage(s), workspace \(workflow.workspace)")
        }

        let progress = ProgressReporter(enabled: options.progress && !options.dryRun)
        let ctx = context(reportBytes: { progress.addBytes($0) })
        var summary = RunSummary(runID: runID, workflow: workflow.name, workspace: workflow.workspace, dryRun: options.dryRun,
                                 items: items.count, stages: [], failures: [], inputProblems: scan.problems,
                                 plan: options.dryRun ? [] : nil, seconds: 0, state: "running")

        // The artifact each item has after each stage; absent = failed or blocked there.
        var after: [String: [String: Artifact]] = [:]
        var unknownAfter: [String: Set<String>] = [:]   // dry run: items whose artifact is not known yet
        var interrupted = false

        for stage in workflow.stages {
            if stopRequested.load(ordering: .relaxed) { interrupted = true; break }
            let impl = StageRegistry.all[stage.uses]!
            var line = RunSummary.StageLine(stage: stage.name, kind: stage.uses)
            let stageStart = Self.now()

            // Inputs of this stage per item, from the first stage it needs (or the item's source).
            var inputs: [(Item, Artifact)] = []
            var blocked: [Item] = []
            var waiting: [Item] = []
            for item in items {
                if let need = stage.needs.first {
                    let missingNeed = stage.needs.first { after[$0]?[item.id] == nil }
                    if let m = missingNeed {
                        if unknownAfter[m]?.contains(item.id) == true { waiting.append(item) } else { blocked.append(item) }
                        continue
                    }
                    inputs.append((item, after[need]![item.id]!))
                } else {
                    inputs.append((item, item.source))
                }
            }

            var tasks: [TaskInput] = []
            let keying = try StageKeying(stage: stage, ctx: ctx, runID: runID)
            if impl.granularity == .perItem {
                for (item, art) in inputs { tasks.append(keying.task(item: item, artifact: art, recorded: try keying.recordedSum(catalog, path: art.path))) }
            } else {
                let (dirTasks, problems) = try keying.directoryTasks(inputs, workflow: workflow, specSHA256: specSHA256, catalog: catalog)
                tasks = dirTasks
                for p in problems {
                    summary.failures.append(.init(stage: stage.name, item: p.item, error: p.error))
                    line.failed += 1
                }
            }

            // Split into done (skip) and to-run.
            var toRun: [TaskInput] = []
            var skippedResults: [TaskResult] = []
            var stageAfter: [String: Artifact] = [:]
            var skipRecords: [TaskRecord] = []
            for t in tasks {
                if let (json, prior) = try keying.doneBefore(t, catalog: catalog) {
                    skippedResults.append(prior)
                    if let a = prior.artifact { stageAfter[t.itemID] = a }
                    line.skipped += 1
                    summary.plan?.append(.init(stage: stage.name, item: t.itemID, action: "done", key: t.key))
                    if let runID {
                        skipRecords.append(TaskRecord(runID: runID, key: t.key, stage: stage.name, kind: stage.uses, item: t.itemID,
                                                      state: "skipped", tries: 0, startedAt: nil, finishedAt: nil, bytes: 0,
                                                      error: nil, result: json))
                    }
                } else {
                    toRun.append(t)
                    summary.plan?.append(.init(stage: stage.name, item: t.itemID, action: "run", key: t.key))
                }
            }
            for item in waiting { summary.plan?.append(.init(stage: stage.name, item: item.id, action: "after upstream", key: nil)) }
            line.total = tasks.count + blocked.count + waiting.count
            line.blocked = blocked.count

            if options.dryRun {
                // Items whose artifact after this stage is not known until it really runs.
                let pending = impl.granularity == .perItem ? toRun.map(\.itemID) : inputs.map(\.0.id)
                unknownAfter[stage.name] = Set(pending + waiting.map(\.id))
                after[stage.name] = stageAfter
                summary.stages.append(line)
                continue
            }

            let runID = runID!, runDir = runDir!
            do {
                try catalog.record(tasks: skipRecords)
                try catalog.record(tasks: blocked.map { item in
                    TaskRecord(runID: runID, key: "blocked:\(stage.name):\(item.id)", stage: stage.name, kind: stage.uses, item: item.id,
                               state: "blocked", tries: 0, startedAt: nil, finishedAt: nil, bytes: 0,
                               error: "not run: an earlier stage (\(stage.needs.joined(separator: ", "))) failed for this item", result: nil)
                })
            } catch { throw .catalog(error) }

            progress.begin(stage: stage.name, total: toRun.count, skipped: line.skipped)
            let resultsDir = Path.join(runDir, "results/\(stage.name)")
            do { try makeDirectories(resultsDir) } catch { throw .io(error) }
            let collected = Mutex<[TaskResult]>([])
            let sink = ResultSink(catalog: catalog)
            let ranks = MPIStages.ranks(stage)
            let jobs = max(1, (options.jobs ?? workflow.executor.jobs ?? processorCount) / ranks)
            let log = ResultLog(directory: resultsDir)
            let runImpl = MPIStages.impl(for: stage, base: impl, specFile: ctx.specPath, launcher: .mpirun)
            WorkerPool.run(toRun, jobs: jobs) { worker, task in
                let result = Self.execute(task, impl: runImpl, retry: stage.retry, ctx: ctx)
                do {
                    // The result log first: once the line is written the outcome survives a kill of this process.
                    let json = try log.append(result, worker: worker)
                    sink.add(result, json: json)
                } catch {
                    sink.fail("cannot write the result of \(task.itemID) in \(resultsDir): \(error)")
                }
                collected.withLock { $0.append(result) }
                progress.taskEnded(failed: result.state == .failed)
            }
            sink.flush()
            progress.end()
            if let e = sink.firstError { throw .input("recording results failed: \(e)") }
            let ran = collected.withLock { $0 }
            for r in ran {
                line.bytes += r.bytes
                if r.state == .succeeded {
                    line.succeeded += 1
                    if let a = r.artifact { stageAfter[r.itemID] = a }
                } else {
                    line.failed += 1
                    summary.failures.append(.init(stage: stage.name, item: r.itemID, error: r.error ?? "failed"))
                }
            }
            if impl.granularity == .perDirectory {
                // A per-directory stage passes its items' artifacts through unchanged.
                for (item, art) in inputs { stageAfter[item.id] = art }
            }
            if ran.count < toRun.count { interrupted = true }
            // Stage-wide outputs (manifests), from everything that succeeded, skipped tasks included.
            if !interrupted {
                do {
                    let outs = try impl.finish(stage: stage, results: ran + skippedResults, catalog: catalog, ctx: ctx)
                    try catalog.record(outputs: outs.map {
                        OutputRecord(uri: $0.path, sha256: $0.sha256, size: $0.size, taskKey: "finish:\(stage.name)", runID: runID,
                                     stage: stage.name, kind: stage.uses, createdAt: Self.now())
                    })
                } catch let e as StageError {
                    summary.failures.append(.init(stage: stage.name, item: "(stage manifest)", error: e.message))
                    line.failed += 1
                } catch {
                    throw .input("\(error)")
                }
            }
            after[stage.name] = stageAfter
            line.seconds = Self.now() - stageStart
            summary.stages.append(line)
            options.log("stage \(stage.name): \(line.succeeded) done, \(line.skipped) already done, \(line.failed) failed" +
                        (line.blocked > 0 ? ", \(line.blocked) not run (upstream failed)" : "") +
                        (line.bytes > 0 ? ", \(formatBytes(line.bytes)) in \(ProgressReporter.duration(line.seconds))" : ""))
            if interrupted { break }
        }

        summary.seconds = Self.now() - started
        let failed = summary.stages.contains { $0.failed + $0.blocked > 0 } || !scan.problems.isEmpty
        summary.state = interrupted ? "interrupted" : (failed ? "failed" : "succeeded")
        if let runID {
            do { try catalog.finish(runID: runID, state: summary.state, at: Self.now()) } catch { throw .catalog(error) }
            if let data = try? JSONEncoder.sorted.encode(summary) {
                try? AtomicFile.write(Array(data), to: Path.join(runDir!, "summary.json"), durable: false)
            }
            if interrupted { throw .interrupted(runID: runID) }
        }
        return summary
    }

    /// Runs one task with its retry policy; never throws: failures become failed results.
    static func execute(_ task: TaskInput, impl: any Stage, retry: RetryPolicy, ctx: TaskContext) -> TaskResult {
        let start = now()
        var attempt = 1
        while true {
            do {
                let p = try impl.run(task, ctx)
                return TaskResult(key: task.key, runID: task.runID, stage: task.stage, kind: task.kind, itemID: task.itemID,
                                  state: .succeeded, tries: attempt, startedAt: start, finishedAt: now(), bytes: p.bytes, error: nil,
                                  artifact: p.artifact, objects: p.objects, outputs: p.outputs, notes: p.notes)
            } catch {
                if error.retryable && attempt < retry.tries && !stopRequested.load(ordering: .relaxed) {
                    attempt += 1
                    // Jitter keeps many tasks that failed together from retrying in lockstep.
                    let d = retry.delay(beforeAttempt: attempt) * Double.random(in: 0.8...1.2)
                    if d > 0 { Thread.sleep(forTimeInterval: d) }
                    continue
                }
                let msg = attempt > 1 ? "\(error.message) (after \(attempt) tries)" : error.message
                return TaskResult(key: task.key, runID: task.runID, stage: task.stage, kind: task.kind, itemID: task.itemID,
                                  state: .failed, tries: attempt, startedAt: start, finishedAt: now(), bytes: 0, error: msg,
                                  artifact: nil, objects: [], outputs: [], notes: [])
            }
        }
    }


    func decodeResult(_ json: String) -> TaskResult? { Self.decodeResult(json) }
    static func decodeResult(_ json: String) -> TaskResult? { try? JSONDecoder().decode(TaskResult.self, from: Data(json.utf8)) }

    func outputsExist(_ r: TaskResult) -> Bool { Self.outputsExist(r) }

    /// A done task counts only while what it produced is still there, unchanged in size.
    static func outputsExist(_ r: TaskResult) -> Bool {
        if let a = r.artifact {
            guard let st = try? FileStatus.ifExists(path: a.path), st.size == a.size, st.mtimeNanoseconds == a.mtimeNanoseconds else { return false }
        }
        // Published S3 objects are not re-checked here: publishing itself skips what is already there.
        for o in r.outputs where !o.path.hasPrefix("s3://") {
            guard let st = try? FileStatus.ifExists(path: o.path), st.size == o.size else { return false }
        }
        return true
    }

    /// Ingests result files that killed runs left behind, and marks those runs interrupted.
    func collectInterruptedRuns(_ options: RunOptions) throws(EngineError) {
        let runs: [RunRecord]
        do { runs = try catalog.unfinishedRuns() } catch { throw .catalog(error) }
        // Slurm runs are followed by their monitor: their jobs may still be running.
        for run in runs where run.executor != "slurm" {
            AtomicFile.removeStaleTemporaries(in: Path.join(runsDirectory, run.id))
            let dir = Path.join(Path.join(runsDirectory, run.id), "results")
            var ingested = 0
            for stageDir in (try? listDirectory(dir)) ?? [] {
                let sd = Path.join(dir, stageDir.name)
                AtomicFile.removeStaleTemporaries(in: sd)
                for f in (try? listDirectory(sd)) ?? [] {
                    for r in ResultLog.read(Path.join(sd, f.name)) {
                        do {
                            if try catalog.hasTask(runID: run.id, key: r.key) { continue }
                            try catalog.record(task: r.taskRecord(), objects: r.objectRecords(), outputs: r.outputRecords())
                            ingested += 1
                        } catch { throw .catalog(error) }
                    }
                }
            }
            do { try catalog.finish(runID: run.id, state: "interrupted", at: Self.now()) } catch { throw .catalog(error) }
            options.log("run \(run.id) was interrupted; collected \(ingested) finished task(s) from its run directory")
        }
    }
}

/// Collects task outcomes and writes them to the catalog in batches (every 500 results or 0.25 s),
/// so thousands of small tasks do not cost thousands of SQLite transactions. Safe to lose on a kill:
/// every outcome is already in its result file, which the next run collects.
final class ResultSink: Sendable {
    struct State { var pending: [(TaskResult, String)] = []; var lastFlush = Date(); var errors: [String] = [] }
    let state = Mutex(State())
    let flushing = Mutex(())
    let catalog: Catalog
    init(catalog: Catalog) { self.catalog = catalog }

    func add(_ r: TaskResult, json: String) {
        let due = state.withLock { s in
            s.pending.append((r, json))
            return s.pending.count >= 500 || Date().timeIntervalSince(s.lastFlush) > 0.25
        }
        if due { flush() }
    }

    func fail(_ message: String) { state.withLock { $0.errors.append(message) } }

    var firstError: String? { state.withLock { $0.errors.first } }

    func flush() {
        flushing.withLock { _ in
            let batch = state.withLock { s in let b = s.pending; s.pending = []; s.lastFlush = Date(); return b }
            guard !batch.isEmpty else { return }
            do { try catalog.record(batch: batch.map { r, json in (r.taskRecord(json: json), r.objectRecords(), r.outputRecords()) }) }
            catch { fail("\(error)") }
        }
    }
}

extension TaskResult {
    /// The catalog row; `json` is the result as already encoded for the result log, when there is one.
    func taskRecord(json: String? = nil) -> TaskRecord {
        let json = json ?? (try? JSONEncoder.sorted.encode(self)).map { String(decoding: $0, as: UTF8.self) }
        return TaskRecord(runID: runID, key: key, stage: stage, kind: kind, item: itemID, state: state.rawValue, tries: tries,
                          startedAt: startedAt, finishedAt: finishedAt, bytes: bytes, error: error, result: json)
    }

    func objectRecords() -> [ObjectRecord] {
        objects.map {
            ObjectRecord(uri: $0.path, size: $0.size, mtimeNanoseconds: $0.mtimeNanoseconds, sha256: $0.sha256,
                         proposal: $0.fields["proposal"], sample: $0.fields["sample"], experiment: $0.fields["experiment"],
                         file: $0.fields["file"], sourceURI: $0.sourceURI, runID: runID, updatedAt: finishedAt)
        }
    }

    func outputRecords() -> [OutputRecord] {
        outputs.map {
            var r = OutputRecord(uri: $0.path, sha256: $0.sha256, size: $0.size, taskKey: key, runID: runID, stage: stage, kind: kind, createdAt: finishedAt)
            if let l = $0.lineage {
                r.item = itemID; r.dataset = l.dataset; r.version = l.version; r.predecessor = l.predecessor
                r.mapping = l.mapping; r.mappingVersion = l.mappingVersion; r.mappingSHA256 = l.mappingSHA256
                r.instrument = l.instrument; r.acquiredAt = l.acquiredAt
                r.proposal = l.fields["proposal"]; r.sample = l.fields["sample"]; r.experiment = l.fields["experiment"]
            }
            return r
        }
    }
}

extension JSONEncoder {
    static var sorted: JSONEncoder { let e = JSONEncoder(); e.outputFormatting = [.sortedKeys]; return e }
}
