import Checksums
import WorkflowSpec

/// A file as one stage hands it to the next: where it is and what it is.
public struct Artifact: Codable, Sendable, Hashable {
    public var path: String
    public var size: Int64
    public var mtimeNanoseconds: Int64
    public var sha256: String?
    /// For an S3 object (`path` = s3://bucket/key): its ETag; mtime is its LastModified.
    public var etag: String?

    public init(path: String, size: Int64, mtimeNanoseconds: Int64, sha256: String? = nil, etag: String? = nil) {
        self.path = path; self.size = size; self.mtimeNanoseconds = mtimeNanoseconds; self.sha256 = sha256; self.etag = etag
    }

    public var isS3: Bool { path.hasPrefix("s3://") }
}

/// One input file of a run, with the hierarchy its path encodes.
public struct Item: Codable, Sendable {
    /// Unique within a run: the path relative to its input root (prefixed `N:` for the N-th input when several).
    public var id: String
    public var source: Artifact
    /// proposal, sample, experiment, file (from the input's layout), when the path fits it.
    public var fields: [String: String]
    /// Why the path does not fit the layout, when it does not.
    public var layoutProblem: String?
}

/// What a worker needs to run one task: everything, so it never reads the catalog.
public struct TaskInput: Codable, Sendable {
    public var key: String
    public var runID: String
    public var stage: String
    public var kind: String
    public var itemID: String
    public var item: Item?
    /// The upstream stage's artifact for this item (the item's source for a first stage).
    public var input: Artifact?
    /// For per-directory stages: the directory and the artifacts in it.
    public var directory: String?
    public var group: [GroupMember]?
    public var parameters: [String: ParamValue]
    /// The SHA-256 the catalog holds for the input, for verification.
    public var recordedSHA256: String?

    public struct GroupMember: Codable, Sendable, Hashable {
        public var itemID: String
        public var artifact: Artifact
        public var fields: [String: String]
    }
}

/// A file registered in the catalog's objects (raw data under management).
public struct ObjectInfo: Codable, Sendable {
    public var path: String
    public var size: Int64
    public var mtimeNanoseconds: Int64
    public var sha256: String?
    public var fields: [String: String]
    public var sourceURI: String?
}

/// A file a task produced.
public struct OutputInfo: Codable, Sendable {
    public var path: String
    public var size: Int64
    public var sha256: String
    /// For a converted file: which dataset and version it is and what made it.
    public var lineage: OutputLineage? = nil
}

/// A converted file's place among the versions of its dataset, and what it was made with (recorded in
/// the catalog's outputs for `emflow reprocess` selections and `emflow catalog versions`).
public struct OutputLineage: Codable, Sendable, Equatable {
    /// The path of version 1.
    public var dataset: String
    public var version: Int
    public var predecessor: String?
    public var mapping: String?
    public var mappingVersion: String?
    public var mappingSHA256: String?
    /// "vendor model".
    public var instrument: String?
    /// The acquisition time (ISO 8601, as written to start_time).
    public var acquiredAt: String?
    /// proposal, sample, experiment of the item.
    public var fields: [String: String]
}

/// What a worker writes when a task ends (one JSON file per task in the run directory).
public struct TaskResult: Codable, Sendable {
    /// `skipped`: a Slurm worker found the task done before (same key, outputs present).
    public enum State: String, Codable, Sendable { case succeeded, failed, skipped }
    public var key: String
    public var runID: String
    public var stage: String
    public var kind: String
    public var itemID: String
    public var state: State
    public var tries: Int
    public var startedAt: Double
    public var finishedAt: Double
    public var bytes: Int64
    public var error: String?
    public var artifact: Artifact?
    public var objects: [ObjectInfo]
    public var outputs: [OutputInfo]
    public var notes: [String]
}

/// Content keys: a task whose key has a succeeded record (and whose outputs still exist) is done.
public enum TaskKey {
    public static func make(kind: String, version: Int, parameters: [String: ParamValue], input: ParamValue) -> String {
        let doc = ParamValue.map([
            "kind": .string(kind), "version": .int(version),
            "parameters": .map(parameters), "input": input,
        ])
        return SHA256Hasher.hash(doc.canonicalJSON)
    }

    /// A file's identity: path, size, mtime, and its SHA-256 when known; an S3 object's: URI, size
    /// and ETag (a replaced object has a new ETag, so it is staged again).
    public static func identity(of a: Artifact) -> ParamValue {
        if let etag = a.etag, a.isS3 {
            return .map(["uri": .string(a.path), "size": .int(Int(a.size)), "etag": .string(etag)])
        }
        var m: [String: ParamValue] = ["path": .string(a.path), "size": .int(Int(a.size)), "mtime_ns": .int(Int(a.mtimeNanoseconds))]
        if let s = a.sha256 { m["sha256"] = .string(s) }
        return .map(m)
    }
}
