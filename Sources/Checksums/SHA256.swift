internal import CCrypto
import Foundation
import Synchronization
import POSIXFiles

/// A streaming digest over OpenSSL's EVP interface. Owns its context; not shareable between threads.
public struct Digester: ~Copyable {
    public enum Algorithm: Sendable { case sha256, md5 }
    private let ctx: OpaquePointer

    public init(_ algorithm: Algorithm) {
        let md = algorithm == .sha256 ? EVP_sha256() : EVP_md5()
        guard let c = EVP_MD_CTX_new(), EVP_DigestInit_ex(c, md, nil) == 1 else {
            // Only fails when OpenSSL itself is broken or out of memory: nothing a caller can handle.
            fatalError("OpenSSL could not initialise a digest")
        }
        ctx = c
    }

    deinit { EVP_MD_CTX_free(ctx) }

    public mutating func update(_ bytes: UnsafeRawBufferPointer) {
        guard bytes.count > 0 else { return }
        EVP_DigestUpdate(ctx, bytes.baseAddress, bytes.count)
    }

    /// The raw digest; the digester cannot be used afterwards.
    public consuming func finalizeBytes() -> [UInt8] {
        var out = [UInt8](repeating: 0, count: Int(EVP_MAX_MD_SIZE))
        var len: UInt32 = 0
        EVP_DigestFinal_ex(ctx, &out, &len)
        return Array(out.prefix(Int(len)))
    }

    public static func digest(_ algorithm: Algorithm, _ bytes: UnsafeRawBufferPointer) -> [UInt8] {
        var d = Digester(algorithm)
        d.update(bytes)
        return d.finalizeBytes()
    }

    public static func digest(_ algorithm: Algorithm, _ bytes: [UInt8]) -> [UInt8] {
        bytes.withUnsafeBytes { digest(algorithm, $0) }
    }
}

/// A streaming SHA-256 (EVP picks the SHA-NI/AVX2 code paths that make `openssl dgst` fast).
public struct SHA256Hasher: ~Copyable {
    private var d = Digester(.sha256)

    public init() {}

    public mutating func update(_ bytes: UnsafeRawBufferPointer) { d.update(bytes) }

    public mutating func update(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { update($0) }
    }

    /// The digest as lowercase hex; the hasher cannot be used afterwards.
    public consuming func finalize() -> String { hex(d.finalizeBytes()) }

    /// The raw 32 digest bytes.
    public consuming func finalizeBytes() -> [UInt8] { d.finalizeBytes() }

    public static func hash(_ bytes: [UInt8]) -> String {
        var h = SHA256Hasher()
        h.update(bytes)
        return h.finalize()
    }

    public static func hash(_ text: String) -> String { hash(Array(text.utf8)) }
}

public func hex(_ bytes: [UInt8]) -> String {
    let digits: [UInt8] = Array("0123456789abcdef".utf8)
    var s = [UInt8](); s.reserveCapacity(bytes.count * 2)
    for b in bytes { s.append(digits[Int(b >> 4)]); s.append(digits[Int(b & 15)]) }
    return String(decoding: s, as: UTF8.self)
}

/// The bytes that hex digits (either case, an even number of them) spell; nil for anything else.
public func unhex<S: StringProtocol>(_ text: S) -> [UInt8]? {
    let u = Array(text.utf8)
    guard u.count % 2 == 0 else { return nil }
    func nibble(_ c: UInt8) -> UInt8? {
        switch c {
        case 48...57: c - 48
        case 97...102: c - 87
        case 65...70: c - 55
        default: nil
        }
    }
    var out = [UInt8](); out.reserveCapacity(u.count / 2)
    for i in stride(from: 0, to: u.count, by: 2) {
        guard let hi = nibble(u[i]), let lo = nibble(u[i + 1]) else { return nil }
        out.append(hi << 4 | lo)
    }
    return out
}

/// A digest of a whole file, with the size that was read.
public struct FileDigest: Sendable, Equatable {
    public let sha256: String
    public let size: Int64
}

public enum FileHasher {
    /// Large sequential reads keep syscalls few: a 1 GiB file is read in 64 calls.
    public static let maxReadSize = 16 * 1024 * 1024

    static func bufferSize(for fileSize: Int64) -> Int {
        // Small files get a small buffer: 2000 files must not cost 2000 16 MiB allocations.
        max(64 * 1024, min(maxReadSize, Int(fileSize) + 1))
    }

    /// Streams `path` through SHA-256. `onProgress` gets the bytes read since the last call.
    public static func sha256(path: String, onProgress: ((Int) -> Void)? = nil) throws(POSIXFileError) -> FileDigest {
        let fd = try FileDescriptor(path: path, mode: .read)
        return try hashChunks(of: fd) { (chunk) throws(POSIXFileError) in onProgress?(chunk.count) }
    }

