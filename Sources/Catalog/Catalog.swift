import Foundation
import GRDB

public struct CatalogError: Error, CustomStringConvertible, Sendable {
    public let path: String
    public let message: String
    public let hint: String?
    public var description: String { "catalog \(path): \(message)" + (hint.map { " (\($0))" } ?? "") }
}

/// The SQLite catalog: runs, tasks, objects and outputs. Only the driver process writes it (workers
/// write result files that the driver ingests); WAL lets `emflow status` read while a run writes.
public final class Catalog: Sendable {
    public let path: String
    let db: DatabasePool

    public init(path: String) throws(CatalogError) {
        self.path = path
        do {
            try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            var config = Configuration()
            config.busyMode = .timeout(30)
            config.prepareDatabase { db in
                try db.execute(sql: "PRAGMA synchronous = NORMAL")
            }
            db = try DatabasePool(path: path, configuration: config)
            try Catalog.migrator.migrate(db)
        } catch let e as DatabaseError {
            throw CatalogError(path: path, message: "SQLite error \(e.resultCode): \(e.message ?? "")",
                               hint: e.resultCode == .SQLITE_CANTOPEN ? "check that the workspace directory is writable" :
                                     e.resultCode == .SQLITE_NOTADB ? "this file is not an emflow catalog" : nil)
        } catch {
            throw CatalogError(path: path, message: "\(error)", hint: "check that the workspace directory is writable")
        }
    }

    /// Opens an existing catalog read-write, or explains that there is none.
    public static func openExisting(path: String) throws(CatalogError) -> Catalog {
        guard FileManager.default.fileExists(atPath: path) else {
            throw CatalogError(path: path, message: "no catalog here", hint: "run a workflow first, or point --workspace at the workspace that holds catalog.sqlite")
        }
        return try Catalog(path: path)
    }

    // Migrations are append-only: never edit a registered one, add a new one.
    static var migrator: DatabaseMigrator {
        var m = DatabaseMigrator()
        m.registerMigration("v1") { db in
            try db.execute(sql: """
                CREATE TABLE runs (
                    id TEXT PRIMARY KEY, workflow TEXT NOT NULL, spec_path TEXT NOT NULL, spec_sha256 TEXT NOT NULL,
                    executor TEXT NOT NULL, started_at REAL NOT NULL, finished_at REAL, state TEXT NOT NULL,
                    items INTEGER NOT NULL, emflow_version TEXT NOT NULL);
                CREATE TABLE tasks (
                    run_id TEXT NOT NULL REFERENCES runs(id), key TEXT NOT NULL, stage TEXT NOT NULL, kind TEXT NOT NULL,
                    item TEXT NOT NULL, state TEXT NOT NULL, tries INTEGER NOT NULL, started_at REAL, finished_at REAL,
                    bytes INTEGER NOT NULL DEFAULT 0, error TEXT, result TEXT, PRIMARY KEY (run_id, key));
                CREATE INDEX tasks_by_key ON tasks(key, state);
                CREATE INDEX tasks_by_run_state ON tasks(run_id, stage, state);
                CREATE TABLE objects (
                    uri TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER, etag TEXT, sha256 TEXT,
                    proposal TEXT, sample TEXT, experiment TEXT, file TEXT, source_uri TEXT,
                    run_id TEXT NOT NULL, updated_at REAL NOT NULL);
                CREATE INDEX objects_by_sha256 ON objects(sha256);
                CREATE INDEX objects_by_hierarchy ON objects(proposal, sample, experiment);
                CREATE TABLE outputs (
                    uri TEXT PRIMARY KEY, sha256 TEXT NOT NULL, size INTEGER NOT NULL, task_key TEXT NOT NULL,
                    run_id TEXT NOT NULL, stage TEXT NOT NULL, kind TEXT NOT NULL, created_at REAL NOT NULL);
                CREATE INDEX outputs_by_sha256 ON outputs(sha256);
                """)
        }
        registerArchiveMigrations(&m)
        registerLineageMigrations(&m)
        return m
    }

