import ArgumentParser
import Foundation
import Engine
import POSIXFiles
import WorkflowSpec
#if canImport(Glibc)
import Glibc
#endif

struct RunCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run a workflow (again: finish what is left; what is done is skipped).",
        discussion: "Progress goes to stderr; the summary to stdout (as JSON with --json).")

    @Argument(help: "The workflow spec (YAML).") var spec: String
    @Option(name: .shortAndLong, help: "Tasks at a time (default: the spec's executor.jobs, else one per core).") var jobs: Int?
    @Flag(help: "List what would run and what is already done; change nothing.") var dryRun = false
    @Flag(help: "Print the summary as JSON.") var json = false
    @Flag(help: "No progress display.") var quiet = false
    @Option(help: "local or slurm (default: the spec's executor.kind).") var executor: String?
    @Flag(help: "Slurm: follow the run to its end with progress, then collect (default: submit and return).") var wait = false
    @Option(help: "Slurm: seconds between two squeue calls while waiting (default: the spec's, the site's, else 30).") var pollInterval: Double?

    func validate() throws {
        if let jobs, jobs < 1 { throw ValidationError("--jobs must be at least 1") }
        if let executor, !["local", "slurm"].contains(executor) { throw ValidationError("--executor is local or slurm") }
        if let p = pollInterval, p < 0.2 { throw ValidationError("--poll-interval must be at least 0.2 s") }
    }

    func run() throws {
        installStopHandlers()
        try failing {
            let driver = try RunDriver(specPath: spec)
            if (executor ?? driver.workflow.executor.kind.rawValue) == "slurm" { return try runSlurm(driver) }
            var o = RunOptions()
            o.jobs = jobs
            o.dryRun = dryRun
            o.progress = !quiet && !json
            let quiet = self.quiet, json = self.json
            o.log = { line in if !quiet && !json { printError(line) } }
            let s = try driver.run(o)
            if json { try printJSON(s) } else { printSummary(s) }
            if s.state != "succeeded" && !dryRun { throw ExitCode(Exit.itemsFailed) }
        }
    }

    func runSlurm(_ driver: RunDriver) throws {
        var o = SlurmOptions()
        o.dryRun = dryRun
        o.wait = wait
        o.pollInterval = pollInterval
        o.progress = !quiet && !json
        let quiet = self.quiet, json = self.json
        o.log = { line in if !quiet && !json { printError(line) } }
        let sub = try SlurmExecutor(driver: driver).run(o)
        if json { try printJSON(sub) }
        else if dryRun {
            print("dry run of \(sub.workflow) with the Slurm executor: \(sub.items) item(s), \(sub.arrays.count) array(s) to submit")
            for (stage, n) in sub.skipped.sorted(by: { $0.key < $1.key }) where n > 0 { print("  \(stage): \(n) task(s) already done") }
            for stage in sub.driverStages { print("  \(stage): runs in the driver once the arrays have ended (emflow run --wait, or emflow status)") }
            for a in sub.arrays {
                print("\n# ---- stage \(a.stage): \(a.tasks) array task(s) × \(a.itemsPerTask) item(s)" + (a.dependency.map { ", after \($0)" } ?? ""))
                print(a.text ?? "", terminator: "")
            }
        } else if let s = sub.summary {
            printSummary(s)
        } else if let attached = sub.attachedTo {
            print("run \(attached) is still in Slurm; nothing submitted (emflow status \(attached) --wait)")
        } else {
            print("run \(sub.runID ?? "-") submitted: \(sub.arrays.count) array(s), jobs \(sub.arrays.compactMap(\.jobID).joined(separator: " ")); " +
                  "follow with: emflow status \(sub.runID ?? "") [--wait]")
        }
        if let s = sub.summary, s.state != "succeeded" { throw ExitCode(Exit.itemsFailed) }
    }

    func printSummary(_ s: RunSummary) {
        if s.dryRun {
            print("dry run of \(s.workflow): \(s.items) item(s)")
            for st in s.stages {
                let plan = s.plan?.filter { $0.stage == st.stage } ?? []
                let toRun = plan.filter { $0.action == "run" }.count
                let waits = plan.filter { $0.action == "after upstream" }.count
                print("  \(st.stage) (\(st.kind)): \(toRun) to run, \(st.skipped) already done" + (waits > 0 ? ", \(waits) after upstream" : "") +
                      (st.blocked > 0 ? ", \(st.blocked) blocked" : ""))
                for p in plan.prefix(20) where p.action != "done" { print("      \(p.action == "run" ? "run " : "wait") \(p.item)") }
                if plan.filter({ $0.action != "done" }).count > 20 { print("      … (--json lists all)") }
            }
            return
        }
        let ran = s.stages.reduce(0) { $0 + $1.succeeded + $1.failed }
        if !s.didWork && s.failures.isEmpty {
            print("nothing to do: all \(s.stages.reduce(0) { $0 + $1.skipped }) task(s) of \(s.workflow) were already done (run \(s.runID ?? "-"))")
        } else {
            print("run \(s.runID ?? "-") of \(s.workflow): \(s.state), \(ran) task(s) ran in \(ProgressReporter.duration(s.seconds))")
        }
        for st in s.stages {
            var l = "  \(st.stage): \(st.succeeded) done, \(st.skipped) already done"
            if st.failed > 0 { l += ", \(st.failed) FAILED" }
            if st.blocked > 0 { l += ", \(st.blocked) not run (upstream failed)" }
            print(l)
        }
        for p in s.inputProblems { print("  input problem: \(p)") }
        for f in s.failures.prefix(50) { print("  FAILED \(f.stage) \(f.item): \(f.error)") }
        if s.failures.count > 50 { print("  … \(s.failures.count - 50) more: emflow status \(s.runID ?? "") --failed") }
    }
}

