import ArgumentParser
import Foundation
import Engine
import Catalog
import Checksums
import POSIXFiles
import WorkflowSpec

/// Where the catalog is: --workspace, else the spec's workspace, else $EMFLOW_WORKSPACE.
struct WorkspaceOptions: ParsableArguments {
    @Option(help: "The workspace directory (holds catalog.sqlite and runs/).") var workspace: String?
    @Option(help: "A workflow spec whose workspace to use.") var spec: String?

    func resolve() throws -> String {
        if let workspace { return workspace }
        if let spec {
            do { return try StageRegistry.parser.load(path: spec).workspace } catch { throw EngineError.spec(error) }
        }
        if let env = environment("EMFLOW_WORKSPACE") { return env }
        throw EngineError.usage("no workspace given: use --spec SPEC, --workspace DIR or set EMFLOW_WORKSPACE")
    }

    func catalog() throws -> Catalog {
        let ws = try resolve()
        do { return try Catalog.openExisting(path: Path.join(ws, "catalog.sqlite")) } catch { throw EngineError.catalog(error) }
    }
}

struct StatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status", abstract: "Show runs, or one run's per-stage counts and failures.")

    @Argument(help: "A run id (default: the latest run).") var runID: String?
    @OptionGroup var where_: WorkspaceOptions
    @Flag(help: "List all runs instead of one run's detail.") var all = false
    @Flag(help: "List the failed tasks with their errors.") var failed = false
    @Flag(help: "Slurm runs: follow the run until Slurm has nothing left of it, then finish it.") var wait = false
    @Flag(help: "Print as JSON.") var json = false

    struct RunDetail: Encodable {
        var run: RunRecord
        var stages: [Catalog.StageCounts]
        var failures: [Failure]?
        /// With --spec: the whole archive of the workflow (backfill), when it has one.
        var archive: ArchiveTotals?
        struct Failure: Encodable { var stage: String; var item: String; var state: String; var tries: Int; var error: String? }
    }

    func run() throws {
        try failing {
            let catalog = try where_.catalog()
            let runs = try catalog.runs()
            if all {
                if json { try printJSON(runs); return }
                for r in runs {
                    print("\(r.id)  \(r.state.padding(toLength: 11, withPad: " ", startingAt: 0))  \(r.workflow)  \(r.items) item(s)  started \(Self.time(r.startedAt))")
                }
                if runs.isEmpty { print("no runs yet") }
                return
            }
            // With --spec: where the workflow's whole archive stands (backfill), before the latest run.
            var archive: ArchiveTotals? = nil
            if let spec = where_.spec, runID == nil { archive = try Self.archive(spec: spec, catalog: catalog) }
            if runs.isEmpty, let archive {
                if json { try printJSON(["archive": archive]) } else { print(ArchiveView.summary(archive)) }
                return
            }
            var record = try findRun(runID, in: catalog)
            var inSlurm = 0
            if record.executor == "slurm" && (record.state == "running" || wait) {
                // Collect what the workers wrote (and finish the run once Slurm has nothing left of it).
                do {
                    inSlurm = try SlurmExecutor.forRun(workspace: try where_.resolve(), runID: record.id)
                        .refresh(runID: record.id, wait: wait, progress: !json) { line in if !json { printError(line) } }
                    record = try catalog.run(id: record.id) ?? record
                } catch let e as EngineError {
                    if case .usage(let m) = e, m.contains("another emflow run") { printError("note: \(m); showing the catalog as it is") } else { throw e }
                }
            }
            let stages = try catalog.stageCounts(runID: record.id)
            var failures: [RunDetail.Failure]? = nil
            if failed || !json {
                let f = try catalog.tasks(runID: record.id).filter { $0.state == "failed" || $0.state == "blocked" }
                failures = f.map { .init(stage: $0.stage, item: $0.item, state: $0.state, tries: $0.tries, error: $0.error) }
            }
            if archive != nil, let spec = where_.spec {
                // The refresh above may have ended a Slurm batch: settle it before showing the archive.
                archive = try Self.archive(spec: spec, catalog: catalog)
            }
            if json { try printJSON(RunDetail(run: record, stages: stages, failures: failed ? failures : nil, archive: archive)); return }
            if let archive { print(ArchiveView.summary(archive)) }
            print("run \(record.id): \(record.workflow), \(record.state), \(record.items) item(s), started \(Self.time(record.startedAt))" +
                  (record.finishedAt.map { ", took \(ProgressReporter.duration($0 - record.startedAt))" } ?? ""))
            if inSlurm > 0 { print("  in Slurm: \(inSlurm) array task(s) queued or running (emflow status \(record.id) --wait follows them)") }
            for s in stages {
                let order = ["succeeded", "skipped", "failed", "blocked"]
                let parts = order.compactMap { k in s.counts[k].map { "\($0) \(k == "skipped" ? "already done" : k)" } }
                print("  \(s.stage): " + parts.joined(separator: ", ") + (s.bytes > 0 ? ", \(formatBytes(s.bytes))" : ""))
            }
            let shown = failed ? (failures ?? []) : Array((failures ?? []).prefix(10))
            for f in shown { print("  \(f.state.uppercased()) \(f.stage) \(f.item) (tries \(f.tries)): \(f.error ?? "")") }
            if !failed, let n = failures?.count, n > 10 { print("  … \(n - 10) more (--failed lists all)") }
        }
    }

    /// The archive of the spec's workflow with ended batches settled; nil when it was never backfilled.
    static func archive(spec: String, catalog: Catalog) throws -> ArchiveTotals? {
        let wf: Workflow
        do { wf = try StageRegistry.parser.load(path: spec) } catch { throw EngineError.spec(error) }
        _ = try Backfill.settleEnded(workflow: wf, catalog: catalog)
        let t = try catalog.archiveTotals(workflow: wf.name)
        return t.total.items > 0 ? t : nil
    }

    static func time(_ t: Double) -> String {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime]
        f.timeZone = TimeZone.current
        return f.string(from: Date(timeIntervalSince1970: t))
    }
}

