#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// An error from a system call, with the path it concerned and what a user can do about it.
public struct POSIXFileError: Error, CustomStringConvertible, Sendable {
    public let operation: String
    public let path: String
    public let errno: Int32

    public init(_ operation: String, path: String, errno: Int32) {
        self.operation = operation
        self.path = path
        self.errno = errno
    }

    public var reason: String { String(cString: strerror(errno)) }

    /// What to do about it, where the errno says something a user can act on.
    public var hint: String? {
        switch errno {
        case EACCES, EPERM: return "check the permissions of \(path) and its directory"
        case ENOSPC, EDQUOT: return "free space (or raise the quota) on the file system of \(path), then run the same command again"
        case ENOENT: return "check that \(path) exists"
        case EROFS: return "\(path) is on a read-only file system; choose a writable output root"
        case EISDIR: return "\(path) is a directory where a file was expected"
        case EMFILE, ENFILE: return "too many open files; lower --jobs or raise `ulimit -n`"
        default: return nil
        }
    }

    /// Errors that may go away on their own (a later try can succeed).
    public var isTransient: Bool {
        errno == EINTR || errno == EAGAIN || errno == EIO || errno == ETIMEDOUT || errno == ESTALE || errno == EBUSY
    }

    public var description: String {
        var s = "\(operation) \(path): \(reason)"
        if let hint { s += " (\(hint))" }
        return s
    }
}

/// Calls a system call until it is not interrupted by a signal.
@inline(__always)
func retryingEINTR<T: BinaryInteger>(_ body: () -> T) -> T {
    while true {
        let r = body()
        if r == -1 && errno == EINTR { continue }
        return r
    }
}

/// The one owner of an open file descriptor; it is closed exactly once, when the value goes away.
public struct FileDescriptor: ~Copyable {
    public let rawValue: Int32
    public let path: String

    /// `sharedLog`: created or emptied, and every write goes to the end (children writing to it too).
    public enum Mode: Sendable { case read, createExclusive(permissions: mode_t), writeExisting, sharedLog(permissions: mode_t) }

    public init(path: String, mode: Mode) throws(POSIXFileError) {
        let fd: Int32
        switch mode {
        case .read:
            fd = retryingEINTR { open(path, O_RDONLY | O_CLOEXEC) }
        case .createExclusive(let perms):
            fd = retryingEINTR { open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, perms) }
        case .writeExisting:
            fd = retryingEINTR { open(path, O_WRONLY | O_CLOEXEC) }
        case .sharedLog(let perms):
            fd = retryingEINTR { open(path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, perms) }
        }
        guard fd >= 0 else { throw POSIXFileError("open", path: path, errno: errno) }
        self.rawValue = fd
        self.path = path
    }

    deinit { _ = close(rawValue) }

    /// Reads up to `count` bytes into `buffer`; 0 means end of file.
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws(POSIXFileError) -> Int {
        let n = retryingEINTR { Glibc.read(rawValue, buffer.baseAddress, buffer.count) }
        guard n >= 0 else { throw POSIXFileError("read", path: path, errno: errno) }
        return n
    }

    /// Writes all of `bytes`, looping over short writes.
    public func writeAll(_ bytes: UnsafeRawBufferPointer) throws(POSIXFileError) {
        var done = 0
        while done < bytes.count {
            let n = retryingEINTR { write(rawValue, bytes.baseAddress! + done, bytes.count - done) }
            guard n > 0 else { throw POSIXFileError("write", path: path, errno: n == 0 ? EIO : errno) }
            done += n
        }
    }

    public func writeAll(_ bytes: [UInt8]) throws(POSIXFileError) {
        try bytes.withUnsafeBytes { b in Result { () throws(POSIXFileError) in try writeAll(b) } }.get()
    }

    /// Writes all of `bytes` at `offset` (pwrite), without moving the file position: several threads
    /// may fill different ranges of one file.
    public func writeAll(_ bytes: UnsafeRawBufferPointer, at offset: Int64) throws(POSIXFileError) {
        try Self.writeAll(rawValue, path: path, bytes, at: offset)
    }

    /// As `writeAll(_:at:)` on a raw descriptor, for threads that share one open file.
    public static func writeAll(_ fd: Int32, path: String, _ bytes: UnsafeRawBufferPointer, at offset: Int64) throws(POSIXFileError) {
        var done = 0
        while done < bytes.count {
            let n = retryingEINTR { pwrite(fd, bytes.baseAddress! + done, bytes.count - done, off_t(offset) + off_t(done)) }
            guard n > 0 else { throw POSIXFileError("write", path: path, errno: n == 0 ? EIO : errno) }
            done += n
        }
    }

    /// Reads exactly `buffer.count` bytes at `offset` (pread); a shorter file is an error.
    public func readFull(into buffer: UnsafeMutableRawBufferPointer, at offset: Int64) throws(POSIXFileError) {
        try Self.readFull(rawValue, path: path, into: buffer, at: offset)
    }

    /// As `readFull(into:at:)` on a raw descriptor, for threads that share one open file.
    public static func readFull(_ fd: Int32, path: String, into buffer: UnsafeMutableRawBufferPointer, at offset: Int64) throws(POSIXFileError) {
        var done = 0
        while done < buffer.count {
            let n = retryingEINTR { pread(fd, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done)) }
            guard n >= 0 else { throw POSIXFileError("read", path: path, errno: errno) }
            guard n > 0 else { throw POSIXFileError("read (file shorter than expected)", path: path, errno: EIO) }
            done += n
        }
    }

    /// Reserves `size` bytes for the file (it reads as zeros until written), so a large download
    /// fails at once when the space is not there and lands in few extents. Uses Linux `fallocate`,
    /// never glibc's `posix_fallocate`: where the file system cannot reserve (CephFS, NFS) that one
    /// falls back to writing a byte into every 4 KiB block — millions of small writes over the network
    /// for one large object. There, and on tmpfs (where reserving means zeroing every page that the
    /// data then overwrites), the free space is checked and the file extended sparsely instead.
    public func preallocate(_ size: Int64) throws(POSIXFileError) {
        guard size > 0 else { return }
        if fileSystemType(rawValue) != 0x0102_1994, let fallocate = linuxFallocate {  // not tmpfs
            if fallocate(rawValue, 0, 0, off_t(size)) == 0 { return }
            let e = errno
            if e != EOPNOTSUPP && e != ENOSYS && e != EINVAL { throw POSIXFileError("allocate \(size) bytes for", path: path, errno: e) }
        }
        var vfs = statvfs()
        if fstatvfs(rawValue, &vfs) == 0 && Int64(vfs.f_bavail) * Int64(vfs.f_frsize) < size {
            throw POSIXFileError("allocate \(size) bytes for", path: path, errno: ENOSPC)
        }
        guard ftruncate(rawValue, off_t(size)) == 0 else { throw POSIXFileError("truncate", path: path, errno: errno) }
    }

    public func sync() throws(POSIXFileError) {
        guard retryingEINTR({ fsync(rawValue) }) == 0 else { throw POSIXFileError("fsync", path: path, errno: errno) }
    }

    /// Tells the kernel the file is read once, front to back (larger read-ahead).
    public func adviseSequential() {
        _ = posix_fadvise(rawValue, 0, 0, POSIX_FADV_SEQUENTIAL)
    }

    public func status() throws(POSIXFileError) -> FileStatus {
        var st = stat()
        guard fstat(rawValue, &st) == 0 else { throw POSIXFileError("stat", path: path, errno: errno) }
        return FileStatus(st)
    }
}

