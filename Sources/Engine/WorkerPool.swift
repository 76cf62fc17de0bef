import Synchronization
import POSIXFiles

/// Set by SIGINT/SIGTERM: no new task starts; running ones finish and are recorded.
public let stopRequested = Atomic<Bool>(false)

/// A fixed number of threads working through a list. Stage code is synchronous file I/O and hashing,
/// so it runs on plain threads rather than blocking Swift's cooperative pool.
public enum WorkerPool {
    public static func run<T: Sendable>(_ items: [T], jobs: Int, _ body: @escaping @Sendable (T) -> Void) {
        run(items, jobs: jobs) { _, item in body(item) }
    }

    /// As `run`, telling the body which worker (0..<jobs) runs it, for per-worker state.
    public static func run<T: Sendable>(_ items: [T], jobs: Int, _ body: @escaping @Sendable (Int, T) -> Void) {
        ParallelThreads.run(count: items.count, width: jobs, shouldStop: { stopRequested.load(ordering: .relaxed) }) { w, i in
            body(w, items[i])
        }
    }
}
