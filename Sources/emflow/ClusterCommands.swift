import ArgumentParser
import Foundation
import Engine
import Catalog
import POSIXFiles

/// `emflow worker`: what a Slurm array task runs (see the job scripts in runs/<id>/slurm/).
struct WorkerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "worker", abstract: "Run one Slurm array task's slice of a run, or one rank of an MPI task (job scripts and emflow call this).", shouldDisplay: false)
    @Option(help: "The run directory (runs/<id>).") var runDir: String?
    @Option(help: "The stage.") var stage: String?
    @Option(help: "The slice (array task) number.") var slice: Int?
    @Option(help: "Items at a time (default: SLURM_CPUS_PER_TASK, else 1).") var jobs: Int?
    @Option(name: .customLong("mpi-task"), help: "Run this task file as one rank of mpirun/srun (rank 0 writes FILE.result).") var mpiTask: String?

    func validate() throws {
        if mpiTask == nil && (runDir == nil || stage == nil || slice == nil) { throw ValidationError("give --run-dir, --stage and --slice, or --mpi-task") }
    }

    func run() throws {
        installStopHandlers()
        try failing {
            if let mpiTask {
                // The outcome (success or the stage's error) is in the result file; the exit status says only whether it was written.
                _ = try MPIStages.runRank(taskFile: mpiTask)
                return
            }
            let (runDir, stage, slice) = (runDir!, stage!, slice!)
            let start = Date()
            let o = try SlurmWorker.run(runDir: runDir, stage: stage, slice: slice, jobs: jobs) { printError("emflow worker: \($0)") }
            printError("emflow worker: stage \(stage) slice \(slice): \(o.done) done, \(o.failed) failed, \(o.skipped) already done (same key), " +
                       "\(o.alreadyDone) done by an earlier attempt, \(o.blocked) not run (upstream failed), in \(ProgressReporter.duration(Date().timeIntervalSince(start)))")
            if o.failed > 0 { throw ExitCode(Exit.itemsFailed) }
        }
    }
}

struct LogsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "logs", abstract: "Per item of a run: state, error, and (Slurm) the tail of its array task's stderr.")
    @Argument(help: "A run id or its prefix (default: the latest run).") var runID: String?
    @OptionGroup var where_: WorkspaceOptions
    @Flag(help: "Only items that failed, were cancelled or did not run.") var failed = false
    @Option(help: "Lines of stderr per item.") var lines = 15
    @Flag(help: "Print as JSON.") var json = false

    func run() throws {
        try failing {
            let ws = try where_.resolve()
            let catalog = try where_.catalog()
            let record = try findRun(runID, in: catalog)
            var logs: [ItemLog]
            if record.executor == "slurm" {
                let ex = try SlurmExecutor.forRun(workspace: ws, runID: record.id)
                if record.state == "running" { _ = try? ex.refresh(runID: record.id, wait: false, progress: false) { _ in } }
                logs = try ex.itemLogs(runID: record.id, failedOnly: failed, lines: lines)
            } else {
                logs = try catalog.tasks(runID: record.id).filter { !failed || ["failed", "cancelled", "blocked"].contains($0.state) }.map {
                    ItemLog(stage: $0.stage, item: $0.item, state: $0.state, error: $0.error, tries: $0.tries)
                }
            }
            logs.sort { ($0.stage, $0.item) < ($1.stage, $1.item) }
            if json { try printJSON(logs); return }
            print("run \(record.id) (\(record.executor), \(record.state)): \(logs.count) item(s)\(failed ? " failed or not run" : "")")
            for l in logs {
                var head = "\(l.state.uppercased()) \(l.stage) \(l.item)"
                if let a = l.arrayTask { head += "  [array task \(a)" + (l.slurmState.map { " \($0)" } ?? "") + (l.exitCode.map { ", exit \($0)" } ?? "") + "]" }
                print(head)
                if let e = l.error { print("    error: \(e)") }
                if let tail = l.stderrTail, !tail.isEmpty {
                    print("    stderr (\(l.stderrFile ?? "")):")
                    for t in tail { print("      \(t)") }
                }
            }
        }
    }
}

struct CancelCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cancel", abstract: "Cancel a Slurm run's jobs and record what was not done (run again to resubmit it).")
    @Argument(help: "A run id or its prefix (default: the latest run).") var runID: String?
    @OptionGroup var where_: WorkspaceOptions
    @Flag(help: "Print the summary as JSON.") var json = false

    func run() throws {
        try failing {
            let ws = try where_.resolve()
            let record = try findRun(runID, in: try where_.catalog())
            guard record.executor == "slurm" else {
                throw EngineError.usage("run \(record.id) ran with the local executor; stop it with Ctrl-C (or kill its emflow process)")
            }
            guard record.state == "running" else { throw EngineError.usage("run \(record.id) has already ended (\(record.state))") }
            let s = try SlurmExecutor.forRun(workspace: ws, runID: record.id).cancel(runID: record.id) { printError($0) }
            if json { try printJSON(s) } else { print("run \(record.id) cancelled; run the spec again to resubmit what was not done") }
        }
    }
}

/// A run by id or id prefix, else the latest; an unknown id names the runs that exist.
func findRun(_ id: String?, in catalog: Catalog) throws -> RunRecord {
    let runs = try catalog.runs()
    if let id {
        guard let r = runs.first(where: { $0.id == id || $0.id.hasPrefix(id) }) else {
            throw EngineError.usage("no run '\(id)' in this workspace; runs: \(runs.isEmpty ? "(none)" : runs.prefix(10).map(\.id).joined(separator: ", "))")
        }
        return r
    }
    guard let r = runs.first else { throw EngineError.usage("no runs in this workspace yet") }
    return r
}