    /// Reads `fd` to its end in large chunks, hashing each and handing it to `body`.
    static func hashChunks(of fd: borrowing FileDescriptor, _ body: (UnsafeRawBufferPointer) throws(POSIXFileError) -> Void) throws(POSIXFileError) -> FileDigest {
        fd.adviseSequential()
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: bufferSize(for: try fd.status().size), alignment: 4096)
        defer { buffer.deallocate() }
        var h = SHA256Hasher()
        var total: Int64 = 0
        while true {
            let n = try fd.read(into: buffer)
            if n == 0 { break }
            let chunk = UnsafeRawBufferPointer(rebasing: buffer[0..<n])
            h.update(chunk)
            try body(chunk)
            total += Int64(n)
        }
        return FileDigest(sha256: h.finalize(), size: total)
    }

    /// Copies `source` to a new file `destination` (which must not exist) while hashing what was read,
    /// then re-reads the destination and checks it hashes the same: a copy is only trusted once verified.
    /// The destination is fsynced; on any failure it is removed.
    public static func copyVerified(from source: String, to destination: String, permissions: UInt32 = 0o444) throws(ChecksumError) -> FileDigest {
        let digest: FileDigest
        do {
            let src = try FileDescriptor(path: source, mode: .read)
            let dst = try FileDescriptor(path: destination, mode: .createExclusive(permissions: 0o600))
            digest = try hashChunks(of: src) { (chunk) throws(POSIXFileError) in try dst.writeAll(chunk) }
            try dst.sync()
        } catch {
            _ = unlinkIgnoringErrors(destination)
            throw .io(error)
        }
        do {
            let check = try sha256(path: destination)
            guard check == digest else {
                _ = unlinkIgnoringErrors(destination)
                throw ChecksumError.copyMismatch(source: source, destination: destination, expected: digest.sha256, actual: check.sha256)
            }
            try setPermissions(destination, permissions)
        } catch let e as ChecksumError {
            throw e
        } catch let e as POSIXFileError {
            _ = unlinkIgnoringErrors(destination)
            throw .io(e)
        } catch {
            throw .io(POSIXFileError("verify", path: destination, errno: 5))
        }
        return digest
    }
}

extension FileHasher {
    /// The SHA-256 of `count` bytes of an open file at `offset`, read in pieces into `buffer`
    /// (`digests` hashes many ranges, in pairs); each piece goes on to `alongside` as well.
    public static func sha256(of fd: Int32, path: String, at offset: Int64, count: Int, buffer: UnsafeMutableRawBufferPointer,
                              alongside: ((UnsafeRawBufferPointer) -> Void)? = nil) throws(POSIXFileError) -> [UInt8] {
        var d = Digester(.sha256)
        var done = 0
        while done < count {
            let piece = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<min(buffer.count, count - done)])
            try FileDescriptor.readFull(fd, path: path, into: piece, at: offset + Int64(done))
            d.update(UnsafeRawBufferPointer(piece))
            alongside?(UnsafeRawBufferPointer(piece))
            done += piece.count
        }
        return d.finalizeBytes()
    }

    /// The file's SHA-256 and the SHA-256 of each `partSize` piece of it, for a multipart upload: the
    /// whole digest goes into the metadata when the upload starts and each part carries its own. The
    /// whole digest is one sequential pass; the part digests are computed meanwhile on the other cores
    /// (re-reading pages the first pass has just cached), so this takes as long as the whole digest
    /// alone wherever there is a second core, and the upload that follows hashes nothing.
    /// `size` is the size the caller saw (read from the file when nil): the parts are cut from it, and
    /// a file that reads as another size fails. `onProgress` gets the bytes of the whole pass. The
    /// whole pass takes the file's CRC-32C as well (a few percent of its time).
    public static func sha256WithParts(path: String, size expected: Int64? = nil, partSize: Int, onProgress: ((Int) -> Void)? = nil)
        throws(POSIXFileError) -> (whole: FileDigest, parts: [[UInt8]], crc32c: CRC32C) {
        let fd = try FileDescriptor(path: path, mode: .read)
        let size = if let expected { expected } else { try fd.status().size }
        let count = Int((size + Int64(partSize) - 1) / Int64(partSize))
        let ranges = (0..<count).map { i in (at: Int64(i) * Int64(partSize), count: Int(min(Int64(partSize), size - Int64(i) * Int64(partSize)))) }
        // Two helpers keep up with the one sequential pass, each hashing two parts at a time where
        // that is faster, reading them in pieces of at most 4 MiB into buffers of its own.
        let width = max(1, min(2, ProcessInfo.processInfo.activeProcessorCount - 1))
        let parts = digests(.sha256, of: fd.rawValue, path: path, ranges: ranges, width: width)
        let whole: FileDigest
        var crc = CRC32C()
        do { whole = try hashChunks(of: fd) { chunk in crc.update(chunk); onProgress?(chunk.count) } } catch {
            parts.cancel(error)
            throw error
        }
        let partDigests = try parts.wait()
        // A file that grew or shrank since: the parts do not describe what the whole digest read.
        guard whole.size == size else { throw POSIXFileError("read (the file changed size while it was hashed)", path: path, errno: EIO) }
        return (whole, partDigests, crc)
    }
}

public enum ChecksumError: Error, CustomStringConvertible, Sendable {
    case io(POSIXFileError)
    case copyMismatch(source: String, destination: String, expected: String, actual: String)

    public var description: String {
        switch self {
        case .io(let e): return e.description
        case let .copyMismatch(source, destination, expected, actual):
            return "copy of \(source) to \(destination) does not verify (sha256 \(actual), source read as \(expected)); the copy was removed — check the storage and run the same command again"
        }
    }
}

/// HMAC-SHA256 (OpenSSL), for request signing.
public enum HMACSHA256 {
    public static func mac(key: [UInt8], _ data: [UInt8]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 32)
        var len: UInt32 = 0
        _ = key.withUnsafeBytes { k in
            data.withUnsafeBytes { d in
                HMAC(EVP_sha256(), k.baseAddress, Int32(k.count), d.baseAddress?.assumingMemoryBound(to: UInt8.self), d.count, &out, &len)
            }
        }
        return out
    }

    /// Raw SHA-256 digest bytes of `data`.
    public static func sha256(_ data: [UInt8]) -> [UInt8] { Digester.digest(.sha256, data) }
}
