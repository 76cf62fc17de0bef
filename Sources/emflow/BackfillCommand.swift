import ArgumentParser
import Foundation
import Engine
import Catalog
import WorkflowSpec

struct BackfillCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "backfill",
        abstract: "List an archive into the catalog and run one bounded batch of what is new, changed or left.",
        discussion: """
            Each invocation lists the spec's inputs a page at a time (new and changed items become pending;
            unchanged ones are not touched), then runs at most --max-items / --max-bytes of the pending items
            through the workflow. Run it again (or schedule it: emflow schedule install) until nothing is
            pending; emflow status --spec SPEC shows the whole archive with an ETA.
            Exit codes: 0 batch done (or nothing pending); 1 items of the batch failed; 75 another backfill
            of this workflow is running (nothing was done; try later).
            """)

    @Argument(help: "The workflow spec (YAML).") var spec: String
    @Option(help: "At most this many items in this invocation's batch.") var maxItems: Int?
    @Option(help: "At most this many bytes in the batch (e.g. 500G, 2T, 1048576).", transform: parseByteSize) var maxBytes: Int64?
    @Flag(help: "Put items that failed before back into the batch.") var retryFailed = false
    @Flag(name: .customLong("no-list"), help: "Skip the listing pass; run a batch of what earlier passes found.") var noList = false
    @Flag(help: "Only list and register what is new or changed; run nothing.") var listOnly = false
    @Option(help: "local or slurm (default: the spec's executor.kind).") var executor: String?
    @Flag(help: "Slurm: follow the batch to its end (default: submit and return; the next invocation collects it).") var wait = false
    @Option(name: .shortAndLong, help: "Local executor: tasks at a time.") var jobs: Int?
    @Option(help: "Slurm: seconds between two squeue calls while waiting.") var pollInterval: Double?
    @Flag(help: "Print the report as JSON.") var json = false
    @Flag(help: "No progress display.") var quiet = false

    func validate() throws {
        if let m = maxItems, m < 1 { throw ValidationError("--max-items must be at least 1") }
        if let b = maxBytes, b < 1 { throw ValidationError("--max-bytes must be at least 1 byte") }
        if let executor, ExecutorSpec.Kind(rawValue: executor) == nil { throw ValidationError("--executor is local or slurm") }
        if noList && listOnly { throw ValidationError("--no-list and --list-only leave nothing to do; use one") }
    }

    func run() throws {
        installStopHandlers()
        try failing {
            let driver = try RunDriver(specPath: spec)
            var o = BackfillOptions()
            o.maxItems = maxItems; o.maxBytes = maxBytes; o.retryFailed = retryFailed
            o.listing = !noList; o.listOnly = listOnly
            o.launch = .cli(executor: executor, wait: wait, jobs: jobs, pollInterval: pollInterval, quiet: quiet, json: json)
            let report = try Backfill(driver: driver).run(o)
            if json { try printJSON(report) } else { printReport(report) }
            if let b = report.batch, b.state == "failed" || (b.settled["failed"] ?? 0) > 0 { throw ExitCode(Exit.itemsFailed) }
        }
    }

    func printReport(_ r: BackfillReport) {
        for (run, s) in r.settledRuns.sorted(by: { $0.key < $1.key }) {
            print("earlier batch \(run) ended: " + Self.states(s))
        }
        if let l = r.listing {
            let reg = l.registration
            print("listed \(reg.listed) item(s): \(reg.new) new, \(reg.changed) changed, \(reg.unchanged) unchanged" +
                  (l.problems > 0 ? ", \(l.problems) unreadable" : ""))
        }
        if let b = r.batch {
            print("batch of \(b.items) item(s), \(formatBytes(b.bytes)): run \(b.runID ?? "-") \(b.state)" +
                  (b.settled.isEmpty ? "" : " — " + Self.states(b.settled)))
            if let s = r.run {
                for f in s.failures.prefix(20) { print("  FAILED \(f.stage) \(f.item): \(f.error)") }
                if s.failures.count > 20 { print("  … \(s.failures.count - 20) more: emflow status \(s.runID ?? "") --failed") }
            }
            if b.state == "submitted" { print("  in Slurm; the next `emflow backfill` (or `emflow status --spec`) collects it") }
        }
        if let n = r.note { print(n) }
        print(ArchiveView.summary(r.totals))
    }

    static func states(_ s: [String: Int]) -> String {
        ["done", "failed", "pending", "running"].compactMap { k in s[k].map { "\($0) \(k == "pending" ? "back to pending" : k)" } }
            .joined(separator: ", ")
    }
}

extension LaunchOptions {
    /// The executor options `backfill` and `reprocess` share; progress and log lines on stderr unless quiet or JSON.
    static func cli(executor: String?, wait: Bool, jobs: Int?, pollInterval: Double?, quiet: Bool, json: Bool) -> LaunchOptions {
        var o = LaunchOptions()
        o.executor = executor.flatMap(ExecutorSpec.Kind.init(rawValue:))
        o.wait = wait; o.jobs = jobs; o.pollInterval = pollInterval
        o.progress = !quiet && !json
        o.log = { line in if !quiet && !json { printError(line) } }
        return o
    }
}

/// How the archive of a workflow reads on a terminal (backfill and status share it).
enum ArchiveView {
    static func summary(_ t: ArchiveTotals) -> String {
        let c = { (k: String) in t.states[k] ?? ArchiveTotals.Count() }
        var l = "archive of \(t.workflow): \(t.total.items) item(s), \(formatBytes(t.total.bytes)) — " +
            "done \(c("done").items) (\(formatBytes(c("done").bytes))), pending \(c("pending").items) (\(formatBytes(c("pending").bytes)))"
        if c("running").items > 0 { l += ", running \(c("running").items)" }
        if c("failed").items > 0 { l += ", failed \(c("failed").items)" }
        if t.total.items > 0 { l += "; \(c("done").items * 100 / t.total.items)% done" }
        if let eta = t.etaSeconds, eta > 0 {
            l += ", ETA \(ProgressReporter.duration(eta)) of batch time"
            if let r = t.bytesPerSecond { l += " at \(formatBytes(Int64(r)))/s" }
        }
        if let p = t.lastListing {
            l += "\n  last listing \(StatusCommand.time(p.startedAt)): \(p.registration.listed) listed, \(p.registration.new) new, \(p.registration.changed) changed"
        }
        return l
    }
}

/// "500G", "2T", "1.5GiB", "1048576": bytes (K/M/G/T are powers of 1024, as sbatch and du read them).
func parseByteSize(_ s: String) throws -> Int64 {
    let t = s.trimmingCharacters(in: .whitespaces).uppercased()
    var number = t
    var unit: Double = 1
    for (suffixes, mult) in [(["TIB", "TB", "T"], 1099511627776.0), (["GIB", "GB", "G"], 1073741824.0), (["MIB", "MB", "M"], 1048576.0),
                             (["KIB", "KB", "K"], 1024.0), (["B"], 1.0)] {
        if let sfx = suffixes.first(where: { t.hasSuffix($0) }) { number = String(t.dropLast(sfx.count)); unit = mult; break }
    }
    guard let v = Double(number.trimmingCharacters(in: .whitespaces)), v > 0 else {
        throw ValidationError("'\(s)' is not a size: use a number of bytes or one with K, M, G or T (e.g. 500G)")
    }
    return Int64(v * unit)
}
