import Foundation
import Synchronization
import POSIXFiles
import Catalog
import WorkflowSpec
import SlurmAdapter

public struct SlurmOptions: Sendable {
    public var dryRun = false
    /// Follow the run to its end (progress on stderr), then collect; else submit and return.
    public var wait = false
    public var progress = true
    public var log: @Sendable (String) -> Void = { _ in }
    /// The binary job scripts run (default: this one).
    public var emflowPath: String? = nil
    public var pollInterval: Double? = nil
    /// The items to run instead of the inputs' listing (a backfill batch, a reprocess selection).
    public var items: ItemSource? = nil
    public init() {}
}

/// What `emflow run --executor slurm` did.
public struct SlurmSubmission: Codable, Sendable {
    public struct Array: Codable, Sendable {
        public var stage: String
        public var jobID: String?
        public var tasks: Int
        public var itemsPerTask: Int
        public var dependency: String?
        public var script: String
        /// The script's text (for --dry-run).
        public var text: String?
    }
    public var runID: String?
    public var workflow: String
    public var items: Int
    public var arrays: [Array]
    public var skipped: [String: Int]
    /// Per-directory stages, which the driver runs once the arrays have ended.
    public var driverStages: [String] = []
    public var sbatchCalls: Int
    /// A run still in Slurm that this invocation followed or left alone instead of submitting.
    public var attachedTo: String?
    public var summary: RunSummary?
}

/// The Slurm executor: each per-item stage becomes job arrays of `emflow worker` tasks (items packed
/// per task, split at MaxArraySize, throttled), chained with `afterany`; workers write result files;
/// a monitor collects them into the catalog, fills in what Slurm says about tasks that never wrote a
/// result, and runs per-directory stages and manifests once every array has ended.
public final class SlurmExecutor: Sendable {
    public let driver: RunDriver
    public let site: SiteProfile?
    public let commands: SlurmCommands

    public init(driver: RunDriver, commands: SlurmCommands = SlurmCommands()) throws(EngineError) {
        self.driver = driver
        if let s = driver.workflow.executor.site {
            do { site = try SiteProfile.load(path: s) } catch { throw .spec(error) }
        } else { site = nil }
        self.commands = commands
    }

    /// The executor of an existing Slurm run of `workspace`, from the spec frozen in its run directory.
    public static func forRun(workspace: String, runID: String) throws(EngineError) -> SlurmExecutor {
        let files = SlurmRunFiles(runDir: Path.join(Path.join(workspace, "runs"), runID))
        let plan: SlurmPlan
        do { plan = try files.loadPlan() } catch {
            throw .input("run \(runID) has no Slurm plan in \(files.planPath); it was not run with the Slurm executor")
        }
        let text: [UInt8]
        do { text = try readFile(files.specPath) } catch { throw .io(error) }
        return try SlurmExecutor(driver: RunDriver(frozenSpec: text, originalPath: plan.specFile))
    }

    var workflow: Workflow { driver.workflow }
    var catalog: Catalog { driver.catalog }