    func write<T>(_ body: (Database) throws -> T) throws(CatalogError) -> T {
        do { return try db.write(body) } catch { throw wrap(error) }
    }

    func read<T>(_ body: (Database) throws -> T) throws(CatalogError) -> T {
        do { return try db.read(body) } catch { throw wrap(error) }
    }

    func wrap(_ error: any Error) -> CatalogError {
        if let e = error as? DatabaseError {
            return CatalogError(path: path, message: "SQLite error \(e.resultCode): \(e.message ?? "")",
                                hint: e.resultCode == .SQLITE_FULL ? "the disk holding the catalog is full" : nil)
        }
        return CatalogError(path: path, message: "\(error)", hint: nil)
    }

    // MARK: - Runs

    public func insert(run: RunRecord) throws(CatalogError) { try write { try run.insert($0) } }

    public func finish(runID: String, state: String, at time: Double) throws(CatalogError) {
        try write { try $0.execute(sql: "UPDATE runs SET state = ?, finished_at = ? WHERE id = ?", arguments: [state, time, runID]) }
    }

    public func runs(workflow: String? = nil) throws(CatalogError) -> [RunRecord] {
        try read { db in
            if let workflow { return try RunRecord.filter(Column("workflow") == workflow).order(Column("started_at").desc).fetchAll(db) }
            return try RunRecord.order(Column("started_at").desc).fetchAll(db)
        }
    }

    public func run(id: String) throws(CatalogError) -> RunRecord? { try read { try RunRecord.fetchOne($0, key: id) } }

    /// Runs left in state `running` (their driver was killed): their result files need collecting.
    public func unfinishedRuns() throws(CatalogError) -> [RunRecord] {
        try read { try RunRecord.filter(Column("state") == "running").fetchAll($0) }
    }

    // MARK: - Tasks

    /// Records a task's outcome with the objects and outputs it produced, in one transaction.
    /// Re-recording the same (run, key) replaces it, so ingesting a result file twice is harmless.
    public func record(task: TaskRecord, objects: [ObjectRecord] = [], outputs: [OutputRecord] = []) throws(CatalogError) {
        try write { db in
            try task.save(db)
            for o in objects { try Catalog.upsert(o, db) }
            for o in outputs { try o.save(db) }
        }
    }

    /// Many task outcomes in one transaction (one fsync instead of hundreds).
    public func record(batch: [(task: TaskRecord, objects: [ObjectRecord], outputs: [OutputRecord])]) throws(CatalogError) {
        guard !batch.isEmpty else { return }
        try write { db in
            for b in batch {
                try b.task.save(db)
                for o in b.objects { try Catalog.upsert(o, db) }
                for o in b.outputs { try o.save(db) }
            }
        }
    }

    public func record(outputs: [OutputRecord]) throws(CatalogError) {
        guard !outputs.isEmpty else { return }
        try write { db in for o in outputs { try o.save(db) } }
    }

    /// Merges what a task learnt about an object into what is known: hierarchy fields and the source
    /// are kept when the new record lacks them; a known sum is kept only while size and mtime match.
    static func upsert(_ o: ObjectRecord, _ db: Database) throws {
        try db.execute(sql: """
            INSERT INTO objects (uri, size, mtime_ns, etag, sha256, proposal, sample, experiment, file, source_uri, run_id, updated_at)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            ON CONFLICT(uri) DO UPDATE SET
                sha256 = CASE WHEN excluded.sha256 IS NOT NULL THEN excluded.sha256
                              WHEN objects.size = excluded.size AND objects.mtime_ns IS excluded.mtime_ns THEN objects.sha256
                              ELSE NULL END,
                size = excluded.size, mtime_ns = excluded.mtime_ns,
                etag = COALESCE(excluded.etag, objects.etag),
                proposal = COALESCE(excluded.proposal, objects.proposal), sample = COALESCE(excluded.sample, objects.sample),
                experiment = COALESCE(excluded.experiment, objects.experiment), file = COALESCE(excluded.file, objects.file),
                source_uri = COALESCE(excluded.source_uri, objects.source_uri),
                run_id = excluded.run_id, updated_at = excluded.updated_at
            """, arguments: [o.uri, o.size, o.mtimeNanoseconds, o.etag, o.sha256, o.proposal, o.sample, o.experiment, o.file,
                             o.sourceURI, o.runID, o.updatedAt])
    }

