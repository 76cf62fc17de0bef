import WorkflowSpec
import Catalog

/// How a stage's tasks are cut.
public enum Granularity: Sendable { case perItem, perDirectory }

/// What a running task may use besides its input.
public struct TaskContext: Sendable {
    public var outputRoot: String
    public var workflow: String
    public var specSHA256: String
    public var context: ParamValue
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
    /// After all tasks of the stage: stage-wide outputs (manifests). Runs in the driver.
    func finish(stage: StageSpec, results: [TaskResult], catalog: Catalog, ctx: TaskContext) throws(StageError) -> [OutputInfo]
}

extension Stage {
    public var granularity: Granularity { .perItem }
    public func isSkippable(parameters: [String: ParamValue]) -> Bool { true }
    public func finish(stage: StageSpec, results: [TaskResult], catalog: Catalog, ctx: TaskContext) throws(StageError) -> [OutputInfo] { [] }
}

extension TaskResult {
    /// What a stage returns; the runner adds timing, tries and identity.
    public struct Partial: Sendable {
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
    ]

    public static var schemas: [String: ParameterSchema] {
        [IngestStage.kind: IngestStage.schema, ChecksumStage.kind: ChecksumStage.schema, ReadmeStage.kind: ReadmeStage.schema]
    }

    public static func version(of kind: String) -> Int { type(of: all[kind]!).version }

    public static var parser: WorkflowParser { WorkflowParser(stageKinds: schemas) }
}
