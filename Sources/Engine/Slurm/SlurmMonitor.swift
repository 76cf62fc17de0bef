import Foundation
import POSIXFiles
import Catalog
import WorkflowSpec
import SlurmAdapter

/// Follows one Slurm run: one squeue call per poll for all its arrays, sacct once for arrays that
/// have left the queue (when the cluster keeps accounting), result files into the catalog, and —
/// once nothing of the run is left in Slurm — the items that never got a result, per-directory
/// stages, manifests and the run's final state. The result files are the truth about items; Slurm's
/// states only explain items without one. A job missing from squeue is never by itself a failure.
final class SlurmMonitor {
    let executor: SlurmExecutor
    let runID: String
    let files: SlurmRunFiles
    let commands: SlurmCommands
    let log: @Sendable (String) -> Void
    var plan: SlurmPlan
    var states: ArrayTaskStates
    var offsets: [String: Int] = [:]
    var cancelled = false
    /// stage → item → whether its best result so far is a success (results themselves go to the
    /// catalog: a run of 10^5 items keeps only this in memory).
    var results: [String: [String: Bool]] = [:]

    var catalog: Catalog { executor.catalog }

    init(executor: SlurmExecutor, runID: String, commands: SlurmCommands, log: @escaping @Sendable (String) -> Void) throws(EngineError) {
        self.executor = executor
        self.runID = runID
        files = SlurmRunFiles(runDir: Path.join(executor.driver.runsDirectory, runID))
        self.commands = commands
        self.log = log
        do { plan = try files.loadPlan() } catch {
            throw .input("run \(runID) has no Slurm plan in \(files.planPath) (\(error)); is it a Slurm run of this workspace?")
        }
        states = files.loadStates()
    }

    /// One squeue call (and one sacct call for arrays that just left the queue); returns the number
    /// of array tasks still pending or running.
    @discardableResult
    func poll() throws(EngineError) -> Int {
        let watched = plan.jobIDs.filter { !states.ended.contains($0) }
        guard !watched.isEmpty else { return 0 }
        let queue: [QueueEntry]
        do { queue = try commands.queue(jobs: watched) } catch { throw .input("\(error)") }
        var active = 0
        var seenJobs = Set<String>()
        var activeJobs = Set<String>()
        for q in queue {
            seenJobs.insert(q.arrayJobID)
            if q.state.isActive { active += 1; activeJobs.insert(q.arrayJobID) }
            guard let idx = q.arrayTaskID else {
                // A still-compressed pending range: count its tasks as active.
                if q.state.isActive { active += Self.rangeCount(q.id) - 1 }
                continue
            }
            var e = states.tasks["\(q.arrayJobID)_\(idx)"] ?? .init(state: q.state.rawValue)
            e.state = q.state.rawValue
            e.reason = q.reason == "None" ? nil : q.reason
            e.elapsed = q.elapsed
            states.tasks["\(q.arrayJobID)_\(idx)"] = e
        }
        let ended = watched.filter { !activeJobs.contains($0) }
        if !ended.isEmpty && plan.accounting {
            // sacct lags the real state by seconds: a job it does not know yet is asked again next poll.
            if let acct = try? commands.accounting(jobs: ended) {
                var known = Set<String>()
                for a in acct {
                    guard let idx = a.arrayTaskID else { continue }
                    known.insert(a.arrayJobID)
                    var e = states.tasks["\(a.arrayJobID)_\(idx)"] ?? .init(state: a.state.rawValue)
                    if a.state.isFinal { e.state = a.state.rawValue }
                    e.exitCode = a.exitCode
                    e.elapsed = a.elapsed
                    states.tasks["\(a.arrayJobID)_\(idx)"] = e
                }
                for j in ended where known.contains(j) || !seenJobs.contains(j) { states.ended.insert(j) }
            } else {
                for j in ended { states.ended.insert(j) }
            }
        } else {
            for j in ended { states.ended.insert(j) }
        }
        files.save(states)
        return active
    }

    static func rangeCount(_ id: String) -> Int {
        // `17_[3-99%3]` or `17_[1,4-6]`
        guard let open = id.firstIndex(of: "["), let close = id.firstIndex(of: "]") else { return 1 }
        var body = id[id.index(after: open)..<close]
        if let pct = body.firstIndex(of: "%") { body = body[..<pct] }
        return body.split(separator: ",").reduce(0) { n, r in
            let ends = r.split(separator: "-").compactMap { Int($0) }
            return n + (ends.count == 2 ? ends[1] - ends[0] + 1 : 1)
        }
    }

