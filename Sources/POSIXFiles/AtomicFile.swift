#if canImport(Glibc)
import Glibc
#endif

/// Publishing files so that a reader never sees a half-written one: write to a temporary name in the
/// target directory, fsync, rename over the final name, fsync the directory. A crash at any point
/// leaves either the old file or the new one, plus at most a `.emflow-tmp-*` file that
/// `removeStaleTemporaries` cleans up.
public enum AtomicFile {
    public static let temporaryPrefix = ".emflow-tmp-"

    /// This host's name, as it appears in temporary names (so cleanup never touches a temporary that
    /// a process on another node of a shared file system is still writing).
    public static let hostName: String = {
        var buf = [CChar](repeating: 0, count: 256)
        gethostname(&buf, buf.count)
        let name = String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let h = String(name.map { $0 == "-" ? "_" : $0 })
        return h.isEmpty ? "host" : h
    }()

    /// A temporary path next to `finalPath`, unique to this host, process and call.
    public static func temporaryPath(for finalPath: String) -> String {
        let dir = Path.directory(of: finalPath)
        let base = Path.lastComponent(of: finalPath)
        let suffix = String(UInt64.random(in: 0...UInt64.max), radix: 36)
        return Path.join(dir, "\(temporaryPrefix)\(hostName)-\(getpid())-\(suffix)-\(base)")
    }

    /// Whether a temporary was left by a process of this host that no longer runs.
    static func isStale(_ name: String) -> Bool {
        let parts = name.dropFirst(temporaryPrefix.count).split(separator: "-", maxSplits: 3)
        guard parts.count == 4, String(parts[0]) == hostName, let pid = Int32(parts[1]) else { return false }
        if pid == getpid() { return false }
        return kill(pid, 0) != 0 && errno == ESRCH
    }

    /// Writes `bytes` to `finalPath` atomically. `durable: false` skips the fsyncs: for small
    /// bookkeeping files whose loss only means redoing work, where a crash of the process (not the
    /// machine) must still never expose a partial file.
    public static func write(_ bytes: [UInt8], to finalPath: String, permissions: mode_t = 0o644, durable: Bool = true) throws(POSIXFileError) {
        let tmp = temporaryPath(for: finalPath)
        do {
            let fd = try FileDescriptor(path: tmp, mode: .createExclusive(permissions: permissions))
            try fd.writeAll(bytes)
            if durable { try fd.sync() }
        } catch {
            unlink(tmp)
            throw error
        }
        try publish(temporary: tmp, as: finalPath, durable: durable)
    }

    public static func write(_ text: String, to finalPath: String, permissions: mode_t = 0o644, durable: Bool = true) throws(POSIXFileError) {
        try write(Array(text.utf8), to: finalPath, permissions: permissions, durable: durable)
    }

    /// Renames a complete, synced temporary file to its final name and syncs the directory.
    public static func publish(temporary: String, as finalPath: String, durable: Bool = true) throws(POSIXFileError) {
        guard rename(temporary, finalPath) == 0 else {
            let e = errno
            unlink(temporary)
            throw POSIXFileError("rename to", path: finalPath, errno: e)
        }
        if durable { try syncDirectory(Path.directory(of: finalPath)) }
    }

    public static func syncDirectory(_ dir: String) throws(POSIXFileError) {
        let fd = retryingEINTR { open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
        guard fd >= 0 else { throw POSIXFileError("open directory", path: dir, errno: errno) }
        defer { close(fd) }
        // Some network file systems refuse fsync on directories; the rename is still atomic there.
        if retryingEINTR({ fsync(fd) }) != 0 && errno != EINVAL && errno != EROFS {
            throw POSIXFileError("fsync directory", path: dir, errno: errno)
        }
    }

    /// Removes temporaries left by killed processes of this host in `dir` (not recursive). Returns how many.
    @discardableResult
    public static func removeStaleTemporaries(in dir: String) -> Int {
        guard let d = opendir(dir) else { return 0 }
        defer { closedir(d) }
        var removed = 0
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
            if name.hasPrefix(temporaryPrefix), isStale(name), unlink(Path.join(dir, name)) == 0 { removed += 1 }
        }
        return removed
    }
}

/// Creates directories like `mkdir -p`.
public func makeDirectories(_ path: String, permissions: mode_t = 0o755) throws(POSIXFileError) {
    if path.isEmpty || path == "/" { return }
    if mkdir(path, permissions) == 0 { return }
    let e = errno
    if e == EEXIST {
        if let st = try FileStatus.ifExists(path: path), st.isDirectory { return }
        throw POSIXFileError("mkdir", path: path, errno: ENOTDIR)
    }
    guard e == ENOENT else { throw POSIXFileError("mkdir", path: path, errno: e) }
    try makeDirectories(Path.directory(of: path), permissions: permissions)
    if mkdir(path, permissions) != 0 && errno != EEXIST { throw POSIXFileError("mkdir", path: path, errno: errno) }
}

/// Reads a whole (small) file.
public func readFile(_ path: String) throws(POSIXFileError) -> [UInt8] {
    let fd = try FileDescriptor(path: path, mode: .read)
    var out: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 64 * 1024)
    while true {
        let n: Int = try chunk.withUnsafeMutableBytes { b in Result { () throws(POSIXFileError) in try fd.read(into: b) } }.get()
        if n == 0 { break }
        out.append(contentsOf: chunk[0..<n])
    }
    return out
}
