import ArgumentParser
import Foundation
import Engine
import Catalog
import WorkflowSpec
import POSIXFiles

struct ReprocessCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "reprocess",
        abstract: "Re-run a workflow on a subset chosen from the catalog: new versions of its outputs, the old ones kept.",
        discussion: """
            Edit a mapping (or the spec's with:), then choose what to redo from the catalog:
              emflow reprocess SPEC --select "proposal=P2026-001 sample=S01,S02"
              emflow reprocess SPEC --select "instrument=Helios date=2026-11-01..2026-11-05 mapping=fei-sem"
              emflow reprocess SPEC --select "state=failed"
            Selection keys (all terms must hold; commas list alternatives; * and ? match; quote values with
            spaces): \(Selection.keys.joined(separator: ", ")). date= takes a day, month, year or a range
            A..B; mapping-version= a mapping's declared "version" or a prefix of its SHA-256; output= any
            version of an output file; state=failed items whose last attempt failed.
            Each selected dataset whose conversion key changed gets the next version beside the old ones
            (img.nxs → img.v2.nxs); the new file's note_predecessor names and hashes the one it supersedes.
            `emflow diff OLD NEW` lists what changed; `emflow catalog versions FILE` lists the versions.
            Exit codes: 0 done; 1 items failed; 2 bad selection or one that matches nothing.
            """)

    @Argument(help: "The workflow spec (YAML).") var spec: String
    @Option(help: "What to reprocess: key=value terms (see above).") var select: String
    @Flag(help: "List what the selection matches; run nothing.") var dryRun = false
    @Option(help: "local or slurm (default: the spec's executor.kind).") var executor: String?
    @Flag(help: "Slurm: follow the run to its end.") var wait = false
    @Option(name: .shortAndLong, help: "Local executor: tasks at a time.") var jobs: Int?
    @Flag(help: "Print the report as JSON.") var json = false
    @Flag(help: "No progress display.") var quiet = false

    func validate() throws {
        if let executor, ExecutorSpec.Kind(rawValue: executor) == nil { throw ValidationError("--executor is local or slurm") }
    }

    func run() throws {
        installStopHandlers()
        try failing {
            let driver = try RunDriver(specPath: spec)
            let selection = try Selection(select, workflow: driver.workflow.name, directory: currentDirectory())
            var o = ReprocessOptions()
            o.dryRun = dryRun
            o.launch = .cli(executor: executor, wait: wait, jobs: jobs, pollInterval: nil, quiet: quiet, json: json)
            let r = try Reprocess(driver: driver).run(selection, o)
            if json { try printJSON(r) } else { printReport(r) }
            if r.state == "failed" || (r.run?.failures.isEmpty == false) { throw ExitCode(Exit.itemsFailed) }
        }
    }

    func printReport(_ r: ReprocessReport) {
        print("selection \"\(r.selection)\": \(r.selected.count) item(s) of workflow \(r.workflow)")
        if dryRun {
            for s in r.selected {
                print("  \(s.item)" + (s.output.map { " — \($0) (version \(s.version ?? 1)\(s.mapping.map { ", mapping \($0)" } ?? ""))" } ?? " — failed before"))
            }
            return
        }
        for m in r.made {
            print("  \(m.output): version \(m.version)" + (m.predecessor.map { ", supersedes \(($0 as NSString).lastPathComponent)" } ?? "") +
                  (m.mapping.map { " (mapping \($0)\(m.mappingVersion.map { " version \($0)" } ?? ""))" } ?? ""))
        }
        if let s = r.run { for f in s.failures.prefix(20) { print("  FAILED \(f.stage) \(f.item): \(f.error)") } }
        if r.unchanged > 0 {
            print("  \(r.unchanged) item(s) unchanged: their latest version was made with this mapping and these parameters (edit them to make a new version)")
        }
        for m in r.missing.prefix(20) { print("  not in the inputs any more: \(m)") }
        if let id = r.runID, r.state == "submitted" {
            print("run \(id) submitted to Slurm: `emflow status \(id) --spec \(spec)` follows it; `emflow catalog versions FILE` lists the new versions once it ends")
        } else if let id = r.runID {
            print("run \(id) \(r.state ?? ""): \(r.made.count) new version(s)")
        } else if let a = r.submission?.attachedTo {
            print("run \(a) of this workflow is still in Slurm; nothing new submitted (try again when it ends)")
        }
    }
}
