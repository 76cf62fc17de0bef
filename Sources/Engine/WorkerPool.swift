import Foundation
import Synchronization

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
        guard !items.isEmpty else { return }
        let next = Atomic<Int>(0)
        let n = max(1, min(jobs, items.count))
        let done = DispatchGroup()
        for w in 0..<n {
            done.enter()
            let t = Thread {
                while !stopRequested.load(ordering: .relaxed) {
                    let i = next.wrappingAdd(1, ordering: .relaxed).oldValue
                    if i >= items.count { break }
                    body(w, items[i])
                }
                done.leave()
            }
            t.stackSize = 4 << 20
            t.start()
        }
        done.wait()
    }
}
