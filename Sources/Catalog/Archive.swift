import Foundation
import GRDB

/// One file or object of an archive as a backfill listing saw it.
public struct ArchiveEntry: Sendable, Equatable {
    public var item: String
    public var uri: String
    public var size: Int64
    public var mtimeNanoseconds: Int64?
    public var etag: String?
    /// proposal, sample, experiment, file, from the input's layout.
    public var fields: [String: String]
    /// Why the path does not fit the layout, when it does not (the item fails with this, by name).
    public var problem: String?

    public init(item: String, uri: String, size: Int64, mtimeNanoseconds: Int64?, etag: String?, fields: [String: String], problem: String?) {
        self.item = item; self.uri = uri; self.size = size; self.mtimeNanoseconds = mtimeNanoseconds; self.etag = etag
        self.fields = fields; self.problem = problem
    }

    /// Same content as far as a listing can tell: an object's size and ETag, a file's size and mtime.
    func sameIdentity(size: Int64, mtime: Int64?, etag: String?) -> Bool {
        if self.etag != nil || etag != nil { return self.size == size && self.etag == etag }
        return self.size == size && mtimeNanoseconds == mtime
    }
}

/// The states of an archive item: `pending` (new, changed, or its batch never ran), `running` (in the
/// batch of `run_id`), `done` (every per-item stage succeeded or was done before), `failed`.
public enum ArchiveState: String, Codable, Sendable, CaseIterable { case pending, running, done, failed }

public struct ArchiveItem: Sendable, Equatable {
    public var entry: ArchiveEntry
    public var state: ArchiveState
    public var runID: String?
    public var error: String?
}

public struct ArchiveRegistration: Codable, Sendable, Equatable {
    public var listed = 0, new = 0, changed = 0, unchanged = 0
    public init() {}
    public mutating func add(_ o: ArchiveRegistration) {
        listed += o.listed; new += o.new; changed += o.changed; unchanged += o.unchanged
    }
}

/// Items and bytes per state of one workflow's archive, with what the finished batches achieved.
public struct ArchiveTotals: Codable, Sendable, Equatable {
    public struct Count: Codable, Sendable, Equatable { public var items = 0; public var bytes: Int64 = 0; public init(items: Int = 0, bytes: Int64 = 0) { self.items = items; self.bytes = bytes } }
    public var workflow: String
    public var states: [String: Count]
    public var total: Count
    /// Batches (runs) that finished, and the wall time they took: the rate the ETA uses.
    public var batches: Int
    public var batchSeconds: Double
    public var doneInBatches: Count
    public var lastListing: ArchivePass?

    public static func empty(workflow: String) -> ArchiveTotals {
        ArchiveTotals(workflow: workflow, states: [:], total: .init(), batches: 0, batchSeconds: 0, doneInBatches: .init(), lastListing: nil)
    }

    /// Bytes a second over the finished batches; nil before the first.
    public var bytesPerSecond: Double? { batchSeconds > 0 && doneInBatches.bytes > 0 ? Double(doneInBatches.bytes) / batchSeconds : nil }
    public var itemsPerSecond: Double? { batchSeconds > 0 && doneInBatches.items > 0 ? Double(doneInBatches.items) / batchSeconds : nil }

    /// Seconds of batch time left for what is pending (and running), at the rate so far.
    public var etaSeconds: Double? {
        let left = (states["pending"] ?? Count()).items + (states["running"] ?? Count()).items
        let leftBytes = (states["pending"] ?? Count()).bytes + (states["running"] ?? Count()).bytes
        if left == 0 { return 0 }
        if let b = bytesPerSecond, leftBytes > 0 { return Double(leftBytes) / b }
        return itemsPerSecond.map { Double(left) / $0 }
    }
}

/// One listing pass of a backfill.
public struct ArchivePass: Codable, Sendable, Equatable {
    public var startedAt: Double
    public var finishedAt: Double
    public var registration: ArchiveRegistration
    public var problems: Int
    public init(startedAt: Double, finishedAt: Double, registration: ArchiveRegistration, problems: Int) {
        self.startedAt = startedAt; self.finishedAt = finishedAt; self.registration = registration; self.problems = problems
    }
}

extension Catalog {
    static func registerArchiveMigrations(_ m: inout DatabaseMigrator) {
        m.registerMigration("v2-archive") { db in
            try db.execute(sql: """
                CREATE TABLE archive (
                    workflow TEXT NOT NULL, item TEXT NOT NULL, uri TEXT NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER,
                    etag TEXT, fields TEXT, problem TEXT, state TEXT NOT NULL, run_id TEXT, error TEXT,
                    listed_at REAL NOT NULL, updated_at REAL NOT NULL, PRIMARY KEY (workflow, item)) WITHOUT ROWID;
                CREATE INDEX archive_by_state ON archive(workflow, state, item);
                CREATE INDEX archive_by_run ON archive(run_id, state);
                CREATE TABLE archive_passes (
                    workflow TEXT NOT NULL, started_at REAL NOT NULL, finished_at REAL NOT NULL, listed INTEGER NOT NULL,
                    new INTEGER NOT NULL, changed INTEGER NOT NULL, unchanged INTEGER NOT NULL, problems INTEGER NOT NULL);
                CREATE INDEX tasks_by_run_item ON tasks(run_id, item);
                CREATE INDEX tasks_by_stage_item ON tasks(stage, item, state);
                """)
        }
    }