    public func record(tasks: [TaskRecord]) throws(CatalogError) {
        guard !tasks.isEmpty else { return }
        try write { db in for t in tasks { try t.save(db) } }
    }

    public func hasTask(runID: String, key: String) throws(CatalogError) -> Bool {
        try read { try TaskRecord.exists($0, key: ["run_id": runID, "key": key]) }
    }

    /// The result document of the latest succeeded task with this key, nil when it never succeeded.
    /// One indexed lookup: planners ask per task, so their memory does not grow with the catalog.
    public func succeededResult(key: String) throws(CatalogError) -> String? {
        try read { db in
            try String.fetchOne(db, sql: """
                SELECT COALESCE(result, '') FROM tasks WHERE key = ? AND state = 'succeeded' ORDER BY finished_at DESC LIMIT 1
                """, arguments: [key])
        }
    }

    /// The key and result of the latest task of `stage` for `item` that succeeded (or was found done).
    public func latestResult(stage: String, item: String) throws(CatalogError) -> (key: String, result: String)? {
        try read { db in
            guard let r = try Row.fetchOne(db, sql: """
                SELECT key, result FROM tasks WHERE stage = ? AND item = ? AND state IN ('succeeded', 'skipped') AND result IS NOT NULL
                ORDER BY finished_at DESC LIMIT 1
                """, arguments: [stage, item]) else { return nil }
            return (r["key"], r["result"])
        }
    }

    /// The median run time of the last (up to 500) succeeded tasks of a stage kind, nil without history.
    public func medianSeconds(kind: String) throws(CatalogError) -> Double? {
        try read { db in
            let d = try Double.fetchAll(db, sql: """
                SELECT finished_at - started_at FROM tasks WHERE kind = ? AND state = 'succeeded'
                AND started_at IS NOT NULL AND finished_at IS NOT NULL ORDER BY finished_at DESC LIMIT 500
                """, arguments: [kind]).sorted()
            return d.isEmpty ? nil : d[d.count / 2]
        }
    }

    public func tasks(runID: String, stage: String? = nil, state: String? = nil) throws(CatalogError) -> [TaskRecord] {
        try read { db in
            var q = TaskRecord.filter(Column("run_id") == runID)
            if let stage { q = q.filter(Column("stage") == stage) }
            if let state { q = q.filter(Column("state") == state) }
            return try q.order(Column("stage"), Column("item")).fetchAll(db)
        }
    }

    public struct StageCounts: Sendable, Equatable, Codable {
        public var stage: String
        public var counts: [String: Int]
        public var bytes: Int64
        public var seconds: Double
    }

    public func stageCounts(runID: String) throws(CatalogError) -> [StageCounts] {
        try read { db in
            let rows = try Row.fetchAll(db, sql: """
                SELECT stage, state, COUNT(*) AS n, SUM(bytes) AS b,
                       SUM(COALESCE(finished_at - started_at, 0)) AS s, MIN(rowid) AS first
                FROM tasks WHERE run_id = ? GROUP BY stage, state ORDER BY first
                """, arguments: [runID])
            var order: [String] = []
            var by: [String: StageCounts] = [:]
            for r in rows {
                let st: String = r["stage"]
                if by[st] == nil { order.append(st); by[st] = StageCounts(stage: st, counts: [:], bytes: 0, seconds: 0) }
                by[st]!.counts[r["state"]] = r["n"]
                by[st]!.bytes += r["b"] ?? 0
                by[st]!.seconds += r["s"] ?? 0
            }
            return order.map { by[$0]! }
        }
    }

