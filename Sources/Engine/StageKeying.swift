import POSIXFiles
import WorkflowSpec
import Catalog

/// How one stage's tasks get their keys: the same for the local driver, the Slurm planner and a
/// Slurm worker (which computes the key of an item whose input an upstream array task produced).
struct StageKeying: Sendable {
    let stage: StageSpec
    let impl: any Stage
    let version: Int
    let keyParameters: [String: ParamValue]
    let runID: String?

    init(stage: StageSpec, ctx: TaskContext, runID: String?) throws(EngineError) {
        self.stage = stage
        impl = StageRegistry.all[stage.uses]!
        version = type(of: impl).version
        self.runID = runID
        var kp = stage.parameters
        do {
            if let extra = try impl.keyMaterial(parameters: stage.parameters, ctx: ctx) { kp["(key material)"] = extra }
        } catch {
            throw .usage("stage \(stage.name) (\(stage.uses)): \(error.message)")
        }
        keyParameters = kp
    }

    var skippable: Bool { impl.isSkippable(parameters: stage.parameters) }

    /// The task of a per-item stage for an item whose input is `artifact`. A verification stage
    /// (never skippable) keys on the run too, so each run records its own check.
    func task(item: Item, artifact: Artifact, recorded: String?) -> TaskInput {
        var idInput = impl.inputIdentity(artifact, item: item)
        if !skippable, let runID { idInput = .map(["file": idInput, "run": .string(runID)]) }
        let key = TaskKey.make(kind: stage.uses, version: version, parameters: keyParameters, input: idInput)
        return TaskInput(key: key, runID: runID ?? "", stage: stage.name, kind: stage.uses, itemID: item.id, item: item,
                         input: artifact, directory: nil, group: nil, parameters: stage.parameters,
                         recordedSHA256: recorded ?? artifact.sha256)
    }

    /// The earlier result of `task` when it may be skipped: a succeeded record of its key (`done`:
    /// key → result JSON) whose outputs are still there. Verification stages are never skipped.
    func doneBefore(_ task: TaskInput, done: [String: String]) -> (json: String, result: TaskResult)? {
        guard skippable, let json = done[task.key], let r = RunDriver.decodeResult(json), RunDriver.outputsExist(r) else { return nil }
        return (json, r)
    }

    /// Verification compares with the sums the catalog recorded, whatever produced them; other
    /// stages need none.
    func recordedSums(_ catalog: Catalog) throws(EngineError) -> [String: String] {
        guard !skippable else { return [:] }
        do { return try catalog.recordedSums() } catch { throw .catalog(error) }
    }

    struct Problem: Sendable { var item: String; var error: String }

    /// The tasks of a per-directory stage (README per level) over the items' artifacts, and the
    /// items that cannot take part (no proposal/sample/experiment).
    func directoryTasks(_ inputs: [(Item, Artifact)], workflow: Workflow, specSHA256: String) -> ([TaskInput], [Problem]) {
        guard let readme = impl as? ReadmeStage else { return ([], []) }
        let members = inputs.map { TaskInput.GroupMember(itemID: $0.0.id, artifact: $0.1, fields: $0.0.fields) }
        let withFields = members.filter { m in ReadmeStage.levelFields.allSatisfy { m.fields[$0] != nil } }
        let kept = Set(withFields.map(\.itemID))
        let problems = members.filter { !kept.contains($0.itemID) }.map {
            Problem(item: $0.itemID, error: "\($0.artifact.path): no proposal/sample/experiment for a README; give the input a layout")
        }
        var tasks: [TaskInput] = []
        for (dir, group) in readme.groups(withFields, outputRoot: workflow.outputs.root, parameters: stage.parameters) {
            let input = ParamValue.map([
                "directory": .string(dir),
                "members": .list(group.map { .map(["id": .string($0.itemID), "file": TaskKey.identity(of: $0.artifact),
                                                   "fields": .map($0.fields.mapValues { .string($0) })]) }),
                "context": workflow.context, "workflow": .string(workflow.name), "spec": .string(specSHA256),
            ])
            let key = TaskKey.make(kind: stage.uses, version: version, parameters: stage.parameters, input: input)
            let rel = Path.relative(dir, to: workflow.outputs.root) ?? dir
            tasks.append(TaskInput(key: key, runID: runID ?? "", stage: stage.name, kind: stage.uses, itemID: rel, item: nil,
                                   input: nil, directory: dir, group: group, parameters: stage.parameters, recordedSHA256: nil))
        }
        return (tasks, problems)
    }
}
