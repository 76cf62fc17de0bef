import Foundation
import POSIXFiles
import Catalog
import EMFormats
import WorkflowSpec

/// A reprocess selection as researchers write it: `key=value` terms, all of which must hold;
/// a value lists alternatives with commas and may use `*` and `?`; quote values with spaces.
///
///     proposal=P2026-001 sample=S01,S02 date=2026-11-01..2026-11-05 instrument="*Helios*"
///     mapping=fei-sem mapping-version=2 output=managed/P1/S1/E1/nexus/img.nxs state=failed run=20261124-…
public struct Selection: Sendable, Equatable {
    public static let keys = ["proposal", "sample", "experiment", "instrument", "date", "mapping", "mapping-version", "output", "item", "run", "state"]
    public var outputs: OutputSelection
    /// Items whose last attempt failed (`state=failed`); converted datasets (`state=converted`, the default).
    public var failed = false
    public var converted = true
    public let text: String

    /// Parses `text`; relative `output=` paths are resolved against `directory`.
    public init(_ text: String, workflow: String?, directory: String) throws(EngineError) {
        self.text = text
        outputs = OutputSelection(workflow: workflow)
        var states: [String] = []
        for term in try Self.terms(text) {
            guard let eq = term.firstIndex(of: "=") else {
                throw .usage("selection term '\(term)' is not key=value; keys: \(Self.keys.joined(separator: ", "))")
            }
            let key = String(term[..<eq]).lowercased().replacingOccurrences(of: "_", with: "-")
            let value = String(term[term.index(after: eq)...])
            let values = value.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
            guard !values.isEmpty else { throw .usage("selection term '\(term)' has no value") }
            switch key {
            case "proposal": outputs.proposal += values
            case "sample": outputs.sample += values
            case "experiment": outputs.experiment += values
            // A plain word matches anywhere in "vendor model" (instrument=Helios).
            case "instrument": outputs.instrument += values.map { $0.contains(where: { "*?[".contains($0) }) ? $0 : "*\($0)*" }
            case "mapping": outputs.mapping += values
            case "mapping-version": outputs.mappingVersion += values
            case "item": outputs.item += values
            case "run": outputs.run += values
            case "output": outputs.output += values.map { Path.resolve($0, against: directory) }
            case "date":
                guard values.count == 1 else { throw .usage("date= takes one day, month or range (2026-11-01..2026-11-05), not a list") }
                let parts = value.components(separatedBy: "..")
                let from = parts[0], to = parts.count > 1 ? parts[1] : parts[0]
                guard parts.count <= 2, from.isEmpty || Self.isDate(from), to.isEmpty || Self.isDate(to), !(from.isEmpty && to.isEmpty) else {
                    throw .usage("date=\(value): use a day, month or year (2026-11-05, 2026-11, 2026) or a range 2026-11-01..2026-11-05 (either end may be left open)")
                }
                outputs.dateFrom = from.isEmpty ? nil : from
                outputs.dateTo = to.isEmpty ? nil : to
            case "state":
                for v in values where !["failed", "converted"].contains(v) {
                    throw .usage("state=\(v): use state=failed (items whose last attempt failed) or state=converted (converted datasets)")
                }
                states += values
            default:
                let near = Self.keys.min { MappingTable.editDistance($0, key) < MappingTable.editDistance($1, key) } ?? ""
                throw .usage("unknown selection key '\(key)'" + (MappingTable.editDistance(near, key) <= 3 ? " (did you mean \(near)?)" : "") +
                             "; keys: \(Self.keys.joined(separator: ", "))")
            }
        }
        if !states.isEmpty { failed = states.contains("failed"); converted = states.contains("converted") }
        if failed {
            // Failed items have no output: only what the catalog's tasks or the inputs know can narrow them.
            let o = outputs
            let outputOnly = [("instrument", o.instrument), ("mapping", o.mapping), ("mapping-version", o.mappingVersion), ("output", o.output)]
                .filter { !$0.1.isEmpty }.map(\.0) + (o.dateFrom != nil || o.dateTo != nil ? ["date"] : [])
            if !outputOnly.isEmpty {
                throw .usage("state=failed selects items that have no converted output, so \(outputOnly.joined(separator: ", ")) cannot narrow them; " +
                             "use proposal, sample, experiment, item or run with it")
            }
        }
    }

