/// A validated workflow: what `emflow run` executes. Paths are absolute (relative ones in the file are
/// taken from the spec file's directory).
public struct Workflow: Sendable {
    public var name: String
    public var description: String?
    public var inputs: [InputSpec]
    public var outputs: OutputSpec
    /// Where the catalog and run directories live.
    public var workspace: String
    public var executor: ExecutorSpec
    /// How to reach S3 for s3:// inputs and publishing (credentials are never in a spec).
    public var s3 = S3Settings()
    public var context: ParamValue
    /// In the file's order, which `needs` must respect (a stage only needs earlier ones).
    public var stages: [StageSpec]
    public var sourceFile: String

    public func stage(named name: String) -> StageSpec? { stages.first { $0.name == name } }
}

public enum InputLocation: Sendable, Hashable, CustomStringConvertible {
    case local(path: String)
    case s3(bucket: String, prefix: String)

    public var description: String {
        switch self {
        case .local(let p): return p
        case .s3(let b, let p): return "s3://\(b)/\(p)"
        }
    }
}

public struct InputSpec: Sendable {
    public var location: InputLocation
    public var include: [Glob]
    public var exclude: [Glob]
    /// How relative paths encode the hierarchy, e.g. `{proposal}/{sample}/{experiment}/{file}`.
    public var layout: PathTemplate?
}

public struct OutputSpec: Sendable {
    /// The managed data root: `<root>/<proposal>/<sample>/<experiment>/raw/<file>` and derived data.
    public var root: String
    /// Name of derived files relative to the dataset directory, e.g. `nexus/{stem}.nxs`.
    public var naming: PathTemplate?
}

public struct ExecutorSpec: Sendable {
    public enum Kind: String, Sendable, CaseIterable { case local, slurm }
    public var kind: Kind = .local
    /// Concurrent tasks for the local executor; nil means one per core.
    public var jobs: Int? = nil
    /// A site profile (YAML) for the Slurm executor.
    public var site: String? = nil
    /// Slurm: seconds between two squeue calls while waiting (default: the site's, else 30).
    public var pollInterval: Double? = nil
    public init() {}
}

/// The `s3:` section: endpoint and transfer settings. Anything left out comes from the AWS
/// environment variables and the user's ~/.aws files.
public struct S3Settings: Sendable, Equatable {
    public static let keys = ["endpoint", "region", "profile", "addressing", "insecure", "ca_bundle", "concurrency", "part_size_mib", "etags"]
    public var endpoint: String? = nil
    public var region: String? = nil
    public var profile: String? = nil
    /// path or virtual
    public var addressing: String? = nil
    public var insecure: Bool? = nil
    public var caBundle: String? = nil
    public var concurrency: Int? = nil
    public var partSizeMiB: Int? = nil
    /// md5 or opaque: whether the server's ETags are MD5 digests (S3Config.ETags).
    public var etags: String? = nil
    public init() {}
}

public struct RetryPolicy: Sendable, Equatable {
    /// Attempts in all, the first included.
    public var tries: Int = 3
    /// Seconds to wait before the 2nd, 3rd, ... attempt; the last value repeats.
    public var backoff: [Double] = [10, 60, 300]
    public init() {}
    public init(tries: Int, backoff: [Double]) { self.tries = tries; self.backoff = backoff }

    public func delay(beforeAttempt attempt: Int) -> Double {
        guard attempt >= 2, !backoff.isEmpty else { return 0 }
        return backoff[min(attempt - 2, backoff.count - 1)]
    }
}

/// Scheduler resources, with sbatch's own option names.
public struct Resources: Sendable, Equatable {
    public static let knownKeys = ["partition", "account", "qos", "time", "mem", "mem-per-cpu", "cpus-per-task",
                                   "ntasks", "nodes", "constraint", "gres", "ranks", "batch", "throttle"]
    public var values: [String: String] = [:]
    public init() {}
}

public struct StageSpec: Sendable {
    public var name: String
    public var uses: String
    public var needs: [String]
    public var parameters: [String: ParamValue]
    public var resources: Resources
    public var retry: RetryPolicy
    public var line: Int
}
