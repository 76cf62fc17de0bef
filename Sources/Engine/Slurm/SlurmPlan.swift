import Foundation
import POSIXFiles

/// What a Slurm run submitted, kept in `runs/<id>/slurm/plan.json`: enough for a worker to find its
/// items and for any later `emflow status/logs/cancel` (or a re-run) to follow the jobs.
struct SlurmPlan: Codable, Sendable {
    var runID: String
    var workflow: String
    /// The spec file as given (absolute): relative paths in the frozen copy are taken from its directory.
    var specFile: String
    var specBase: String
    var specSHA256: String
    /// The emflow binary the job scripts run.
    var emflow: String
    var pollInterval: Double
    var accounting: Bool
    var stages: [Stage]

    struct Stage: Codable, Sendable {
        var name: String
        var kind: String
        /// Per-directory stages (README) run in the driver once every array has ended.
        var perDirectory: Bool
        var needs: [String]
        /// Tasks submitted (items to run); skipped ones were recorded at submission.
        var items: Int
        var skipped: Int
        var batch: Int
        var slices: Int
        var arrays: [ArrayJob]
    }

    struct ArrayJob: Codable, Sendable {
        var offset: Int
        var count: Int
        var jobID: String?
        var script: String
        /// When sbatch accepted it (a task's queue wait is its start minus this).
        var submittedAt: Double? = nil
    }

    var jobIDs: [String] { stages.flatMap { $0.arrays.compactMap(\.jobID) } }

    /// The array job and task index that runs slice `slice` of `stage`.
    func arrayTask(stage: String, slice: Int) -> (jobID: String, index: Int)? {
        guard let st = stages.first(where: { $0.name == stage }),
              let a = st.arrays.first(where: { slice >= $0.offset && slice < $0.offset + $0.count }), let id = a.jobID else { return nil }
        return (id, slice - a.offset)
    }
}

/// One item of one array task: its input when known at submission, else where the upstream
/// stage's array task writes the result that names it.
struct WorkEntry: Codable, Sendable {
    var itemID: String
    var item: Item
    var input: Artifact?
    var key: String?
    var recorded: String?
    var upstream: [Upstream]
    /// The last result of this stage for this item: skipped when the worker's key equals it.
    var prior: Prior?

    struct Upstream: Codable, Sendable, Hashable { var stage: String; var slice: Int }
    struct Prior: Codable, Sendable { var key: String; var result: String }
}

/// The last state seen of each array task, kept in `runs/<id>/slurm/states.json` so that
/// `emflow status`/`logs` still know a TIMEOUT after the job has left squeue.
struct ArrayTaskStates: Codable, Sendable {
    struct Entry: Codable, Sendable, Equatable {
        var state: String
        var reason: String?
        var exitCode: String?
        var elapsed: String?
    }
    /// `jobID_index` → last state.
    var tasks: [String: Entry] = [:]
    /// Arrays with no task left in the queue.
    var ended: Set<String> = []
}

/// Where a Slurm run keeps its files.
struct SlurmRunFiles: Sendable {
    let runDir: String
    var slurmDir: String { Path.join(runDir, "slurm") }
    var planPath: String { Path.join(slurmDir, "plan.json") }
    var statesPath: String { Path.join(slurmDir, "states.json") }
    var logsDir: String { Path.join(slurmDir, "logs") }
    var specPath: String { Path.join(runDir, "spec.yaml") }
    func stageDir(_ stage: String) -> String { Path.join(slurmDir, stage) }
    func slicePath(_ stage: String, _ slice: Int) -> String { Path.join(stageDir(stage), "slice-\(slice).jsonl") }
    func scriptPath(_ stage: String, part: Int) -> String { Path.join(stageDir(stage), "array-\(part).sh") }
    func resultsDir(_ stage: String) -> String { Path.join(runDir, "results/\(stage)") }
    static func slicePrefix(_ slice: Int) -> String { "s\(slice)-" }
    func logPath(_ stage: String, jobID: String, index: Int, err: Bool) -> String {
        Path.join(logsDir, "\(stage)-\(jobID)_\(index).\(err ? "err" : "out")")
    }

    func loadPlan() throws -> SlurmPlan { try JSONDecoder().decode(SlurmPlan.self, from: Data(readFile(planPath))) }

    func save(_ plan: SlurmPlan) throws {
        try AtomicFile.write(Array(try JSONEncoder.sorted.encode(plan)), to: planPath)
    }

    func loadStates() -> ArrayTaskStates {
        (try? readFile(statesPath)).flatMap { try? JSONDecoder().decode(ArrayTaskStates.self, from: Data($0)) } ?? ArrayTaskStates()
    }

    func save(_ states: ArrayTaskStates) {
        if let d = try? JSONEncoder.sorted.encode(states) { try? AtomicFile.write(Array(d), to: statesPath, durable: false) }
    }

    func writeSlice(_ stage: String, _ slice: Int, _ entries: ArraySlice<WorkEntry>) throws {
        var out: [UInt8] = []
        let enc = JSONEncoder.sorted
        for e in entries { out += try enc.encode(e); out.append(0x0A) }
        try AtomicFile.write(out, to: slicePath(stage, slice), durable: false)
    }

    func readSlice(_ stage: String, _ slice: Int) throws -> [WorkEntry] {
        let dec = JSONDecoder()
        return try readFile(slicePath(stage, slice)).split(separator: 0x0A).map { try dec.decode(WorkEntry.self, from: Data($0)) }
    }

    /// The results array task `slice` of `stage` wrote (all its attempts), best per item: a success
    /// beats a failure, a later line an earlier one.
    func sliceResults(_ stage: String, _ slice: Int) -> [String: TaskResult] {
        let dir = resultsDir(stage), prefix = Self.slicePrefix(slice)
        var best: [String: TaskResult] = [:]
        for f in ((try? listDirectory(dir)) ?? []) where f.name.hasPrefix(prefix) {
            for r in ResultLog.read(Path.join(dir, f.name)) { best.merge(r) }
        }
        return best
    }
}

extension TaskResult {
    var isSuccess: Bool { state == .succeeded || state == .skipped }
}

extension Dictionary where Key == String, Value == TaskResult {
    /// Keeps a success over a failure for one item.
    mutating func merge(_ r: TaskResult) {
        if let old = self[r.itemID], old.isSuccess, !r.isSuccess { return }
        self[r.itemID] = r
    }
}