    /// New result lines of every stage into the catalog (re-recording a result is harmless).
    func collect() throws(EngineError) {
        var batch: [(task: TaskRecord, objects: [ObjectRecord], outputs: [OutputRecord])] = []
        for st in plan.stages where !st.perDirectory {
            let dir = files.resultsDir(st.name)
            for f in ((try? listDirectory(dir)) ?? []) where f.name.hasSuffix(".jsonl") {
                let path = Path.join(dir, f.name)
                guard let bytes = try? readFile(path) else { continue }
                let start = offsets[path] ?? 0
                guard bytes.count > start else { continue }
                // Only whole lines: a worker may be writing the next one.
                guard let lastNL = bytes.lastIndex(of: 0x0A), lastNL >= start else { continue }
                let dec = JSONDecoder()
                for line in bytes[start...lastNL].split(separator: 0x0A) {
                    guard let r = try? dec.decode(TaskResult.self, from: Data(line)) else { continue }
                    if results[st.name]?[r.itemID] != true { results[st.name, default: [:]][r.itemID] = r.isSuccess }
                    let json = String(decoding: line, as: UTF8.self)
                    if r.state == .skipped {
                        var t = r.taskRecord(json: json)
                        t.state = "skipped"
                        batch.append((t, [], []))
                    } else {
                        batch.append((r.taskRecord(json: json), r.objectRecords(), r.outputRecords()))
                    }
                }
                offsets[path] = lastNL + 1
                if batch.count >= 5000 {
                    do { try catalog.record(batch: batch) } catch { throw .catalog(error) }
                    batch.removeAll(keepingCapacity: true)
                }
            }
        }
        do { try catalog.record(batch: batch) } catch { throw .catalog(error) }
    }

    struct Counts { var total = 0, done = 0, failed = 0 }

    func counts() -> [(String, Counts)] {
        plan.stages.filter { !$0.perDirectory }.map { st in
            var c = Counts(total: st.items)
            for ok in (results[st.name] ?? [:]).values { if ok { c.done += 1 } else { c.failed += 1 } }
            return (st.name, c)
        }
    }

    /// Polls every `interval` seconds until nothing of the run is left in Slurm, then finishes it.
    func waitAndFinish(interval: Double, progress: Bool, limit: Double? = nil) throws(EngineError) -> RunSummary {
        let start = Date()
        let terminal = progress && isTerminal(2)
        var lastLine = ""
        // Short runs end between polls: start at 1 s and double up to the interval (a few extra
        // squeue calls at the start, none later).
        var pause = min(1, interval)
        while true {
            let active = try poll()
            try collect()
            if active == 0 { break }
            if stopRequested.load(ordering: .relaxed) {
                throw .usage("stopped following run \(runID); its jobs go on in Slurm (emflow status \(runID) --wait follows them again, emflow cancel \(runID) stops them)")
            }
            if let limit, Date().timeIntervalSince(start) > limit {
                throw .input("run \(runID): Slurm still lists \(active) array task(s) after \(Int(limit)) s")
            }
            if progress {
                let c = counts()
                let total = c.reduce(0) { $0 + $1.1.total }, done = c.reduce(0) { $0 + $1.1.done + $1.1.failed }
                let elapsed = Date().timeIntervalSince(start)
                let eta = done > 0 && total > done ? " ETA " + ProgressReporter.duration(elapsed / Double(done) * Double(total - done)) : ""
                let line = "slurm \(runID): " + c.map { "\($0.0) \($0.1.done + $0.1.failed)/\($0.1.total)" + ($0.1.failed > 0 ? " (\($0.1.failed) failed)" : "") }
                    .joined(separator: ", ") + "; \(active) array task(s) queued or running;\(eta)"
                if terminal { FileHandle.standardError.write(Data(("\r\u{1B}[K" + line).utf8)) }
                else if line != lastLine { FileHandle.standardError.write(Data((line + "\n").utf8)) }
                lastLine = line
            }
            Thread.sleep(forTimeInterval: pause)
            pause = min(pause * 2, interval)
        }
        if terminal { FileHandle.standardError.write(Data("\r\u{1B}[K".utf8)) }
        return try finish(cancelled: cancelled)
    }

