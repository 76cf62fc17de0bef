import ArgumentParser
import Foundation
import Engine
import POSIXFiles

struct ReportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "report",
        abstract: "A run's report: spec, per-stage counts and durations, timeline, throughput, failures, outputs.",
        discussion: """
              emflow report RUN --spec SPEC --html run.html   one self-contained page (no network needed to view it)
              emflow report RUN --spec SPEC --json            the same content for scripts
            RUN is a run id or its prefix (default: the latest run); emflow status --all lists them.
            """)

    @Argument(help: "A run id or its prefix (default: the latest run).") var runID: String?
    @OptionGroup var where_: WorkspaceOptions
    @Option(help: "Write the report as one HTML file here.") var html: String?
    @Flag(help: "Print the report as JSON.") var json = false

    func run() throws {
        try failing {
            let ws = try where_.resolve()
            let catalog = try where_.catalog()
            let record = try findRun(runID, in: catalog)
            let report = try RunReport.build(driverWorkspace: ws, catalog: catalog, run: record)
            if let html {
                let path = Path.resolve(html, against: currentDirectory())
                do throws(POSIXFileError) { try AtomicFile.write(Array(report.html().utf8), to: path) } catch { throw EngineError.io(error) }
                if !json { print("wrote \(path): run \(record.id), \(report.tasks.count) task(s), \(report.failures.count) failure(s), \(report.outputs.count) output(s)") }
            }
            if json { try printJSON(report) }
            if html == nil && !json {
                print("run \(record.id) \(record.state): \(record.items) item(s) in \(String(format: "%.1f", report.seconds)) s")
                for s in report.stages {
                    print("  \(s.stage): " + s.counts.sorted { $0.key < $1.key }.map { "\($0.value) \($0.key)" }.joined(separator: ", ") +
                          String(format: "; wall %.1f s", s.wallSeconds))
                }
                print("use --html FILE for the full page or --json")
            }
        }
    }
}