    /// Registers one page of a listing in one transaction: new items become pending, items whose
    /// identity changed become pending again (unless their batch is running), the rest is untouched.
    public func register(workflow: String, entries: [ArchiveEntry], at time: Double) throws(CatalogError) -> ArchiveRegistration {
        try write { db in
            var r = ArchiveRegistration()
            let lookup = try db.makeStatement(sql: "SELECT size, mtime_ns, etag, state FROM archive WHERE workflow = ? AND item = ?")
            let insert = try db.makeStatement(sql: """
                INSERT INTO archive (workflow, item, uri, size, mtime_ns, etag, fields, problem, state, listed_at, updated_at)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?)
                """)
            let update = try db.makeStatement(sql: """
                UPDATE archive SET uri = ?, size = ?, mtime_ns = ?, etag = ?, fields = ?, problem = ?, state = 'pending',
                       run_id = NULL, error = NULL, listed_at = ?, updated_at = ? WHERE workflow = ? AND item = ?
                """)
            for e in entries {
                r.listed += 1
                let fields = Self.encodeFields(e.fields)
                if let row = try Row.fetchOne(lookup, arguments: [workflow, e.item]) {
                    let state: String = row["state"]
                    if e.sameIdentity(size: row["size"], mtime: row["mtime_ns"], etag: row["etag"]) || state == ArchiveState.running.rawValue {
                        r.unchanged += 1
                        continue
                    }
                    try update.execute(arguments: [e.uri, e.size, e.mtimeNanoseconds, e.etag, fields, e.problem, time, time, workflow, e.item])
                    r.changed += 1
                } else {
                    try insert.execute(arguments: [workflow, e.item, e.uri, e.size, e.mtimeNanoseconds, e.etag, fields, e.problem, time, time])
                    r.new += 1
                }
            }
            return r
        }
    }

    public func record(pass: ArchivePass, workflow: String) throws(CatalogError) {
        try write { db in
            try db.execute(sql: """
                INSERT INTO archive_passes (workflow, started_at, finished_at, listed, new, changed, unchanged, problems)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                """, arguments: [workflow, pass.startedAt, pass.finishedAt, pass.registration.listed, pass.registration.new,
                                 pass.registration.changed, pass.registration.unchanged, pass.problems])
        }
    }

    /// The next batch: pending items (and failed ones when asked) in item order, at most `maxItems`
    /// and `maxBytes` (a first item larger than `maxBytes` still goes, alone, or it would never run).
    /// Read from a cursor, so only the batch is ever in memory.
    public func nextBatch(workflow: String, maxItems: Int?, maxBytes: Int64?, includeFailed: Bool) throws(CatalogError) -> [ArchiveEntry] {
        try read { db in
            let states = includeFailed ? "('pending', 'failed')" : "('pending')"
            let rows = try Row.fetchCursor(db, sql: """
                SELECT item, uri, size, mtime_ns, etag, fields, problem FROM archive
                WHERE workflow = ? AND state IN \(states) ORDER BY item
                """, arguments: [workflow])
            var out: [ArchiveEntry] = []
            var bytes: Int64 = 0
            while let r = try rows.next() {
                if let maxItems, out.count >= maxItems { break }
                let size: Int64 = r["size"]
                if let maxBytes, !out.isEmpty, bytes + size > maxBytes { break }
                bytes += size
                out.append(Self.entry(r))
            }
            return out
        }
    }

    public func markRunning(workflow: String, items: [String], runID: String, at time: Double) throws(CatalogError) {
        try write { db in
            let st = try db.makeStatement(sql: "UPDATE archive SET state = 'running', run_id = ?, error = NULL, updated_at = ? WHERE workflow = ? AND item = ?")
            for i in items { try st.execute(arguments: [runID, time, workflow, i]) }
        }
    }

    /// Runs that hold running archive items of this workflow.
    public func archiveRuns(workflow: String) throws(CatalogError) -> [String] {
        try read { try String.fetchAll($0, sql: "SELECT DISTINCT run_id FROM archive WHERE workflow = ? AND state = 'running' AND run_id IS NOT NULL", arguments: [workflow]) }
    }