    /// Everything of the run has left Slurm: record items without a result, run per-directory
    /// stages and manifests, and set the run's state.
    func finish(cancelled: Bool) throws(EngineError) -> RunSummary {
        let driver = executor.driver
        let workflow = executor.workflow
        // The results not collected yet (all of them for a monitor that has just started).
        try collect()
        let wasCancelled = cancelled || states.tasks.values.contains { $0.state == JobState.cancelled.rawValue }
        var bad: [String: Set<String>] = [:]   // stage → items failed or not run
        var records: [TaskRecord] = []
        for st in plan.stages where !st.perDirectory {
            let got = results[st.name] ?? [:]
            for (item, ok) in got where !ok { bad[st.name, default: []].insert(item) }
            for slice in 0..<st.slices {
                guard let entries = try? files.readSlice(st.name, slice) else { continue }
                for e in entries where got[e.itemID] == nil {
                    bad[st.name, default: []].insert(e.itemID)
                    let upstreamBad = e.upstream.first { bad[$0.stage]?.contains(e.itemID) == true }
                    let key = e.key ?? "slurm:\(st.name):\(e.itemID)"
                    if let u = upstreamBad {
                        records.append(TaskRecord(runID: runID, key: key, stage: st.name, kind: st.kind, item: e.itemID, state: "blocked", tries: 0,
                                                  startedAt: nil, finishedAt: nil, bytes: 0,
                                                  error: "not run: an earlier stage (\(u.stage)) failed for this item", result: nil))
                    } else {
                        let why = explain(stage: st.name, slice: slice)
                        records.append(TaskRecord(runID: runID, key: key, stage: st.name, kind: st.kind, item: e.itemID,
                                                  state: why.state == JobState.cancelled.rawValue ? "cancelled" : "failed", tries: 0,
                                                  startedAt: nil, finishedAt: RunDriver.now(), bytes: 0, error: why.message, result: nil))
                    }
                }
            }
        }
        do { try catalog.record(tasks: records) } catch { throw .catalog(error) }

        let ctx = driver.context()
        var summaryFailures: [RunSummary.Failure] = []
        if !wasCancelled {
            // Per-directory stages (README per level) over the artifacts of their first need; the
            // items (for their proposal/sample/experiment) are listed once, and only when needed.
            var itemsByID: [String: Item] = [:]
            let directoryStages = plan.stages.filter(\.perDirectory)
            if !directoryStages.isEmpty {
                itemsByID = Dictionary(try InputScanner.scan(workflow, skip: [workflow.workspace]).items.map { ($0.id, $0) },
                                       uniquingKeysWith: { a, _ in a })
            }
            for st in directoryStages {
                guard let spec = workflow.stage(named: st.name) else { continue }
                let keying = try StageKeying(stage: spec, ctx: ctx, runID: runID)
                let need = spec.needs.first
                var inputs: [(Item, Artifact)] = []
                if let need {
                    let recs: [TaskRecord]
                    do { recs = try catalog.tasks(runID: runID, stage: need) } catch { throw .catalog(error) }
                    for t in recs where t.state == "succeeded" || t.state == "skipped" {
                        if let j = t.result, let r = RunDriver.decodeResult(j), let a = r.artifact, let item = itemsByID[t.item] { inputs.append((item, a)) }
                    }
                } else {
                    inputs = itemsByID.values.map { ($0, $0.source) }
                }
                let (tasks, problems) = try keying.directoryTasks(inputs.sorted { $0.0.id < $1.0.id }, workflow: workflow, specSHA256: plan.specSHA256, catalog: catalog)
                var recs: [TaskRecord] = problems.map {
                    TaskRecord(runID: runID, key: "readme:\($0.item)", stage: st.name, kind: st.kind, item: $0.item, state: "failed", tries: 1,
                               startedAt: nil, finishedAt: RunDriver.now(), bytes: 0, error: $0.error, result: nil)
                }
                for t in tasks {
                    if let (json, _) = try keying.doneBefore(t, catalog: catalog) {
                        recs.append(TaskRecord(runID: runID, key: t.key, stage: st.name, kind: st.kind, item: t.itemID, state: "skipped", tries: 0,
                                               startedAt: nil, finishedAt: nil, bytes: 0, error: nil, result: json))
                        continue
                    }
                    let r = RunDriver.execute(t, impl: keying.impl, retry: spec.retry, ctx: ctx)
                    do { try catalog.record(task: r.taskRecord(), objects: r.objectRecords(), outputs: r.outputRecords()) } catch { throw .catalog(error) }
                }
                do { try catalog.record(tasks: recs) } catch { throw .catalog(error) }
            }
            // Stage-wide manifests from everything that succeeded (or was done before).
            for st in plan.stages {
                guard let spec = workflow.stage(named: st.name) else { continue }
                let impl = StageRegistry.all[st.kind]!
                let recs: [TaskRecord]
                do { recs = try catalog.tasks(runID: runID, stage: st.name) } catch { throw .catalog(error) }
                let ok = recs.filter { $0.state == "succeeded" || $0.state == "skipped" }.compactMap { $0.result.flatMap(RunDriver.decodeResult) }
                do {
                    let outs = try impl.finish(stage: spec, results: ok, catalog: catalog, ctx: ctx)
                    try catalog.record(outputs: outs.map {
                        OutputRecord(uri: $0.path, sha256: $0.sha256, size: $0.size, taskKey: "finish:\(st.name)", runID: runID,
                                     stage: st.name, kind: st.kind, createdAt: RunDriver.now())
                    })
                } catch let e as StageError {
                    summaryFailures.append(.init(stage: st.name, item: "(stage manifest)", error: e.message))
                } catch let e as CatalogError { throw .catalog(e) } catch { throw .input("\(error)") }
            }
        }

        // The run's numbers, from the catalog.
        let counts: [Catalog.StageCounts]
        let failedTasks: [TaskRecord]
        do {
            counts = try catalog.stageCounts(runID: runID)
            failedTasks = try catalog.tasks(runID: runID).filter { $0.state == "failed" || $0.state == "cancelled" }
        } catch { throw .catalog(error) }
        let record = (try? catalog.run(id: runID)) ?? nil
        var summary = RunSummary(runID: runID, workflow: plan.workflow, workspace: workflow.workspace, dryRun: false,
                                 items: record?.items ?? 0, stages: [], failures: summaryFailures,
                                 inputProblems: [], plan: nil, seconds: 0, state: "")
        for st in plan.stages {
            let c = counts.first { $0.stage == st.name }?.counts ?? [:]
            var line = RunSummary.StageLine(stage: st.name, kind: st.kind)
            line.succeeded = c["succeeded"] ?? 0
            line.skipped = c["skipped"] ?? 0
            line.failed = (c["failed"] ?? 0) + (c["cancelled"] ?? 0)
            line.blocked = c["blocked"] ?? 0
            line.total = line.succeeded + line.skipped + line.failed + line.blocked
            line.bytes = counts.first { $0.stage == st.name }?.bytes ?? 0
            line.seconds = counts.first { $0.stage == st.name }?.seconds ?? 0
            summary.stages.append(line)
        }
        summary.failures += failedTasks.map { .init(stage: $0.stage, item: $0.item, error: $0.error ?? $0.state) }
        let failed = summary.stages.contains { $0.failed + $0.blocked > 0 } || !summaryFailures.isEmpty
        summary.state = wasCancelled ? "cancelled" : (failed ? "failed" : "succeeded")
        summary.seconds = RunDriver.now() - (record?.startedAt ?? RunDriver.now())
        do { try catalog.finish(runID: runID, state: summary.state, at: RunDriver.now()) } catch { throw .catalog(error) }
        if let data = try? JSONEncoder.sorted.encode(summary) {
            try? AtomicFile.write(Array(data), to: Path.join(files.runDir, "summary.json"), durable: false)
        }
        log("run \(runID) \(summary.state): " + summary.stages.map { "\($0.stage) \($0.succeeded) done, \($0.skipped) already done, \($0.failed) failed" + ($0.blocked > 0 ? ", \($0.blocked) not run" : "") }.joined(separator: "; "))
        return summary
    }

