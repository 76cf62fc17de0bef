import Foundation
import GRDB

/// Which converted outputs a query means: each list holds alternatives (globs, `*` and `?`), lists
/// combine with AND; an empty list does not restrict. By default only the latest version of each
/// dataset counts (what a reprocess replaces); `allVersions` lists every version.
public struct OutputSelection: Sendable, Equatable {
    public var workflow: String?
    public var proposal: [String] = []
    public var sample: [String] = []
    public var experiment: [String] = []
    public var instrument: [String] = []
    public var mapping: [String] = []
    /// A mapping's declared `version`, or a prefix of its content's SHA-256.
    public var mappingVersion: [String] = []
    /// Output paths: any version of a dataset selects the dataset.
    public var output: [String] = []
    public var item: [String] = []
    public var run: [String] = []
    /// Acquisition dates, inclusive; a prefix (`2026`, `2026-11`) covers the whole year or month.
    public var dateFrom: String?
    public var dateTo: String?
    public var allVersions = false
    public init(workflow: String? = nil) { self.workflow = workflow }
}

extension Catalog {
    static func registerLineageMigrations(_ m: inout DatabaseMigrator) {
        m.registerMigration("v3-lineage") { db in
            for column in ["item TEXT", "dataset TEXT", "version INTEGER", "predecessor TEXT", "mapping TEXT", "mapping_version TEXT",
                           "mapping_sha256 TEXT", "instrument TEXT", "acquired_at TEXT", "proposal TEXT", "sample TEXT", "experiment TEXT"] {
                try db.execute(sql: "ALTER TABLE outputs ADD COLUMN \(column)")
            }
            try db.execute(sql: """
                CREATE INDEX outputs_by_dataset ON outputs(dataset, version);
                CREATE INDEX outputs_by_mapping ON outputs(mapping, mapping_version);
                CREATE INDEX outputs_by_item ON outputs(item);
                """)
        }
    }

    /// Every version of the dataset `uri` belongs to (`uri` may be any of its versions), oldest first.
    public func versions(of uri: String) throws(CatalogError) -> [OutputRecord] {
        try read { db in
            guard let dataset = try String.fetchOne(db, sql: "SELECT dataset FROM outputs WHERE uri = ? OR dataset = ? LIMIT 1",
                                                    arguments: [uri, uri]) else { return [] }
            return try OutputRecord.fetchAll(db, sql: "SELECT * FROM outputs WHERE dataset = ? ORDER BY version", arguments: [dataset])
        }
    }

    /// Converted outputs matching `s` (latest versions unless `s.allVersions`), by dataset and version.
    public func outputs(matching s: OutputSelection) throws(CatalogError) -> [OutputRecord] {
        var sql = "SELECT o.* FROM outputs o"
        var clauses = ["o.dataset IS NOT NULL"]
        var args: [(any DatabaseValueConvertible)?] = []
        if let w = s.workflow {
            sql += " JOIN runs r ON r.id = o.run_id"
            clauses.append("r.workflow = ?"); args.append(w)
        }
        if !s.allVersions {
            clauses.append("o.version = (SELECT MAX(o2.version) FROM outputs o2 WHERE o2.dataset = o.dataset)")
        }
        func any(_ columns: [String], _ patterns: [String]) {
            guard !patterns.isEmpty else { return }
            var alts: [String] = []
            for p in patterns { for c in columns { alts.append("o.\(c) GLOB ?"); args.append(p) } }
            clauses.append("(" + alts.joined(separator: " OR ") + ")")
        }
        any(["proposal"], s.proposal); any(["sample"], s.sample); any(["experiment"], s.experiment)
        any(["instrument"], s.instrument); any(["mapping"], s.mapping); any(["item"], s.item); any(["run_id"], s.run)
        if !s.output.isEmpty {
            // Any version's path names its dataset.
            var alts: [String] = []
            for p in s.output {
                alts.append("o.dataset GLOB ? OR o.dataset IN (SELECT x.dataset FROM outputs x WHERE x.uri GLOB ?)"); args.append(p); args.append(p)
            }
            clauses.append("(" + alts.joined(separator: " OR ") + ")")
        }
        if !s.mappingVersion.isEmpty {
            var alts: [String] = []
            for v in s.mappingVersion {
                alts.append("o.mapping_version GLOB ? OR o.mapping_sha256 GLOB ?"); args.append(v); args.append(v.lowercased() + "*")
            }
            clauses.append("(" + alts.joined(separator: " OR ") + ")")
        }
        if let from = s.dateFrom { clauses.append("substr(o.acquired_at, 1, ?) >= ?"); args.append(from.count); args.append(from) }
        if let to = s.dateTo { clauses.append("substr(o.acquired_at, 1, ?) <= ?"); args.append(to.count); args.append(to) }
        sql += " WHERE " + clauses.joined(separator: " AND ") + " ORDER BY o.dataset, o.version"
        let arguments = StatementArguments(args.map { $0?.databaseValue ?? .null })
        return try read { try OutputRecord.fetchAll($0, sql: sql, arguments: arguments) }
    }

    /// Items of `workflow` whose latest task of some stage failed (or was blocked by a failure) and
    /// that no later task of that stage finished; `items` and `runs` narrow them (globs).
    public func failedItems(workflow: String, items: [String] = [], runs: [String] = []) throws(CatalogError) -> [String] {
        var sql = """
            SELECT DISTINCT t.item FROM tasks t JOIN runs r ON r.id = t.run_id
            WHERE r.workflow = ? AND t.state IN ('failed', 'blocked')
            AND NOT EXISTS (SELECT 1 FROM tasks u WHERE u.item = t.item AND u.stage = t.stage AND u.state IN ('succeeded', 'skipped')
                            AND COALESCE(u.finished_at, 0) >= COALESCE(t.finished_at, 0))
            """
        var args: [String] = [workflow]
        for (column, patterns) in [("t.item", items), ("t.run_id", runs)] where !patterns.isEmpty {
            sql += " AND (" + patterns.map { _ in "\(column) GLOB ?" }.joined(separator: " OR ") + ")"
            args += patterns
        }
        sql += " ORDER BY t.item"
        return try read { try String.fetchAll($0, sql: sql, arguments: StatementArguments(args)) }
    }

    /// How many converted datasets and failed items the workflow has: what a selection that matched
    /// nothing is told it could have matched.
    public func selectionScope(workflow: String) throws(CatalogError) -> (datasets: Int, failed: Int) {
        let datasets = try read { db in
            try Int.fetchOne(db, sql: """
                SELECT COUNT(DISTINCT o.dataset) FROM outputs o JOIN runs r ON r.id = o.run_id WHERE r.workflow = ? AND o.dataset IS NOT NULL
                """, arguments: [workflow]) ?? 0
        }
        return (datasets, try failedItems(workflow: workflow).count)
    }
}