struct CatalogCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "catalog", abstract: "Query the catalog of managed files and outputs.",
        subcommands: [List.self, Show.self, Find.self, Versions.self])

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "ls", abstract: "List managed files (objects) and outputs.")
        @OptionGroup var where_: WorkspaceOptions
        @Option(help: "Only paths starting with this.") var prefix: String?
        @Option(help: "Only this proposal.") var proposal: String?
        @Flag(help: "List outputs (README, SHA256SUMS, converted files) instead of managed files.") var outputs = false
        @Option(help: "Converted outputs a selection matches (as emflow reprocess --select reads it), e.g. \"mapping=fei-sem mapping-version=2\".")
        var select: String?
        @Flag(help: "With --select: every version, not only the latest of each dataset.") var allVersions = false
        @Option(help: "At most this many rows.") var limit: Int?
        @Flag(help: "Print as JSON.") var json = false

        func run() throws {
            try failing {
                let c = try where_.catalog()
                if let select {
                    var s = try Selection(select, workflow: nil, directory: currentDirectory())
                    s.outputs.allVersions = allVersions
                    if s.failed { throw EngineError.usage("state=failed items have no outputs to list; emflow reprocess --dry-run --select \"state=failed\" lists them") }
                    var rows: [OutputRecord]
                    do throws(CatalogError) { rows = try c.outputs(matching: s.outputs) } catch { throw EngineError.catalog(error) }
                    if let prefix { rows = rows.filter { $0.uri.hasPrefix(prefix) } }
                    if let limit { rows = Array(rows.prefix(limit)) }
                    if json { try printJSON(rows); return }
                    for o in rows { print(Versions.line(o)) }
                    if rows.isEmpty { printError("no converted output matches \"\(select)\"") }
                    return
                }
                if outputs {
                    var rows = try c.outputs(prefix: prefix)
                    if let limit { rows = Array(rows.prefix(limit)) }
                    if json { try printJSON(rows); return }
                    for o in rows { print("\(o.sha256)  \(String(o.size).padding(toLength: 12, withPad: " ", startingAt: 0)) \(o.stage)  \(o.uri)") }
                    return
                }
                let rows = try c.objects(prefix: prefix, proposal: proposal, limit: limit)
                if json { try printJSON(rows); return }
                for o in rows {
                    print("\(o.sha256 ?? String(repeating: "-", count: 64))  \(String(o.size).padding(toLength: 12, withPad: " ", startingAt: 0)) \(o.uri)")
                }
            }
        }
    }

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "show", abstract: "Everything the catalog knows about one file.")
        @OptionGroup var where_: WorkspaceOptions
        @Argument(help: "The file's path (as listed by `catalog ls`).") var uri: String
        @Flag(help: "Print as JSON.") var json = false

        struct Shown: Encodable { var object: ObjectRecord?; var output: OutputRecord? }

        func run() throws {
            try failing {
                let c = try where_.catalog()
                let path = uri.hasPrefix("/") ? uri : Path.resolve(uri, against: currentDirectory())
                let o = try c.object(uri: path), out = try c.output(uri: path)
                guard o != nil || out != nil else { throw EngineError.usage("\(path) is not in the catalog; list what is with: emflow catalog ls") }
                if json { try printJSON(Shown(object: o, output: out)); return }
                if let o {
                    print("managed file \(o.uri)")
                    print("  size      \(o.size)")
                    print("  sha256    \(o.sha256 ?? "not computed")")
                    for (k, v) in [("proposal", o.proposal), ("sample", o.sample), ("experiment", o.experiment), ("file", o.file), ("source", o.sourceURI)] {
                        if let v { print("  \(k.padding(toLength: 9, withPad: " ", startingAt: 0)) \(v)") }
                    }
                    print("  run       \(o.runID)")
                }
                if let out {
                    print("output \(out.uri)")
                    print("  size      \(out.size)\n  sha256    \(out.sha256)\n  stage     \(out.stage) (\(out.kind))\n  run       \(out.runID)\n  task      \(out.taskKey)")
                }
            }
        }
    }

    struct Versions: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "versions", abstract: "Every version of a converted output (any version's path), oldest first; the last is the latest.")
        @OptionGroup var where_: WorkspaceOptions
        @Argument(help: "A converted file (any of its versions).") var file: String
        @Flag(help: "Print as JSON.") var json = false

        static func line(_ o: OutputRecord) -> String {
            "v\(o.version ?? 1)  \(o.uri)  \(o.mapping.map { "mapping \($0)\(o.mappingVersion.map { " version \($0)" } ?? "") (\(o.mappingSHA256.map { String($0.prefix(12)) } ?? "-"))" } ?? "no mapping")" +
            "  \(o.instrument ?? "")  \(o.acquiredAt ?? "")  sha256 \(o.sha256.prefix(12))  run \(o.runID)"
        }

        func run() throws {
            try failing {
                let path = file.hasPrefix("/") ? file : Path.resolve(file, against: currentDirectory())
                let rows: [OutputRecord]
                do { rows = try where_.catalog().versions(of: path) } catch let e as CatalogError { throw EngineError.catalog(e) }
                guard !rows.isEmpty else { throw EngineError.usage("\(path) is not a converted output in the catalog; emflow catalog ls --outputs lists them") }
                if json { try printJSON(rows); return }
                for o in rows { print(Self.line(o) + (o.predecessor.map { "  supersedes \(($0 as NSString).lastPathComponent)" } ?? "")) }
                print("latest: \(rows.last!.uri)")
            }
        }
    }

    struct Find: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "find", abstract: "Find files by content.")
        @OptionGroup var where_: WorkspaceOptions
        @Option(help: "A SHA-256 (64 hex digits).") var sha256: String
        @Flag(help: "Print as JSON.") var json = false

        func validate() throws {
            guard sha256.count == 64, sha256.allSatisfy(\.isHexDigit) else { throw ValidationError("--sha256 takes 64 hex digits") }
        }

        struct Found: Encodable { var objects: [ObjectRecord]; var outputs: [OutputRecord] }

        func run() throws {
            try failing {
                let r = try where_.catalog().find(sha256: sha256)
                if json { try printJSON(Found(objects: r.objects, outputs: r.outputs)); return }
                for o in r.objects { print("managed  \(o.uri)") }
                for o in r.outputs { print("output   \(o.uri)") }
                if r.objects.isEmpty && r.outputs.isEmpty { printError("no file with sha256 \(sha256) in the catalog"); throw ExitCode(Exit.itemsFailed) }
            }
        }
    }
}

