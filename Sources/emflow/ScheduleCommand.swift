import ArgumentParser
import Foundation
import Engine
import POSIXFiles
import WorkflowSpec

struct ScheduleCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "schedule", abstract: "Recurring backfills: a Slurm scrontab entry (or self-resubmitting job), or a crontab line.",
        subcommands: [Install.self, List.self, Remove.self, Resubmit.self])

    struct Install: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "install", abstract: "Run `emflow backfill SPEC` on a cron schedule.",
            discussion: """
                Slurm executor: a scrontab entry where Slurm has scrontab; otherwise a job that waits for the
                next time (--begin), resubmits itself for the one after, and never overlaps itself
                (--dependency=singleton). Local executor: a crontab line. Installing a name again replaces it.
                Credentials are not copied into the entry: use AWS_PROFILE / ~/.aws/credentials.
                """)
        @Argument(help: "The workflow spec (YAML).") var spec: String
        @Option(help: "When, as cron reads it: \"0 2 * * *\" (02:00 daily), @daily, @hourly ...") var at: String
        @Option(help: "The schedule's name (default: the workflow's name).") var name: String?
        @Option(help: "Backfill: at most this many items a run.") var maxItems: Int?
        @Option(help: "Backfill: at most this many bytes a run (e.g. 2T).") var maxBytes: String?
        @Flag(help: "Backfill: put failed items back into each batch.") var retryFailed = false
        @Option(help: "local or slurm (default: the spec's executor.kind).") var executor: String?
        @Option(help: "Slurm: the scheduled job's time limit (default 01:00:00).") var time: String?
        @Option(help: "Slurm: the scheduled job's partition (default: Slurm's default).") var partition: String?
        @Flag(help: "Slurm without scrontab: start the first run now, then follow the schedule.") var now = false
        @Flag(help: "Print the entry as JSON.") var json = false

        func validate() throws {
            if let executor, ExecutorSpec.Kind(rawValue: executor) == nil { throw ValidationError("--executor is local or slurm") }
            if let m = maxItems, m < 1 { throw ValidationError("--max-items must be at least 1") }
            if let b = maxBytes { _ = try parseByteSize(b) }
            do { _ = try CronSchedule(at) } catch { throw ValidationError("--at: \(error)") }
        }

        func run() throws {
            try failing {
                let wf: Workflow
                do throws(WorkflowSpecError) { wf = try StageRegistry.parser.load(path: spec) } catch { throw EngineError.spec(error) }
                let abs = Path.resolve(spec, against: currentDirectory())
                var args: [String] = []
                if let maxItems { args += ["--max-items", String(maxItems)] }
                if let maxBytes { args += ["--max-bytes", maxBytes] }
                if retryFailed { args.append("--retry-failed") }
                let kind = executor.flatMap(ExecutorSpec.Kind.init(rawValue:)) ?? wf.executor.kind
                if kind != wf.executor.kind { args += ["--executor", kind.rawValue] }
                var r = Scheduler.Request(name: name ?? String(Scheduler.safeName(wf.name).prefix(64)), spec: abs, cron: try CronSchedule(at), executor: kind, backfillArguments: args)
                r.time = time; r.partition = partition; r.now = now
                if environment("AWS_SECRET_ACCESS_KEY") != nil && kind == .local {
                    printError("note: AWS_SECRET_ACCESS_KEY is set in this shell; cron will not see it (and emflow does not copy it): give the schedule credentials through AWS_PROFILE / ~/.aws/credentials")
                }
                let e = try Scheduler().install(r, workspace: wf.workspace)
                if json { try printJSON(e); return }
                print("schedule \(e.name) installed (\(e.backend)): backfill \(e.spec) at '\(e.cron)'" +
                      (e.next.map { ", next \(StatusCommand.time($0))" } ?? "") + (e.jobID.map { " as job \($0)" } ?? ""))
                if e.backend == "sbatch-begin" {
                    print("  (this Slurm has no scrontab: a job waits for each time and resubmits itself; logs in \(Path.join(wf.workspace, "schedule")))")
                }
            }
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "list", abstract: "List emflow's schedules.")
        @OptionGroup var where_: WorkspaceOptions
        @Flag(help: "Print as JSON.") var json = false

        func run() throws {
            try failing {
                let entries = try Scheduler().list(workspace: try? where_.resolve())
                if json { try printJSON(entries); return }
                if entries.isEmpty { print("no emflow schedules"); return }
                for e in entries {
                    print("\(e.name)  \(e.backend)  '\(e.cron)'  \(e.spec)" + (e.next.map { "  next \(StatusCommand.time($0))" } ?? "") +
                          (e.jobID.map { "  job \($0)" } ?? ""))
                }
            }
        }
    }

    struct Remove: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "remove", abstract: "Remove a schedule (and cancel its waiting job).")
        @Argument(help: "The schedule's name (emflow schedule list).") var name: String
        @OptionGroup var where_: WorkspaceOptions

        func run() throws {
            try failing {
                let s = Scheduler()
                let ws = try? where_.resolve()
                guard try s.remove(name: name, workspace: ws) else {
                    let known = (try? s.list(workspace: ws))?.map(\.name) ?? []
                    throw EngineError.usage("no schedule named '\(name)'" + (known.isEmpty ? "" : "; there are: \(known.joined(separator: ", "))") +
                                            (ws == nil ? " (give --spec or --workspace to see Slurm job schedules too)" : ""))
                }
                print("schedule \(name) removed")
            }
        }
    }

    /// The first line of each occurrence of an sbatch-begin schedule: queue the next one.
    struct Resubmit: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "resubmit", abstract: "Queue the next occurrence of a schedule (its job runs this).",
                                                        shouldDisplay: false)
        @Argument var name: String
        @OptionGroup var where_: WorkspaceOptions

        func run() throws {
            try failing {
                let e = try Scheduler().submitNext(name: name, workspace: try where_.resolve())
                print("next backfill of \(e.spec): job \(e.jobID ?? "-") at \(e.next.map(StatusCommand.time) ?? "-")")
            }
        }
    }
}
