import Synchronization
import WorkflowSpec

/// How a caller that chooses its own items (a backfill batch, a reprocess selection) runs them: on the
/// spec's executor unless told otherwise, locally to the end, or submitted to Slurm (followed with `wait`).
public struct LaunchOptions: Sendable {
    public var executor: ExecutorSpec.Kind? = nil
    public var wait = false
    public var jobs: Int?
    public var pollInterval: Double?
    public var progress = true
    public var log: @Sendable (String) -> Void = { _ in }
    public init() {}
}

/// What became of the launch.
public struct Launched: Sendable {
    /// The new run (nil when Slurm still runs an earlier one of the workflow and nothing was submitted).
    public var runID: String?
    /// The run's state; `submitted` for a Slurm run that was not followed.
    public var state: String
    public var summary: RunSummary?
    public var submission: SlurmSubmission?
}

extension RunDriver {
    public func launch(_ items: @escaping ItemSource, _ o: LaunchOptions) throws(EngineError) -> Launched {
        if (o.executor ?? workflow.executor.kind) == .slurm {
            var so = SlurmOptions()
            so.wait = o.wait; so.progress = o.progress; so.log = o.log; so.pollInterval = o.pollInterval
            so.items = items
            let sub = try SlurmExecutor(driver: self).run(so)
            return Launched(runID: sub.attachedTo == nil ? sub.runID : nil, state: sub.summary?.state ?? "submitted",
                            summary: sub.summary, submission: sub)
        }
        var ro = RunOptions()
        ro.jobs = o.jobs; ro.progress = o.progress; ro.log = o.log
        ro.items = items
        let s = try run(ro)
        return Launched(runID: s.runID, state: s.state, summary: s, submission: nil)
    }
}

/// What an item source learnt while it ran inside an executor (which items it chose or found), for
/// its caller to read after the launch.
final class Captured<T: Sendable>: Sendable {
    let value: Mutex<T>
    init(_ initial: T) { value = Mutex(initial) }
    func set(_ v: T) { value.withLock { $0 = v } }
    func get() -> T { value.withLock { $0 } }
}
