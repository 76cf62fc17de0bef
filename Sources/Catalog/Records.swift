import GRDB

/// One `emflow run` invocation.
public struct RunRecord: Codable, Sendable, Equatable, FetchableRecord, PersistableRecord {
    public static let databaseTableName = "runs"
    public var id: String
    public var workflow: String
    public var specPath: String
    public var specSHA256: String
    public var executor: String
    public var startedAt: Double
    public var finishedAt: Double?
    /// running, succeeded, failed (some tasks failed), interrupted (never finished: killed or crashed).
    public var state: String
    public var items: Int
    public var emflowVersion: String

    public init(id: String, workflow: String, specPath: String, specSHA256: String, executor: String,
                startedAt: Double, finishedAt: Double? = nil, state: String, items: Int, emflowVersion: String) {
        self.id = id; self.workflow = workflow; self.specPath = specPath; self.specSHA256 = specSHA256
        self.executor = executor; self.startedAt = startedAt; self.finishedAt = finishedAt; self.state = state
        self.items = items; self.emflowVersion = emflowVersion
    }

    enum CodingKeys: String, CodingKey {
        case id, workflow, specPath = "spec_path", specSHA256 = "spec_sha256", executor, startedAt = "started_at",
             finishedAt = "finished_at", state, items, emflowVersion = "emflow_version"
    }
}

/// One task attempt series (all tries) of one run.
public struct TaskRecord: Codable, Sendable, Equatable, FetchableRecord, PersistableRecord {
    public static let databaseTableName = "tasks"
    public var runID: String
    public var key: String
    public var stage: String
    public var kind: String
    public var item: String
    /// succeeded, failed, skipped (done before), blocked (an upstream task failed)
    public var state: String
    public var tries: Int
    public var startedAt: Double?
    public var finishedAt: Double?
    public var bytes: Int64
    public var error: String?
    /// The worker's result document (JSON), which downstream stages and skips reuse.
    public var result: String?

    public init(runID: String, key: String, stage: String, kind: String, item: String, state: String, tries: Int,
                startedAt: Double?, finishedAt: Double?, bytes: Int64, error: String?, result: String?) {
        self.runID = runID; self.key = key; self.stage = stage; self.kind = kind; self.item = item; self.state = state
        self.tries = tries; self.startedAt = startedAt; self.finishedAt = finishedAt; self.bytes = bytes
        self.error = error; self.result = result
    }

    enum CodingKeys: String, CodingKey {
        case runID = "run_id", key, stage, kind, item, state, tries, startedAt = "started_at", finishedAt = "finished_at",
             bytes, error, result
    }
}

/// A file or object emflow manages (raw data), with its content identity.
public struct ObjectRecord: Codable, Sendable, Equatable, FetchableRecord, PersistableRecord {
    public static let databaseTableName = "objects"
    public var uri: String
    public var size: Int64
    public var mtimeNanoseconds: Int64?
    public var etag: String?
    public var sha256: String?
    public var proposal: String?
    public var sample: String?
    public var experiment: String?
    public var file: String?
    public var sourceURI: String?
    public var runID: String
    public var updatedAt: Double

    public init(uri: String, size: Int64, mtimeNanoseconds: Int64?, etag: String? = nil, sha256: String?,
                proposal: String? = nil, sample: String? = nil, experiment: String? = nil, file: String? = nil,
                sourceURI: String? = nil, runID: String, updatedAt: Double) {
        self.uri = uri; self.size = size; self.mtimeNanoseconds = mtimeNanoseconds; self.etag = etag; self.sha256 = sha256
        self.proposal = proposal; self.sample = sample; self.experiment = experiment; self.file = file
        self.sourceURI = sourceURI; self.runID = runID; self.updatedAt = updatedAt
    }

    enum CodingKeys: String, CodingKey {
        case uri, size, mtimeNanoseconds = "mtime_ns", etag, sha256, proposal, sample, experiment, file,
             sourceURI = "source_uri", runID = "run_id", updatedAt = "updated_at"
    }
}

/// A file emflow produced (README, SHA256SUMS, NeXus file, ...), with the task that made it.
/// Converted files also carry their lineage: the dataset they are a version of (the path of version 1),
/// the version number, the version they supersede, and the mapping (name, declared version, content
/// hash), instrument and acquisition time they were made with, for reprocessing and its queries.
public struct OutputRecord: Codable, Sendable, Equatable, FetchableRecord, PersistableRecord {
    public static let databaseTableName = "outputs"
    public var uri: String
    public var sha256: String
    public var size: Int64
    public var taskKey: String
    public var runID: String
    public var stage: String
    public var kind: String
    public var createdAt: Double
    public var item: String? = nil
    public var dataset: String? = nil
    public var version: Int? = nil
    public var predecessor: String? = nil
    public var mapping: String? = nil
    public var mappingVersion: String? = nil
    public var mappingSHA256: String? = nil
    public var instrument: String? = nil
    public var acquiredAt: String? = nil
    public var proposal: String? = nil
    public var sample: String? = nil
    public var experiment: String? = nil

    public init(uri: String, sha256: String, size: Int64, taskKey: String, runID: String, stage: String, kind: String, createdAt: Double) {
        self.uri = uri; self.sha256 = sha256; self.size = size; self.taskKey = taskKey; self.runID = runID
        self.stage = stage; self.kind = kind; self.createdAt = createdAt
    }

    enum CodingKeys: String, CodingKey {
        case uri, sha256, size, taskKey = "task_key", runID = "run_id", stage, kind, createdAt = "created_at",
             item, dataset, version, predecessor, mapping, mappingVersion = "mapping_version", mappingSHA256 = "mapping_sha256",
             instrument, acquiredAt = "acquired_at", proposal, sample, experiment
    }
}