/// The parts of `stat` a task key and the catalog use.
public struct FileStatus: Sendable, Equatable {
    public let size: Int64
    /// Modification time in nanoseconds since the epoch.
    public let mtimeNanoseconds: Int64
    public let isDirectory: Bool
    public let isRegularFile: Bool
    public let device: UInt64
    public let inode: UInt64
    public let mode: UInt32

    init(_ st: stat) {
        size = Int64(st.st_size)
        mtimeNanoseconds = Int64(st.st_mtim.tv_sec) * 1_000_000_000 + Int64(st.st_mtim.tv_nsec)
        isDirectory = (st.st_mode & S_IFMT) == S_IFDIR
        isRegularFile = (st.st_mode & S_IFMT) == S_IFREG
        device = UInt64(st.st_dev)
        inode = UInt64(st.st_ino)
        mode = UInt32(st.st_mode & 0o7777)
    }

    public static func of(path: String, followLinks: Bool = true) throws(POSIXFileError) -> FileStatus {
        var st = stat()
        let r = followLinks ? stat(path, &st) : lstat(path, &st)
        guard r == 0 else { throw POSIXFileError("stat", path: path, errno: errno) }
        return FileStatus(st)
    }

    /// nil when the path does not exist.
    public static func ifExists(path: String) throws(POSIXFileError) -> FileStatus? {
        var st = stat()
        if stat(path, &st) == 0 { return FileStatus(st) }
        if errno == ENOENT || errno == ENOTDIR { return nil }
        throw POSIXFileError("stat", path: path, errno: errno)
    }
}

/// A C library function that Swift's Glibc module does not declare, looked up once.
func libcFunction<F>(_ name: String, as type: F.Type) -> F? {
    dlsym(UnsafeMutableRawPointer(bitPattern: 0), name).map { unsafeBitCast($0, to: type) }
}

/// Linux's fallocate(2).
private let linuxFallocate = libcFunction("fallocate", as: (@convention(c) (Int32, Int32, off_t, off_t) -> Int32).self)
/// fstatfs(2); only its first field (`f_type` on 64-bit Linux) is read.
private let linuxFstatfs = MemoryLayout<Int>.size == 8 ? libcFunction("fstatfs", as: (@convention(c) (Int32, UnsafeMutableRawPointer) -> Int32).self) : nil

/// The file system's magic number, or 0 when unknown.
private func fileSystemType(_ fd: Int32) -> Int {
    guard let fstatfs = linuxFstatfs else { return 0 }
    var buffer = [UInt64](repeating: 0, count: 64)  // struct statfs is 120 bytes
    return buffer.withUnsafeMutableBytes { fstatfs(fd, $0.baseAddress!) == 0 ? Int(truncatingIfNeeded: $0.load(as: UInt64.self)) : 0 }
}