    static func isDate(_ s: String) -> Bool {
        s.range(of: #"^\d{4}(-\d{2}(-\d{2})?)?$"#, options: .regularExpression) != nil
    }

    /// Splits on whitespace outside double or single quotes, dropping the quotes.
    static func terms(_ text: String) throws(EngineError) -> [String] {
        var out: [String] = [], cur = "", quote: Character? = nil
        for c in text {
            if let q = quote { if c == q { quote = nil } else { cur.append(c) }; continue }
            if c == "\"" || c == "'" { quote = c; continue }
            if c.isWhitespace { if !cur.isEmpty { out.append(cur); cur = "" }; continue }
            cur.append(c)
        }
        if quote != nil { throw .usage("selection \(text): a quote is not closed") }
        if !cur.isEmpty { out.append(cur) }
        if out.isEmpty { throw .usage("the selection is empty; give terms such as proposal=P2026-001 sample=S01 (keys: \(keys.joined(separator: ", ")))") }
        return out
    }

    /// Whether a scanned item's layout fields pass the proposal/sample/experiment terms (for failed
    /// items, which the catalog's outputs cannot narrow).
    func fieldsMatch(_ fields: [String: String]) -> Bool {
        for (k, patterns) in [("proposal", outputs.proposal), ("sample", outputs.sample), ("experiment", outputs.experiment)] where !patterns.isEmpty {
            guard let v = fields[k], patterns.contains(where: { fnmatch($0, v, 0) == 0 }) else { return false }
        }
        return true
    }
}

public struct ReprocessOptions: Sendable {
    public var launch = LaunchOptions()
    /// List what the selection matches; run nothing.
    public var dryRun = false
    public init() {}
}

/// What `emflow reprocess` selected and made.
public struct ReprocessReport: Codable, Sendable {
    public struct Selected: Codable, Sendable {
        public var item: String
        /// The latest version before this reprocess (nil for a failed item).
        public var output: String?
        public var version: Int?
        public var mapping: String?
    }
    public struct Made: Codable, Sendable {
        public var item: String
        public var output: String
        public var version: Int
        public var predecessor: String?
        public var mapping: String?
        public var mappingVersion: String?
    }
    public var workflow: String
    public var selection: String
    public var selected: [Selected]
    /// Selected items the spec's inputs no longer hold (their data moved or was deleted).
    public var missing: [String]
    public var runID: String?
    public var state: String?
    /// New versions written by this run (local runs, or Slurm with --wait).
    public var made: [Made]
    /// Selected items whose conversion was already done with this mapping and these parameters.
    public var unchanged: Int
    public var run: RunSummary?
    public var submission: SlurmSubmission?
}

/// Re-runs the workflow on a subset chosen from the catalog, typically after a mapping or the spec's
/// `with:` was edited: the convert stage's key changes, so each selected dataset gets a new version
/// (`name.v2.nxs`) beside the old ones, which stay as they are; the new file's `note_predecessor`
/// names (and hashes) the version it supersedes, and the catalog records the lineage.
public final class Reprocess: Sendable {
    public let driver: RunDriver
    public init(driver: RunDriver) { self.driver = driver }

    public func run(_ selection: Selection, _ options: ReprocessOptions) throws(EngineError) -> ReprocessReport {
        let workflow = driver.workflow, catalog = driver.catalog
        var selected: [String: ReprocessReport.Selected] = [:]
        do {
            if selection.converted {
                for o in try catalog.outputs(matching: selection.outputs) {
                    guard let item = o.item else { continue }
                    selected[item] = .init(item: item, output: o.uri, version: o.version, mapping: o.mapping)
                }
            }
            if selection.failed {
                for item in try catalog.failedItems(workflow: workflow.name, items: selection.outputs.item, runs: selection.outputs.run)
                where selected[item] == nil {
                    selected[item] = .init(item: item, output: nil, version: nil, mapping: nil)
                }
            }
        } catch { throw .catalog(error) }
        var report = ReprocessReport(workflow: workflow.name, selection: selection.text, selected: [], missing: [], runID: nil, state: nil,
                                     made: [], unchanged: 0, run: nil, submission: nil)
        if selected.isEmpty {
            let scope: (datasets: Int, failed: Int)
            do { scope = try catalog.selectionScope(workflow: workflow.name) } catch { throw .catalog(error) }
            throw .usage("the selection \"\(selection.text)\" matches nothing in the catalog of workflow '\(workflow.name)' " +
                         "(it has \(scope.datasets) converted dataset(s) and \(scope.failed) failed item(s)); " +
                         "`emflow catalog ls --spec \(driver.specPath) --select 'item=*'` lists them with their instrument, acquisition time and mapping")
        }
        report.selected = selected.values.sorted { $0.item < $1.item }
        if options.dryRun { return report }

        // The selected items as the inputs hold them now (a changed file is converted as it is now).
        let found = Captured<Set<String>>([])
        let wanted = selected
        let source: ItemSource = { [workflow] () throws(EngineError) -> [Item] in
            var items: [Item] = []
            _ = try InputScanner.stream(workflow, skip: [workflow.workspace]) { page throws(EngineError) in
                for i in page {
                    guard let s = wanted[i.id] else { continue }
                    // Failed items were chosen by name only: the proposal/sample/experiment terms apply here.
                    if s.output == nil && !selection.fieldsMatch(i.fields) { continue }
                    items.append(i)
                }
            }
            found.set(Set(items.map(\.id)))
            return items
        }
        let launched = try driver.launch(source, options.launch)
        report.runID = launched.runID
        report.state = launched.state
        report.run = launched.summary
        report.submission = launched.submission
        let ids = found.get()
        report.missing = report.selected.filter { $0.output != nil && !ids.contains($0.item) }.map(\.item)
        if let runID = launched.runID {
            let outs: [OutputRecord]
            do { outs = try catalog.outputs(runID: runID).filter { $0.dataset != nil } } catch { throw .catalog(error) }
            report.made = outs.compactMap { o in
                guard let item = o.item, let v = o.version, wanted[item]?.version != v else { return nil }
                return .init(item: item, output: o.uri, version: v, predecessor: o.predecessor, mapping: o.mapping, mappingVersion: o.mappingVersion)
            }.sorted { $0.item < $1.item }
            let convertStages = Set(workflow.stages.filter { $0.uses == "convert" }.map(\.name))
            report.unchanged = launched.summary?.stages.filter { convertStages.contains($0.stage) }.reduce(0) { $0 + $1.skipped } ?? 0
        }
        return report
    }
}
