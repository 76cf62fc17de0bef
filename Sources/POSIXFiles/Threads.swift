import Foundation
import Synchronization

/// A fixed number of plain threads working through `0..<count`. Work here is blocking I/O (files,
/// sockets), so it runs on threads of its own rather than blocking Swift's cooperative pool, and
/// `width` may exceed the core count.
public enum ParallelThreads {
    /// Runs `body(worker, index)` for every index; `shouldStop` is checked before each index.
    public static func run(count: Int, width: Int, shouldStop: @escaping @Sendable () -> Bool = { false },
                           _ body: @escaping @Sendable (_ worker: Int, _ index: Int) -> Void) {
        guard count > 0 else { return }
        let n = max(1, min(width, count))
        if n == 1 {
            // One worker: this thread (no thread start for a single small transfer).
            for i in 0..<count where !shouldStop() { body(0, i) }
            return
        }
        start(count: count, width: n, shouldStop: shouldStop, body).wait()
    }

    /// Started work; `wait()` returns once every thread has finished.
    public struct Running: Sendable {
        let group: DispatchGroup
        public func wait() { group.wait() }
    }

    /// As `run`, but returns at once: the caller goes on (e.g. consumes results in order as they come)
    /// and must `wait()` before anything the body uses goes away.
    public static func start(count: Int, width: Int, shouldStop: @escaping @Sendable () -> Bool = { false },
                             _ body: @escaping @Sendable (_ worker: Int, _ index: Int) -> Void) -> Running {
        let next = Atomic<Int>(0)
        let done = DispatchGroup()
        for w in 0..<max(1, min(width, count)) where count > 0 {
            done.enter()
            let t = Thread {
                while !shouldStop() {
                    let i = next.wrappingAdd(1, ordering: .relaxed).oldValue
                    if i >= count { break }
                    body(w, i)
                }
                done.leave()
            }
            t.stackSize = 4 << 20
            t.start()
        }
        return Running(group: done)
    }
}