/// First SIGINT/SIGTERM: start no new task, record the running ones, exit 130. A second one kills.
func installStopHandlers() {
    let handler: @convention(c) (Int32) -> Void = { sig in
        if stopRequested.exchange(true, ordering: .relaxed) { signal(sig, SIG_DFL); raise(sig); return }
        let msg = "\nemflow: stopping after the running tasks (again to abort)\n"
        _ = msg.withCString { write(2, $0, strlen($0)) }
    }
    signal(SIGINT, handler)
    signal(SIGTERM, handler)
}

struct ValidateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "validate", abstract: "Check a workflow spec without running it.")
    @Argument(help: "The workflow spec (YAML).") var spec: String
    @Flag(help: "Print the result as JSON.") var json = false

    struct Report: Encodable {
        var valid: Bool
        var file: String
        var issues: [Issue]
        var stages: [String]?
        struct Issue: Encodable { var line: Int; var column: Int; var message: String; var hint: String? }
    }

    func run() throws {
        do {
            let wf = try StageRegistry.parser.load(path: spec)
            if json { try printJSON(Report(valid: true, file: spec, issues: [], stages: wf.stages.map { "\($0.name) (\($0.uses))" })) }
            else {
                print("\(spec): valid — workflow '\(wf.name)', \(wf.inputs.count) input(s), stages: " +
                      wf.stages.map { $0.needs.isEmpty ? $0.name : "\($0.name) <- \($0.needs.joined(separator: ","))" }.joined(separator: ", "))
            }
        } catch let e as WorkflowSpecError {
            if json {
                try printJSON(Report(valid: false, file: spec, issues: e.issues.map { .init(line: $0.line, column: $0.column, message: $0.message, hint: $0.hint) }))
            } else { printError(e.description) }
            throw ExitCode(Exit.usage)
        }
    }
}

struct StagesCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "stages", abstract: "List the stage kinds a spec can use, with their parameters.")
    @Flag(help: "Print as JSON.") var json = false

    struct Kind: Encodable { var kind: String; var summary: String; var parameters: [Param] }
    struct Param: Encodable { var name: String; var type: String; var required: Bool; var defaultValue: String?; var allowed: [String]?; var help: String }

    func run() throws {
        let kinds = StageRegistry.schemas.keys.sorted().map { k in
            let s = StageRegistry.schemas[k]!
            return Kind(kind: k, summary: s.summary, parameters: s.fields.map {
                Param(name: $0.name, type: $0.type.rawValue, required: $0.required, defaultValue: $0.defaultValue?.canonicalJSON, allowed: $0.allowed, help: $0.help)
            })
        }
        if json { try printJSON(kinds); return }
        for k in kinds {
            print("\(k.kind): \(k.summary)")
            for p in k.parameters {
                print("    \(p.name) (\(p.type)\(p.required ? ", required" : "")\(p.defaultValue.map { ", default \($0)" } ?? "")): \(p.help)")
            }
        }
    }
}
