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

    /// The earlier result of `task` when it may be skipped: a succeeded record of its key in the
    /// catalog whose outputs are still there. Verification stages are never skipped.
    func doneBefore(_ task: TaskInput, catalog: Catalog) throws(EngineError) -> (json: String, result: TaskResult)? {
        guard skippable else { return nil }
        let json: String?
        do { json = try catalog.succeededResult(key: task.key) } catch { throw .catalog(error) }
        guard let json, let r = RunDriver.decodeResult(json), RunDriver.outputsExist(r) else { return nil }
        return (json, r)
    }

    /// Verification compares with the sum the catalog recorded for its input, whatever produced it;
    /// other stages need none.
    func recordedSum(_ catalog: Catalog, path: String) throws(EngineError) -> String? {
        guard !skippable else { return nil }
        do { return try catalog.recordedSum(uri: path) } catch { throw .catalog(error) }
    }

    struct Problem: Sendable { var item: String; var error: String }

    /// A README group with the files the catalog knows at the directory's level (same proposal,
    /// sample, experiment) added; the run's own members win where both name one file.
    static func completed(_ group: [TaskInput.GroupMember], directory: String, outputRoot: String, catalog: Catalog) throws(EngineError) -> [TaskInput.GroupMember] {
        guard let first = group.first else { return group }
        let depth = (Path.relative(directory, to: outputRoot) ?? "").split(separator: "/").count
        var fields: [String: String] = [:]
        for f in ReadmeStage.levelFields.prefix(depth) { fields[f] = first.fields[f] }
        let known: [ObjectRecord]
        do { known = try catalog.localObjects(fields: fields) } catch { throw .catalog(error) }
        func name(_ f: [String: String]) -> String { (ReadmeStage.levelFields + ["file"]).map { f[$0] ?? "" }.joined(separator: "/") }
        var seen = Set(group.map { name($0.fields) })
        var out = group
        for o in known {
            var f: [String: String] = [:]
            f["proposal"] = o.proposal; f["sample"] = o.sample; f["experiment"] = o.experiment; f["file"] = o.file
            guard o.file != nil, ReadmeStage.levelFields.allSatisfy({ f[$0] != nil }), seen.insert(name(f)).inserted else { continue }
            out.append(.init(itemID: o.uri, artifact: Artifact(path: o.uri, size: o.size, mtimeNanoseconds: o.mtimeNanoseconds ?? 0, sha256: o.sha256), fields: f))
        }
        return out.sorted { name($0.fields) < name($1.fields) }
    }

    /// The tasks of a per-directory stage (README per level) over the items' artifacts, and the
    /// items that cannot take part (no proposal/sample/experiment). A directory's README describes
    /// everything the catalog holds for it, not only this run's items: a backfill batch or a
    /// reprocessed subset must not shrink what an earlier run wrote.
    func directoryTasks(_ inputs: [(Item, Artifact)], workflow: Workflow, specSHA256: String, catalog: Catalog) throws(EngineError) -> ([TaskInput], [Problem]) {
        guard let readme = impl as? ReadmeStage else { return ([], []) }
        let members = inputs.map { TaskInput.GroupMember(itemID: $0.0.id, artifact: $0.1, fields: $0.0.fields) }
        let withFields = members.filter { m in ReadmeStage.levelFields.allSatisfy { m.fields[$0] != nil } }
        let kept = Set(withFields.map(\.itemID))
        let problems = members.filter { !kept.contains($0.itemID) }.map {
            Problem(item: $0.itemID, error: "\($0.artifact.path): no proposal/sample/experiment for a README; give the input a layout")
        }
        var tasks: [TaskInput] = []
        for (dir, batchGroup) in readme.groups(withFields, outputRoot: workflow.outputs.root, parameters: stage.parameters) {
            let group = try Self.completed(batchGroup, directory: dir, outputRoot: workflow.outputs.root, catalog: catalog)
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