    /// Settles the running items of a run that has ended, from its tasks: failed when a task of the
    /// item failed (or was blocked), done when every one of `stages` succeeded or was done before,
    /// else pending again (the run was interrupted before reaching it). Returns the counts.
    @discardableResult
    public func settle(workflow: String, runID: String, stages: [String], at time: Double) throws(CatalogError) -> [String: Int] {
        try write { db in
            guard let runState = try String.fetchOne(db, sql: "SELECT state FROM runs WHERE id = ?", arguments: [runID]),
                  runState != "running" else { return [:] }
            let marks = stages.map { _ in "?" }.joined(separator: ", ")
            var args: [any DatabaseValueConvertible] = []
            args += stages
            args.append(stages.count)
            args.append(time)
            args += [workflow, runID]
            try db.execute(sql: """
                UPDATE archive SET
                    error = (SELECT t.stage || ': ' || COALESCE(t.error, t.state) FROM tasks t
                             WHERE t.run_id = archive.run_id AND t.item = archive.item AND t.state IN ('failed', 'blocked')
                             ORDER BY t.state = 'blocked', t.rowid LIMIT 1),
                    state = CASE
                        WHEN EXISTS (SELECT 1 FROM tasks t WHERE t.run_id = archive.run_id AND t.item = archive.item
                                     AND t.state IN ('failed', 'blocked')) THEN 'failed'
                        WHEN (SELECT COUNT(DISTINCT t.stage) FROM tasks t WHERE t.run_id = archive.run_id AND t.item = archive.item
                              AND t.state IN ('succeeded', 'skipped') AND t.stage IN (\(marks))) = ? THEN 'done'
                        ELSE 'pending' END,
                    updated_at = ?
                WHERE workflow = ? AND run_id = ? AND state = 'running'
                """, arguments: StatementArguments(args))
            var out: [String: Int] = [:]
            for r in try Row.fetchAll(db, sql: "SELECT state, COUNT(*) AS n FROM archive WHERE workflow = ? AND run_id = ? GROUP BY state",
                                      arguments: [workflow, runID]) {
                out[r["state"]] = r["n"]
            }
            // Items sent back to pending belong to no run.
            try db.execute(sql: "UPDATE archive SET run_id = NULL WHERE workflow = ? AND run_id = ? AND state = 'pending'", arguments: [workflow, runID])
            return out
        }
    }

    public func archiveTotals(workflow: String) throws(CatalogError) -> ArchiveTotals {
        try read { db in
            var t = ArchiveTotals.empty(workflow: workflow)
            for r in try Row.fetchAll(db, sql: "SELECT state, COUNT(*) AS n, COALESCE(SUM(size), 0) AS b FROM archive WHERE workflow = ? GROUP BY state",
                                      arguments: [workflow]) {
                let c = ArchiveTotals.Count(items: r["n"], bytes: r["b"])
                t.states[r["state"]] = c
                t.total.items += c.items; t.total.bytes += c.bytes
            }
            // The rate: what finished batches made done, over the batches' own wall time.
            for r in try Row.fetchAll(db, sql: """
                SELECT a.run_id, COUNT(*) AS n, SUM(a.size) AS b, r.finished_at - r.started_at AS s
                FROM archive a JOIN runs r ON r.id = a.run_id
                WHERE a.workflow = ? AND a.state = 'done' AND r.finished_at IS NOT NULL GROUP BY a.run_id
                """, arguments: [workflow]) {
                t.batches += 1
                t.batchSeconds += r["s"] ?? 0
                t.doneInBatches.items += r["n"]; t.doneInBatches.bytes += r["b"] ?? 0
            }
            if let p = try Row.fetchOne(db, sql: "SELECT * FROM archive_passes WHERE workflow = ? ORDER BY started_at DESC LIMIT 1", arguments: [workflow]) {
                var reg = ArchiveRegistration()
                reg.listed = p["listed"]; reg.new = p["new"]; reg.changed = p["changed"]; reg.unchanged = p["unchanged"]
                t.lastListing = ArchivePass(startedAt: p["started_at"], finishedAt: p["finished_at"], registration: reg, problems: p["problems"])
            }
            return t
        }
    }

    /// Archive items of a workflow in one state (all when nil), in item order, at most `limit`.
    public func archiveItems(workflow: String, state: ArchiveState?, limit: Int? = nil) throws(CatalogError) -> [ArchiveItem] {
        try read { db in
            var sql = "SELECT * FROM archive WHERE workflow = ?"
            var args: [any DatabaseValueConvertible] = [workflow]
            if let state { sql += " AND state = ?"; args.append(state.rawValue) }
            sql += " ORDER BY item"
            if let limit { sql += " LIMIT \(max(0, limit))" }
            return try Row.fetchAll(db, sql: sql, arguments: StatementArguments(args)).map { r in
                ArchiveItem(entry: Self.entry(r), state: ArchiveState(rawValue: r["state"]) ?? .pending, runID: r["run_id"], error: r["error"])
            }
        }
    }

    static func entry(_ r: Row) -> ArchiveEntry {
        ArchiveEntry(item: r["item"], uri: r["uri"], size: r["size"], mtimeNanoseconds: r["mtime_ns"], etag: r["etag"],
                     fields: decodeFields(r["fields"]), problem: r["problem"])
    }

    static func encodeFields(_ f: [String: String]) -> String? {
        guard !f.isEmpty, let d = try? JSONSerialization.data(withJSONObject: f, options: [.sortedKeys]) else { return nil }
        return String(decoding: d, as: UTF8.self)
    }

    static func decodeFields(_ s: String?) -> [String: String] {
        guard let s, let o = try? JSONSerialization.jsonObject(with: Data(s.utf8)) as? [String: String] else { return [:] }
        return o
    }
}