    // MARK: - Objects and outputs

    /// The SHA-256 recorded for a managed file, when there is one (what verification compares with).
    public func recordedSum(uri: String) throws(CatalogError) -> String? {
        try read { try String.fetchOne($0, sql: "SELECT sha256 FROM objects WHERE uri = ?", arguments: [uri]) }
    }

    public func objects(prefix: String? = nil, proposal: String? = nil, limit: Int? = nil) throws(CatalogError) -> [ObjectRecord] {
        try read { db in
            var q = ObjectRecord.order(Column("uri"))
            if let prefix { q = q.filter(Column("uri").like(Catalog.escapeLike(prefix) + "%", escape: "\\")) }
            if let proposal { q = q.filter(Column("proposal") == proposal) }
            if let limit { q = q.limit(limit) }
            return try q.fetchAll(db)
        }
    }

    /// Local files (not s3:// objects) recorded with these hierarchy fields (proposal, sample, experiment).
    public func localObjects(fields: [String: String]) throws(CatalogError) -> [ObjectRecord] {
        try read { db in
            var q = ObjectRecord.filter(!Column("uri").like("s3://%"))
            for k in ["proposal", "sample", "experiment"] { if let v = fields[k] { q = q.filter(Column(k) == v) } }
            return try q.order(Column("uri")).fetchAll(db)
        }
    }

    public func object(uri: String) throws(CatalogError) -> ObjectRecord? { try read { try ObjectRecord.fetchOne($0, key: uri) } }

    public func output(uri: String) throws(CatalogError) -> OutputRecord? { try read { try OutputRecord.fetchOne($0, key: uri) } }

    public func outputs(runID: String? = nil, prefix: String? = nil) throws(CatalogError) -> [OutputRecord] {
        try read { db in
            var q = OutputRecord.order(Column("uri"))
            if let runID { q = q.filter(Column("run_id") == runID) }
            if let prefix { q = q.filter(Column("uri").like(Catalog.escapeLike(prefix) + "%", escape: "\\")) }
            return try q.fetchAll(db)
        }
    }

    public func find(sha256: String) throws(CatalogError) -> (objects: [ObjectRecord], outputs: [OutputRecord]) {
        let h = sha256.lowercased()
        return try read { db in
            (try ObjectRecord.filter(Column("sha256") == h).fetchAll(db), try OutputRecord.filter(Column("sha256") == h).fetchAll(db))
        }
    }

    /// Known SHA-256 sums of files directly inside `directory`.
    public func sums(inDirectory directory: String) throws(CatalogError) -> [(name: String, sha256: String)] {
        let prefix = directory.hasSuffix("/") ? directory : directory + "/"
        return try read { db in
            let rows = try Row.fetchAll(db, sql: """
                SELECT uri, sha256 FROM objects WHERE uri LIKE ? ESCAPE '\\' AND sha256 IS NOT NULL
                UNION SELECT uri, sha256 FROM outputs WHERE uri LIKE ? ESCAPE '\\'
                """, arguments: [Catalog.escapeLike(prefix) + "%", Catalog.escapeLike(prefix) + "%"])
            var out: [(String, String)] = []
            for r in rows {
                let uri: String = r["uri"]
                let name = String(uri.dropFirst(prefix.count))
                if !name.contains("/") { out.append((name, r["sha256"])) }
            }
            return out.sorted { $0.0 < $1.0 }
        }
    }

    static func escapeLike(_ s: String) -> String {
        s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "%", with: "\\%").replacingOccurrences(of: "_", with: "\\_")
    }

    public func checkIntegrity() throws(CatalogError) -> Bool {
        try read { try String.fetchOne($0, sql: "PRAGMA integrity_check") == "ok" }
    }
}
