#if canImport(Glibc)
import Glibc
#endif

@discardableResult
public func unlinkIgnoringErrors(_ path: String) -> Bool { unlink(path) == 0 }

public func setPermissions(_ path: String, _ mode: UInt32) throws(POSIXFileError) {
    guard chmod(path, mode_t(mode)) == 0 else { throw POSIXFileError("chmod", path: path, errno: errno) }
}

/// Makes a hard link; returns false (without throwing) when the file systems differ or links are not
/// supported, so the caller can fall back to a copy.
public func hardLink(from source: String, to destination: String) throws(POSIXFileError) -> Bool {
    if link(source, destination) == 0 { return true }
    let e = errno
    if e == EXDEV || e == EPERM || e == EMLINK || e == ENOTSUP || e == EOPNOTSUPP { return false }
    throw POSIXFileError("link to", path: destination, errno: e)
}

/// Lists a directory's entry names (not `.`/`..`), with their types where the file system says.
public struct DirectoryEntry: Sendable {
    public enum Kind: Sendable { case file, directory, symlink, other, unknown }
    public let name: String
    public let kind: Kind
}

public func listDirectory(_ path: String) throws(POSIXFileError) -> [DirectoryEntry] {
    guard let d = opendir(path) else { throw POSIXFileError("list directory", path: path, errno: errno) }
    defer { closedir(d) }
    var out: [DirectoryEntry] = []
    while let e = readdir(d) {
        let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
        if name == "." || name == ".." { continue }
        let kind: DirectoryEntry.Kind
        switch Int32(e.pointee.d_type) {
        case Int32(DT_REG): kind = .file
        case Int32(DT_DIR): kind = .directory
        case Int32(DT_LNK): kind = .symlink
        case Int32(DT_UNKNOWN): kind = .unknown
        default: kind = .other
        }
        out.append(DirectoryEntry(name: name, kind: kind))
    }
    return out
}

/// Whether the current process may write to `path` (a directory).
public func isWritable(_ path: String) -> Bool { access(path, W_OK) == 0 }

public func isTerminal(_ fd: Int32) -> Bool { isatty(fd) == 1 }

public func currentDirectory() -> String {
    var buf = [CChar](repeating: 0, count: 4096)
    guard getcwd(&buf, buf.count) != nil else { return "." }
    return String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

public func environment(_ name: String) -> String? {
    guard let v = getenv(name) else { return nil }
    return String(validatingCString: v)
}

public var processorCount: Int { max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))) }
