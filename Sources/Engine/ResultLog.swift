import Foundation
import Synchronization
import POSIXFiles

/// Where workers record task outcomes: one append-only JSON-lines file per worker
/// (`<worker>-<host>-<pid>.jsonl`), one line per task, each written with a single write(). A file has
/// one writer, so this is safe on CephFS/NFS; a kill can only leave a torn last line, which `read`
/// skips (that task then runs again). One file per task would cost a create and a rename each, which
/// is what dominated runs of thousands of small files.
final class ResultLog: Sendable {
    let directory: String
    /// Put before each file's name (a Slurm worker uses `s<slice>-`, so a slice's results are found by name).
    let prefix: String
    let files: Mutex<[Int: Int32]>

    init(directory: String, prefix: String = "") {
        self.directory = directory
        self.prefix = prefix
        files = Mutex([:])
    }

    deinit { files.withLock { for fd in $0.values { close(fd) } } }

    /// Appends the result and returns its JSON (which the catalog stores as is: encoded once).
    @discardableResult
    func append(_ r: TaskResult, worker: Int) throws -> String {
        let json = try JSONEncoder.sorted.encode(r)
        var line = json
        line.append(0x0A)
        let fd: Int32 = try files.withLock { open in
            if let fd = open[worker] { return fd }
            let path = Path.join(directory, "\(prefix)\(worker)-\(AtomicFile.hostName)-\(getpid()).jsonl")
            let fd = Glibc.open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
            guard fd >= 0 else { throw POSIXFileError("open", path: path, errno: errno) }
            open[worker] = fd
            return fd
        }
        try line.withUnsafeBytes { b in
            var done = 0
            while done < b.count {
                let n = write(fd, b.baseAddress! + done, b.count - done)
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else { throw POSIXFileError("write", path: directory, errno: errno) }
                done += n
            }
        }
        return String(decoding: json, as: UTF8.self)
    }

    /// Every complete result in a log file (or a single-result `.json` file); torn lines are skipped.
    static func read(_ path: String) -> [TaskResult] {
        guard path.hasSuffix(".jsonl") || path.hasSuffix(".json"), let bytes = try? readFile(path) else { return [] }
        let decoder = JSONDecoder()
        return bytes.split(separator: 0x0A).compactMap { try? decoder.decode(TaskResult.self, from: Data($0)) }
    }
}
