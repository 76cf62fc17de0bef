import Foundation
import POSIXFiles
import Catalog
import WorkflowSpec

public struct BackfillOptions: Sendable {
    /// At most this many items in this invocation's batch.
    public var maxItems: Int?
    /// At most this many bytes in the batch (an item larger than that alone still goes).
    public var maxBytes: Int64?
    /// Put items that failed before back into the batch.
    public var retryFailed = false
    /// Skip the listing pass: run a batch of what earlier passes registered.
    public var listing = true
    /// Only list and register; submit nothing.
    public var listOnly = false
    /// Where and how the batch runs (the spec's executor unless told otherwise; Slurm: `wait` follows the batch).
    public var launch = LaunchOptions()
    public init() {}
}

/// What one `emflow backfill` invocation did, and where the whole archive stands after it.
public struct BackfillReport: Codable, Sendable {
    public struct Batch: Codable, Sendable {
        public var items: Int
        public var bytes: Int64
        public var runID: String?
        /// local runs: the run's state; Slurm without --wait: submitted.
        public var state: String
        public var settled: [String: Int]
    }
    public var workflow: String
    public var listing: ArchivePass?
    public var problems: [String]
    /// Earlier batches that ended since the last invocation, settled into done/failed/pending.
    public var settledRuns: [String: [String: Int]]
    public var batch: Batch?
    /// Why no batch was submitted, when none was.
    public var note: String?
    public var totals: ArchiveTotals
    public var run: RunSummary?
    public var submission: SlurmSubmission?
}

/// Backfill of an archive (an S3 prefix or a POSIX tree of 10^5–10^6 files): a listing pass that
/// streams the inputs a page at a time into the catalog's archive table (new and changed items
/// become pending; the unchanged are not touched), then one bounded batch of pending items through
/// the workflow with the local or Slurm executor. Batches of a workflow never overlap (a lock, and
/// the executors follow an earlier batch still in Slurm before submitting another); items whose
/// tasks are done (same content key) are skipped without reading their data.
public final class Backfill: Sendable {
    public let driver: RunDriver
    var workflow: Workflow { driver.workflow }
    var catalog: Catalog { driver.catalog }

    public init(driver: RunDriver) { self.driver = driver }

    /// The per-item stages: an item is done when all of them are.
    static func itemStages(of workflow: Workflow) -> [String] {
        workflow.stages.filter { StageRegistry.all[$0.uses]?.granularity == .perItem }.map(\.name)
    }
    var itemStages: [String] { Self.itemStages(of: workflow) }

    public static func lockPath(workspace: String, workflow: String) -> String {
        Path.join(workspace, "backfill-\(Scheduler.safeName(workflow)).lock")
    }

    public func run(_ options: BackfillOptions) throws(EngineError) -> BackfillReport {
        let lockPath = Self.lockPath(workspace: workflow.workspace, workflow: workflow.name)
        let lock = try WorkspaceLock(path: lockPath) { holder in
            .busy("another backfill of workflow '\(workflow.name)' is running (pid \(holder)); this one did nothing. " +
                  "It ends by itself when its batch is done; `emflow status --spec \(driver.specPath)` shows where the archive stands")
        }
        defer { withExtendedLifetime(lock) {} }

        var report = BackfillReport(workflow: workflow.name, listing: nil, problems: [], settledRuns: [:], batch: nil, note: nil,
                                    totals: .empty(workflow: workflow.name), run: nil, submission: nil)
        report.settledRuns = try settleEndedRuns(options)

        if options.listing {
            let (pass, problems) = try list(options)
            report.listing = pass
            report.problems = problems
        }
        if options.listOnly {
            report.note = "listed only (--list-only): nothing submitted"
            report.totals = try totals()
            return report
        }

        // Nothing pending: follow what is still in Slurm, but start no empty run.
        let peek: [ArchiveEntry]
        do { peek = try catalog.nextBatch(workflow: workflow.name, maxItems: 1, maxBytes: nil, includeFailed: options.retryFailed) }
        catch { throw .catalog(error) }
        if peek.isEmpty {
            for (run, s) in try followSlurmBatches(options) { report.settledRuns[run] = s }
            report.totals = try totals()
            let running = report.totals.states["running"]?.items ?? 0
            let failed = report.totals.states["failed"]?.items ?? 0
            report.note = running > 0 ? "nothing pending; \(running) item(s) of an earlier batch still in Slurm"
                : failed > 0 && !options.retryFailed ? "nothing pending; \(failed) item(s) failed before (--retry-failed puts them in the batch)"
                : "nothing pending: every listed item is done"
            return report
        }

        // The batch is chosen only once the executor holds the workspace and has dealt with earlier runs.
        let chosen = Captured<[ArchiveEntry]>([])
        let source: ItemSource = { [catalog, workflow] () throws(EngineError) -> [Item] in
            let entries: [ArchiveEntry]
            do throws(CatalogError) {
                entries = try catalog.nextBatch(workflow: workflow.name, maxItems: options.maxItems, maxBytes: options.maxBytes,
                                                includeFailed: options.retryFailed)
            } catch { throw .catalog(error) }
            chosen.set(entries)
            return entries.map(Self.item)
        }

        // Interrupted locally: the batch's items stay pending; what finished is in the catalog and is skipped next time.
        let launched = try driver.launch(source, options.launch)
        report.run = launched.summary
        report.submission = launched.submission
        if let attached = launched.submission?.attachedTo {
            report.note = "the previous batch (run \(attached)) is still in Slurm; nothing new submitted"
        }
        let runID = launched.runID, state = launched.state
        let entries = chosen.get()
        if let runID, !entries.isEmpty {
            do {
                try catalog.markRunning(workflow: workflow.name, items: entries.map(\.item), runID: runID, at: RunDriver.now())
                let settled = try catalog.settle(workflow: workflow.name, runID: runID, stages: itemStages, at: RunDriver.now())
                report.batch = .init(items: entries.count, bytes: entries.reduce(0) { $0 + $1.size }, runID: runID, state: state, settled: settled)
            } catch { throw .catalog(error) }
        }
        report.totals = try totals()
        return report
    }