    /// Why array task `slice` of `stage` left items without a result: its last Slurm state (from
    /// squeue or sacct), refined by what slurmstepd wrote into its log (time limit, memory).
    func explain(stage: String, slice: Int) -> (state: String, message: String) {
        guard let (job, idx) = plan.arrayTask(stage: stage, slice: slice) else {
            return ("UNKNOWN", "never submitted (the submission stopped before this array); run again")
        }
        let id = "\(job)_\(idx)"
        var state = states.tasks[id]?.state
        let tail = (try? readFile(files.logPath(stage, jobID: job, index: idx, err: true))).map { String(decoding: $0.suffix(8192), as: UTF8.self) } ?? ""
        if tail.contains("DUE TO TIME LIMIT") { state = JobState.timeout.rawValue }
        else if tail.contains("Exceeded job memory limit") || tail.contains("oom-kill") || tail.contains("out-of-memory") { state = JobState.outOfMemory.rawValue }
        else if state == nil && tail.contains("CANCELLED AT") { state = JobState.cancelled.rawValue }
        guard let state else {
            return ("UNKNOWN", "array task \(id) left the queue without a result for this item, and the cluster keeps no accounting to say why; see emflow logs \(runID)")
        }
        let js = JobState(slurm: state)
        let exit = states.tasks[id]?.exitCode.map { ", exit code \($0)" } ?? ""
        return (state, "array task \(id) ended \(state)\(exit) before this item finished: \(js?.advice ?? "see emflow logs \(runID)")")
    }
}