    static func selfExecutable() -> String {
        (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
    }

    func pollInterval(_ options: SlurmOptions) -> Double {
        options.pollInterval ?? workflow.executor.pollInterval ?? site?.pollInterval ?? 30
    }

    // MARK: - Submit

    public func run(_ options: SlurmOptions) throws(EngineError) -> SlurmSubmission {
        var commands = self.commands
        commands.log = options.log
        let lock: WorkspaceLock? = options.dryRun ? nil : try WorkspaceLock(workspace: workflow.workspace)
        defer { withExtendedLifetime(lock) {} }

        // Runs of this workspace still in Slurm: follow them (never submit their items twice).
        if !options.dryRun {
            try driver.collectInterruptedRuns(RunOptions.logging(options.log))
            for run in try unfinishedSlurmRuns() {
                let monitor: SlurmMonitor
                do { monitor = try SlurmMonitor(executor: self, runID: run.id, commands: commands, log: options.log) } catch {
                    // Stopped before its first sbatch: nothing of it is in Slurm.
                    options.log("run \(run.id) never reached Slurm (\(error)); marking it interrupted")
                    do { try catalog.finish(runID: run.id, state: "interrupted", at: RunDriver.now()) } catch { throw .catalog(error) }
                    continue
                }
                let active = try monitor.poll()
                try monitor.collect()
                if active > 0 && !options.wait {
                    options.log("run \(run.id) still has \(active) array task(s) in Slurm; nothing submitted. Follow it with `emflow status \(run.id) --wait`, stop it with `emflow cancel \(run.id)`")
                    return SlurmSubmission(runID: run.id, workflow: workflow.name, items: run.items, arrays: [], skipped: [:],
                                           sbatchCalls: 0, attachedTo: run.id, summary: nil)
                }
                if active > 0 { options.log("run \(run.id) is still in Slurm; following it before submitting anything new") }
                _ = try monitor.waitAndFinish(interval: pollInterval(options), progress: options.progress)
            }
        }

        let config: SlurmConfig
        do { config = try commands.config() } catch {
            if options.dryRun { config = SlurmConfig(values: [:]) } else { throw .input("\(error)") }
        }
        let started = RunDriver.now()
        let scan = try InputScanner.items(workflow, source: options.items)
        for p in scan.problems { options.log("input problem: \(p)") }
        let items = scan.items
        try checkPlan(items: items)

        let runID = RunDriver.newRunID()
        let runDir = Path.join(driver.runsDirectory, runID)
        let files = SlurmRunFiles(runDir: runDir)
        let ctx = driver.context()
        let emflow = options.emflowPath ?? Self.selfExecutable()
        var plan = SlurmPlan(runID: runID, workflow: workflow.name, specFile: Path.resolve(workflow.sourceFile, against: currentDirectory()),
                             specBase: (Path.resolve(workflow.sourceFile, against: currentDirectory()) as NSString).deletingLastPathComponent,
                             specSHA256: driver.specSHA256, emflow: emflow, pollInterval: pollInterval(options),
                             accounting: config.hasAccounting, stages: [])
        // The run directory goes into #SBATCH lines (logs): say so before anything is created.
        guard Shell.isSbatchSafe(files.logsDir) else {
            throw .usage("the run directory \(runDir) has characters an #SBATCH line cannot carry (spaces, quotes, $, `, \\ or newlines); set workspace: in the spec to a plain path")
        }
        var submission = SlurmSubmission(runID: options.dryRun ? nil : runID, workflow: workflow.name, items: items.count,
                                         arrays: [], skipped: [:], sbatchCalls: 0, attachedTo: nil, summary: nil)
        if !options.dryRun {
            do {
                try makeDirectories(files.logsDir)
                try AtomicFile.write(driver.specText, to: files.specPath)
                try catalog.insert(run: RunRecord(id: runID, workflow: workflow.name, specPath: workflow.sourceFile,
                                                  specSHA256: driver.specSHA256, executor: "slurm", startedAt: started, state: "running",
                                                  items: items.count, emflowVersion: EmflowVersion.current))
            } catch let e as POSIXFileError { throw .io(e) } catch let e as CatalogError { throw .catalog(e) } catch { throw .input("\(error)") }
        }

        var known: [String: [String: Artifact]] = [:]     // stage → item → artifact (task done before)
        var pending: [String: [String: Int]] = [:]        // stage → item → slice that runs it
        var jobsOf: [String: [String]] = [:]              // stage → array job ids

        for stage in workflow.stages {
            let impl = StageRegistry.all[stage.uses]!
            let keying = try StageKeying(stage: stage, ctx: ctx, runID: runID)
            if impl.granularity == .perDirectory {
                plan.stages.append(.init(name: stage.name, kind: stage.uses, perDirectory: true, needs: stage.needs, items: 0, skipped: 0,
                                         batch: 0, slices: 0, arrays: []))
                submission.driverStages.append(stage.name)
                continue
            }

            var entries: [WorkEntry] = []
            var skipRecords: [TaskRecord] = []
            var stageKnown: [String: Artifact] = [:]
            for item in items {
                var ups: [WorkEntry.Upstream] = []
                var input: Artifact? = stage.needs.isEmpty ? item.source : nil
                var reachable = true
                for n in stage.needs {
                    if let sl = pending[n]?[item.id] { ups.append(.init(stage: n, slice: sl)) }
                    else if let a = known[n]?[item.id] { if n == stage.needs.first { input = a } }
                    else { reachable = false }
                }
                guard reachable else { continue }
                if ups.isEmpty, let input {
                    let t = keying.task(item: item, artifact: input, recorded: try keying.recordedSum(catalog, path: input.path))
                    if let (json, r) = try keying.doneBefore(t, catalog: catalog) {
                        if let a = r.artifact { stageKnown[item.id] = a }
                        skipRecords.append(TaskRecord(runID: runID, key: t.key, stage: stage.name, kind: stage.uses, item: item.id,
                                                      state: "skipped", tries: 0, startedAt: nil, finishedAt: nil, bytes: 0, error: nil, result: json))
                        continue
                    }
                    entries.append(WorkEntry(itemID: item.id, item: item, input: input, key: t.key, recorded: t.recordedSHA256, upstream: [], prior: nil))
                } else {
                    let latest: (key: String, result: String)?
                    do { latest = try catalog.latestResult(stage: stage.name, item: item.id) } catch { throw .catalog(error) }
                    let p = latest.map { WorkEntry.Prior(key: $0.key, result: $0.result) }
                    entries.append(WorkEntry(itemID: item.id, item: item, input: nil, key: nil, recorded: nil, upstream: ups, prior: p))
                }
            }
            known[stage.name] = stageKnown
            submission.skipped[stage.name] = skipRecords.count
            if !options.dryRun { do { try catalog.record(tasks: skipRecords) } catch { throw .catalog(error) } }

            let res = site?.merged(stage.resources) ?? stage.resources
            let perItem = (try? catalog.medianSeconds(kind: stage.uses)).flatMap { $0 } ?? Self.defaultSecondsPerItem(stage.uses)
            let packing = Packing.plan(items: entries.count, batch: res.values["batch"].flatMap { Int($0) }, perItemSeconds: perItem,
                                       timeLimitSeconds: res.values["time"].flatMap { Packing.seconds(slurmTime: $0) },
                                       throttle: throttle(res), maxArraySize: config.maxArraySize)
            var slicesOf: [String: Int] = [:]
            for (i, e) in entries.enumerated() { slicesOf[e.itemID] = i / max(packing.batch, 1) }
            pending[stage.name] = slicesOf
            var stagePlan = SlurmPlan.Stage(name: stage.name, kind: stage.uses, perDirectory: false, needs: stage.needs, items: entries.count,
                                            skipped: skipRecords.count, batch: packing.batch, slices: packing.slices, arrays: [])
            if !options.dryRun {
                do {
                    try makeDirectories(files.stageDir(stage.name))
                    try makeDirectories(files.resultsDir(stage.name))
                    for s in 0..<packing.slices {
                        try files.writeSlice(stage.name, s, entries[(s * packing.batch)..<min(entries.count, (s + 1) * packing.batch)])
                    }
                } catch let e as POSIXFileError { throw .io(e) } catch { throw .input("cannot write the work lists of stage \(stage.name): \(error)") }
            }
            let deps = stage.needs.flatMap { jobsOf[$0] ?? [] }
            let depText = deps.isEmpty ? nil : "afterany:" + deps.joined(separator: ":")
            for (partIndex, part) in packing.arrays.enumerated() {
                let scriptPath = files.scriptPath(stage.name, part: partIndex)
                let script = try jobScript(stage: stage, resources: res, part: part, partIndex: partIndex, parts: packing.arrays.count, packing: packing,
                                           runID: runID, files: files, emflow: emflow, dependency: depText)
                var line = SlurmSubmission.Array(stage: stage.name, jobID: nil, tasks: part.count, itemsPerTask: packing.batch,
                                                 dependency: depText, script: scriptPath, text: options.dryRun ? script : nil)
                if options.dryRun {
                    line.jobID = "(\(stage.name).\(partIndex))"
                } else {
                    do { try AtomicFile.write(Array(script.utf8), to: scriptPath, durable: false) } catch { throw .io(error) }
                    do { line.jobID = try commands.submit(script: scriptPath) } catch {
                        // Arrays already submitted stay recorded: status/cancel can reach them.
                        try? files.save(plan)
                        throw .input("submitting stage \(stage.name): \(error)")
                    }
                    submission.sbatchCalls += 1
                }
                stagePlan.arrays.append(.init(offset: part.offset, count: part.count, jobID: line.jobID, script: scriptPath,
                                              submittedAt: options.dryRun ? nil : RunDriver.now()))
                jobsOf[stage.name, default: []].append(line.jobID!)
                submission.arrays.append(line)
                if !options.dryRun {
                    var p = plan; p.stages.append(stagePlan)
                    do { try files.save(p) } catch { throw .input("cannot write \(files.planPath): \(error)") }
                }
            }
            plan.stages.append(stagePlan)
        }
        if options.dryRun { return submission }
        do { try files.save(plan) } catch { throw .input("cannot write \(files.planPath): \(error)") }

        let tasks = submission.arrays.reduce(0) { $0 + $1.tasks }
        options.log("run \(runID): \(workflow.name), \(items.count) item(s); submitted \(submission.sbatchCalls) array(s), \(tasks) array task(s)" +
                    (submission.arrays.isEmpty ? "" : " (jobs \(submission.arrays.compactMap(\.jobID).joined(separator: ", ")))"))
        let monitor = try SlurmMonitor(executor: self, runID: runID, commands: commands, log: options.log)
        if options.wait || submission.arrays.isEmpty {
            submission.summary = try monitor.waitAndFinish(interval: pollInterval(options), progress: options.progress)
        }
        return submission
    }

    func throttle(_ r: Resources) -> Int { r.values["throttle"].flatMap { Int($0) } ?? site?.throttle ?? 100 }

    /// Seconds one item is expected to take when the catalog has no history for the stage kind.
    static func defaultSecondsPerItem(_ kind: String) -> Double {
        switch kind {
        case ChecksumStage.kind, IngestStage.kind: return 0.5
        case ConvertStage.kind: return 5
        default: return 2
        }
    }

    /// What the Slurm executor cannot do with this spec, said before anything is submitted.
    func checkPlan(items: [Item]) throws(EngineError) {
        for stage in workflow.stages {
            let impl = StageRegistry.all[stage.uses]!
            if impl.granularity == .perDirectory, let user = workflow.stages.first(where: { $0.needs.contains(stage.name) }) {
                throw .usage("stage \(user.name) needs \(stage.name) (\(stage.uses)), which the Slurm executor runs after all arrays; make \(user.name) need \(stage.name)'s own upstream instead")
            }
        }
        try driver.checkFirstStages(items)
    }

    /// sbatch options that map one to one from `resources:`.
    static let sbatchKeys = ["partition", "account", "qos", "time", "mem", "mem-per-cpu", "cpus-per-task", "nodes", "constraint", "gres"]

    /// Letters, digits, `.`, `-`, `_` kept; anything else (spaces, quotes, `$`, non-ASCII) becomes `_`.
    static func safeName(_ s: String) -> String {
        String(s.unicodeScalars.map { c -> Character in
            let ch = Character(c)
            return c.isASCII && (ch.isLetter || ch.isNumber || c == "-" || c == "_" || c == ".") ? ch : "_"
        })
    }

    func jobScript(stage: StageSpec, resources: Resources, part: Packing.Part, partIndex: Int, parts: Int, packing: Packing, runID: String,
                   files: SlurmRunFiles, emflow: String, dependency: String?) throws(EngineError) -> String {
        var s = JobScript()
        s.comment = [
            "emflow \(EmflowVersion.current): workflow \(workflow.name), run \(runID), stage \(stage.name) (\(stage.uses))",
            "array \(partIndex + 1) of \(parts): array task i runs slice \(part.offset)+i, \(packing.batch) item(s) per slice",
            "items: \(files.stageDir(stage.name))/slice-N.jsonl; results: \(files.resultsDir(stage.name))/sN-*.jsonl",
            "no secrets here: credentials reach the job through the environment sbatch exports",
        ]
        let name = "emflow-" + Self.safeName(workflow.name).prefix(40) + "-" + Self.safeName(stage.name)
        s.options.append(("job-name", name))
        let throttle = throttle(resources)
        s.options.append(("array", "0-\(part.count - 1)" + (part.count > throttle ? "%\(throttle)" : "")))
        for k in Self.sbatchKeys { if let v = resources.values[k] { s.options.append((k, v)) } }
        let ranks = resources.values["ranks"].flatMap { Int($0) } ?? 1
        if ranks > 1 { s.options.append(("ntasks", "\(ranks)")) }
        else if let n = resources.values["ntasks"] { s.options.append(("ntasks", n)) }
        if let dependency { s.options.append(("dependency", dependency)) }
        s.options.append(("output", Path.join(files.logsDir, "\(stage.name)-%A_%a.out")))
        s.options.append(("error", Path.join(files.logsDir, "\(stage.name)-%A_%a.err")))
        s.options.append(("open-mode", "append"))
        s.setup = site?.setup ?? []
        s.computed = ["slice=$(( \(part.offset) + SLURM_ARRAY_TASK_ID ))"]
        // An MPI stage's worker starts one `srun --mpi=<site mpi> --ntasks=N` step per item (MPIStages).
        s.command += [emflow, "worker", "--run-dir", files.runDir, "--stage", stage.name, "--slice"]
        s.commandTail = ["\"$slice\""]
        do { return try s.render() } catch {
            throw .usage("\(error); put the workspace (and so the run directory \(files.runDir)) on a plain path, and keep stage names to letters, digits, - and _")
        }
    }

    func unfinishedSlurmRuns() throws(EngineError) -> [RunRecord] {
        do { return try catalog.unfinishedRuns().filter { $0.executor == "slurm" } } catch { throw .catalog(error) }
    }

    // MARK: - Follow-up commands

    /// `emflow status RUN` for a Slurm run: one poll, results into the catalog, and the run
    /// finished (READMEs, manifests, state) once every array has ended. With `wait`, until then.
    /// Returns the array tasks still queued or running.
    @discardableResult
    public func refresh(runID: String, wait: Bool, progress: Bool, log: @escaping @Sendable (String) -> Void) throws(EngineError) -> Int {
        var commands = self.commands
        commands.log = log
        let lock = try WorkspaceLock(workspace: workflow.workspace)
        defer { withExtendedLifetime(lock) {} }
        let monitor = try SlurmMonitor(executor: self, runID: runID, commands: commands, log: log)
        if wait { _ = try monitor.waitAndFinish(interval: pollInterval(SlurmOptions()), progress: progress); return 0 }
        let active = try monitor.poll()
        try monitor.collect()
        if active == 0 { _ = try monitor.finish(cancelled: false) }
        return active
    }

    /// Cancels every array of the run, waits for Slurm to end them, and records what was not done.
    public func cancel(runID: String, log: @escaping @Sendable (String) -> Void) throws(EngineError) -> RunSummary {
        var commands = self.commands
        commands.log = log
        let lock = try WorkspaceLock(workspace: workflow.workspace)
        defer { withExtendedLifetime(lock) {} }
        let monitor = try SlurmMonitor(executor: self, runID: runID, commands: commands, log: log)
        do { try commands.cancel(jobs: monitor.plan.jobIDs) } catch { throw .input("\(error)") }
        monitor.cancelled = true
        return try monitor.waitAndFinish(interval: 1, progress: false, limit: 120)
    }
}

extension RunOptions {
    static func logging(_ log: @escaping @Sendable (String) -> Void) -> RunOptions { var o = RunOptions(); o.log = log; return o }
}

/// One item's story for `emflow logs`: its state, why, and what its array task wrote.
public struct ItemLog: Codable, Sendable {
    public var stage: String
    public var item: String
    public var state: String
    public var error: String?
    public var tries: Int
    /// Slurm runs: the array task that ran (or should have run) the item, its last Slurm state and exit code.
    public var arrayTask: String?
    public var slurmState: String?
    public var exitCode: String?
    public var stderrFile: String?
    public var stderrTail: [String]?
    /// When the item's array job was submitted.
    public var submittedAt: Double?

