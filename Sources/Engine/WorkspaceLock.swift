import Foundation
import POSIXFiles
#if canImport(Glibc)
import Glibc
#endif

/// One driver per workspace at a time: two drivers would both claim the same unfinished runs.
/// An flock on `<workspace>/lock` (released by the kernel when the process dies, even by kill -9).
public final class WorkspaceLock: Sendable {
    let fd: Int32

    public convenience init(workspace: String) throws(EngineError) {
        try self.init(path: Path.join(workspace, "lock")) { holder in
            .usage("another emflow run (pid \(holder)) is using the workspace \(workspace); wait for it to finish, or stop it first")
        }
    }

    /// Takes the lock at `path` without waiting; when another process holds it, throws what `busy`
    /// makes of the holder's description (its pid and start time).
    public init(path: String, busy: (String) -> EngineError) throws(EngineError) {
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw .io(POSIXFileError("open", path: path, errno: errno)) }
        if flock(fd, LOCK_EX | LOCK_NB) != 0 {
            var buf = [UInt8](repeating: 0, count: 128)
            let n = pread(fd, &buf, 128, 0)
            let holder = n > 0 ? String(decoding: buf[0..<n], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines) : "?"
            close(fd)
            throw busy(holder)
        }
        ftruncate(fd, 0)
        let f = ISO8601DateFormatter()
        let pid = Array("\(getpid()), since \(f.string(from: Date()))\n".utf8)
        _ = pwrite(fd, pid, pid.count, 0)
        self.fd = fd
    }

    deinit { close(fd) }
}