    func totals() throws(EngineError) -> ArchiveTotals {
        do { return try catalog.archiveTotals(workflow: workflow.name) } catch { throw .catalog(error) }
    }

    /// Batches that ended (a local run that was killed, a Slurm run that finished since): their items
    /// become done, failed, or pending again. Local runs killed mid-way are collected first.
    func settleEndedRuns(_ options: BackfillOptions) throws(EngineError) -> [String: [String: Int]] {
        do { if try catalog.archiveRuns(workflow: workflow.name).isEmpty { return [:] } } catch { throw .catalog(error) }
        // Only with the workspace to ourselves may a run left `running` be called interrupted.
        if let wl = try? WorkspaceLock(workspace: workflow.workspace) {
            try driver.collectInterruptedRuns(RunOptions.logging(options.launch.log))
            withExtendedLifetime(wl) {}
        }
        return try Self.settleEnded(workflow: workflow, catalog: catalog)
    }

    /// Settles the items of every batch of `workflow` whose run has ended (what `emflow status` does
    /// before it shows the archive); batches still running are left alone.
    public static func settleEnded(workflow: Workflow, catalog: Catalog) throws(EngineError) -> [String: [String: Int]] {
        let stages = itemStages(of: workflow)
        var out: [String: [String: Int]] = [:]
        do {
            for r in try catalog.archiveRuns(workflow: workflow.name) {
                let s = try catalog.settle(workflow: workflow.name, runID: r, stages: stages, at: RunDriver.now())
                if !s.isEmpty { out[r] = s }
            }
        } catch { throw .catalog(error) }
        return out
    }

    /// Earlier Slurm batches still marked running: collect what their workers wrote (following them to
    /// the end with --wait), then settle their items.
    func followSlurmBatches(_ options: BackfillOptions) throws(EngineError) -> [String: [String: Int]] {
        var out: [String: [String: Int]] = [:]
        let runs: [String]
        do { runs = try catalog.archiveRuns(workflow: workflow.name) } catch { throw .catalog(error) }
        for id in runs {
            let record: RunRecord?
            do { record = try catalog.run(id: id) } catch { throw .catalog(error) }
            guard let record, record.executor == "slurm", record.state == "running" else { continue }
            _ = try SlurmExecutor.forRun(workspace: workflow.workspace, runID: id)
                .refresh(runID: id, wait: options.launch.wait, progress: options.launch.progress, log: options.launch.log)
            do {
                let s = try catalog.settle(workflow: workflow.name, runID: id, stages: itemStages, at: RunDriver.now())
                if !s.isEmpty { out[id] = s }
            } catch { throw .catalog(error) }
        }
        return out
    }

    /// One listing pass: the inputs a page at a time into the archive table.
    func list(_ options: BackfillOptions) throws(EngineError) -> (ArchivePass, [String]) {
        let started = RunDriver.now()
        var reg = ArchiveRegistration()
        var lastLog = started
        let (problems, problemCount) = try InputScanner.stream(workflow, skip: [workflow.workspace]) { page throws(EngineError) in
            let entries = page.map(Self.entry)
            do throws(CatalogError) { reg.add(try catalog.register(workflow: workflow.name, entries: entries, at: RunDriver.now())) } catch { throw .catalog(error) }
            let t = RunDriver.now()
            if options.launch.progress && t - lastLog >= 2 {
                lastLog = t
                options.launch.log("listing: \(reg.listed) item(s) so far (\(reg.new) new, \(reg.changed) changed), \(Int(Double(reg.listed) / max(t - started, 1e-3)))/s")
            }
        }
        let pass = ArchivePass(startedAt: started, finishedAt: RunDriver.now(), registration: reg, problems: problemCount)
        do throws(CatalogError) { try catalog.record(pass: pass, workflow: workflow.name) } catch { throw .catalog(error) }
        options.launch.log("listing: \(reg.listed) item(s) in \(ProgressReporter.duration(pass.finishedAt - started)): \(reg.new) new, " +
                    "\(reg.changed) changed, \(reg.unchanged) unchanged" + (problemCount > 0 ? ", \(problemCount) unreadable (named below)" : ""))
        for p in problems { options.launch.log("input problem: \(p)") }
        if problemCount > problems.count { options.launch.log("… and \(problemCount - problems.count) more input problem(s)") }
        return (pass, problems)
    }

    static func entry(_ i: Item) -> ArchiveEntry {
        ArchiveEntry(item: i.id, uri: i.source.path, size: i.source.size, mtimeNanoseconds: i.source.mtimeNanoseconds,
                     etag: i.source.etag, fields: i.fields, problem: i.layoutProblem)
    }

    static func item(_ e: ArchiveEntry) -> Item {
        Item(id: e.item, source: Artifact(path: e.uri, size: e.size, mtimeNanoseconds: e.mtimeNanoseconds ?? 0, etag: e.etag),
             fields: e.fields, layoutProblem: e.problem)
    }
}