    public init(stage: String, item: String, state: String, error: String?, tries: Int) {
        self.stage = stage; self.item = item; self.state = state; self.error = error; self.tries = tries
    }
}

extension SlurmExecutor {
    /// Per item of the run (failed, cancelled and not-run ones with `failedOnly`): state, error, and
    /// the tail of its array task's stderr.
    public func itemLogs(runID: String, failedOnly: Bool, lines: Int) throws(EngineError) -> [ItemLog] {
        let files = SlurmRunFiles(runDir: Path.join(driver.runsDirectory, runID))
        let plan: SlurmPlan
        do { plan = try files.loadPlan() } catch { throw .input("run \(runID) has no Slurm plan in \(files.planPath)") }
        let states = files.loadStates()
        let records: [TaskRecord]
        do { records = try catalog.tasks(runID: runID) } catch { throw .catalog(error) }
        let wanted = records.filter { !failedOnly || ["failed", "cancelled", "blocked"].contains($0.state) }
        var sliceOf: [String: [String: Int]] = [:]
        for st in plan.stages where !st.perDirectory && wanted.contains(where: { $0.stage == st.name }) {
            var m: [String: Int] = [:]
            for s in 0..<st.slices { for e in (try? files.readSlice(st.name, s)) ?? [] { m[e.itemID] = s } }
            sliceOf[st.name] = m
        }
        return wanted.map { t in
            var l = ItemLog(stage: t.stage, item: t.item, state: t.state, error: t.error, tries: t.tries)
            if let slice = sliceOf[t.stage]?[t.item], let (job, idx) = plan.arrayTask(stage: t.stage, slice: slice) {
                l.arrayTask = "\(job)_\(idx)"
                l.submittedAt = plan.stages.first { $0.name == t.stage }?.arrays.first { $0.jobID == job }?.submittedAt
                l.slurmState = states.tasks["\(job)_\(idx)"]?.state
                l.exitCode = states.tasks["\(job)_\(idx)"]?.exitCode
                let path = files.logPath(t.stage, jobID: job, index: idx, err: true)
                l.stderrFile = path
                if t.state != "succeeded" && t.state != "skipped", let bytes = try? readFile(path) {
                    let text = String(decoding: bytes.suffix(65536), as: UTF8.self)
                    l.stderrTail = Array(text.split(separator: "\n", omittingEmptySubsequences: true).suffix(lines).map(String.init))
                }
            }
            return l
        }
    }
}
