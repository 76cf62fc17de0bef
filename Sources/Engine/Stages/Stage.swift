import WorkflowSpec
import Catalog

/// How a stage's tasks are cut.
public enum Granularity: Sendable { case perItem, perDirectory }

/// What a running task may use besides its input.
public struct TaskContext: Sendable {
    public var outputRoot: String
    public var workflow: String
    public var specSHA256: String
    /// The spec file (absolute), for paths relative to it and for provenance.
    public var specPath: String = ""
    /// Derived-file naming relative to a dataset directory (outputs.naming).
    public var naming: PathTemplate? = nil
    /// The workspace (catalog, runs, default staging area).
    public var workspace: String = ""
    /// How to reach S3 (the spec's `s3:` section).
    public var s3 = S3Settings()
    public var context: ParamValue
    /// The site's file-system stripe size (site profile `storage.stripe_size_mib`), for HDF5 alignment.
    public var stripeBytes: Int? = nil
    /// srun's --mpi plugin from the site profile, for MPI stages under Slurm.
    public var mpiPlugin: String? = nil
    /// Bytes processed so far (for progress), thread-safe.
    public var reportBytes: @Sendable (Int) -> Void
}

/// A built-in stage kind: a library function from a typed input to a result. Executors decide where
/// and when it runs; the stage never touches the catalog.
public protocol Stage: Sendable {
    static var kind: String { get }
    /// Bumped when the stage's output for the same input changes, so old results are not reused.
    static var version: Int { get }
    static var schema: ParameterSchema { get }
    var granularity: Granularity { get }
    /// Whether a done key may be skipped (verification stages always run).
    func isSkippable(parameters: [String: ParamValue]) -> Bool
    func run(_ task: TaskInput, _ ctx: TaskContext) throws(StageError) -> TaskResult.Partial
    /// Extra material for every task key of the stage, computed once per run (e.g. the content hash
    /// of the mapping files a conversion reads). A throw stops the run before any task: a setup error.
    func keyMaterial(parameters: [String: ParamValue], ctx: TaskContext) throws(StageError) -> ParamValue?
    /// The input's identity in a task key; stages that read files next to the input add them.
    func inputIdentity(_ artifact: Artifact, item: Item) -> ParamValue
    /// After all tasks of the stage: stage-wide outputs (manifests). Runs in the driver.
    func finish(stage: StageSpec, results: [TaskResult], catalog: Catalog, ctx: TaskContext) throws(StageError) -> [OutputInfo]
}

extension Stage {
    public var granularity: Granularity { .perItem }
    public func isSkippable(parameters: [String: ParamValue]) -> Bool { true }
    public func keyMaterial(parameters: [String: ParamValue], ctx: TaskContext) throws(StageError) -> ParamValue? { nil }
    public func inputIdentity(_ artifact: Artifact, item: Item) -> ParamValue { TaskKey.identity(of: artifact) }
    public func finish(stage: StageSpec, results: [TaskResult], catalog: Catalog, ctx: TaskContext) throws(StageError) -> [OutputInfo] { [] }
}

extension TaskResult {
    /// What a stage returns; the runner adds timing, tries and identity.
    public struct Partial: Sendable, Codable {
        public var artifact: Artifact?
        public var objects: [ObjectInfo] = []
        public var outputs: [OutputInfo] = []
        public var bytes: Int64 = 0
        public var notes: [String] = []
        public init(artifact: Artifact?) { self.artifact = artifact }
    }
}

/// The stage kinds this build knows, by the name specs use in `uses:`.
public enum StageRegistry {
    public static let all: [String: any Stage] = [
        IngestStage.kind: IngestStage(),
        ChecksumStage.kind: ChecksumStage(),
        ReadmeStage.kind: ReadmeStage(),
        ConvertStage.kind: ConvertStage(),
        StageInStage.kind: StageInStage(),
        PublishStage.kind: PublishStage(),
    ]

    public static var schemas: [String: ParameterSchema] {
        all.mapValues { type(of: $0).schema }
    }

    public static func version(of kind: String) -> Int { type(of: all[kind]!).version }

    public static var parser: WorkflowParser { WorkflowParser(stageKinds: schemas) }
}