struct ChecksumCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "checksum", abstract: "SHA-256 of files, printed as sha256sum does (no catalog involved).")
    @Argument(help: "Files to hash.") var files: [String]
    @Option(name: .shortAndLong, help: "Files hashed at a time (default: one per core).") var jobs: Int?

    func run() throws {
        let results = ResultsBox(count: files.count)
        let files = self.files
        WorkerPool.run(Array(files.indices), jobs: jobs ?? processorCount) { i in
            results.set(i, Result { () throws(POSIXFileError) in try FileHasher.sha256(path: files[i]).sha256 })
        }
        var failed = false
        for (i, r) in results.all().enumerated() {
            switch r {
            case .success(let h): print("\(h)  \(files[i])")
            case .failure(let e): printError("emflow checksum: \(e)"); failed = true
            case nil: failed = true
            }
        }
        if failed { throw ExitCode(Exit.itemsFailed) }
    }
}

import Synchronization
final class ResultsBox: Sendable {
    let values: Mutex<[Result<String, POSIXFileError>?]>
    init(count: Int) { values = Mutex(Array(repeating: nil, count: count)) }
    func set(_ i: Int, _ r: Result<String, POSIXFileError>) { values.withLock { $0[i] = r } }
    func all() -> [Result<String, POSIXFileError>?] { values.withLock { $0 } }
}
