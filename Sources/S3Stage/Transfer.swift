import Foundation
import Synchronization
import Checksums
import POSIXFiles

/// The outcome of moving one object.
public struct TransferResult: Sendable {
    public var size: Int64
    public var sha256: String
    public var etag: String
    /// What the content was checked against: "sha256", "md5 (etag)" or "size".
    public var verifiedBy: String
}

/// One part's bytes in memory, page-aligned, freed when the last user lets go.
final class PartBuffer: @unchecked Sendable {
    let bytes: UnsafeMutableRawBufferPointer
    var count = 0
    init(capacity: Int) { bytes = .allocate(byteCount: max(capacity, 1), alignment: 4096) }
    deinit { bytes.deallocate() }
    var filled: UnsafeRawBufferPointer { UnsafeRawBufferPointer(rebasing: bytes[0..<count]) }

    /// Appends `chunk`; false when it would overflow `capacity` (a server sending more than asked).
    func append(_ chunk: UnsafeRawBufferPointer, capacity: Int) -> Bool {
        guard count + chunk.count <= capacity else { return false }
        if let src = chunk.baseAddress, chunk.count > 0 { (bytes.baseAddress! + count).copyMemory(from: src, byteCount: chunk.count) }
        count += chunk.count
        return true
    }
}

/// Part buffers for reuse: a fresh 16 MiB allocation costs a page fault per 4 KiB.
final class PartBufferPool: @unchecked Sendable {
    private let lock = NSLock()
    private var free: [PartBuffer] = []

    func take(capacity: Int) -> PartBuffer {
        lock.lock()
        let b = free.popLast()
        lock.unlock()
        if let b, b.bytes.count >= capacity { b.count = 0; return b }
        return PartBuffer(capacity: capacity)
    }

    func give(_ b: PartBuffer) { lock.lock(); free.append(b); lock.unlock() }
}

/// Hashes parts that finish out of order, in order: a part is hashed as soon as all parts before it
/// are, and parts waiting their turn are kept (bounded by the parts in flight). Hashed buffers go
/// back to the pool.
final class OrderedHasher: @unchecked Sendable {
    private let lock = NSLock()
    private var sha: SHA256Hasher? = SHA256Hasher()
    private var md5: Digester?
    private var next = 0
    private var waiting: [Int: PartBuffer] = [:]
    let pool: PartBufferPool

    init(md5: Bool, pool: PartBufferPool = PartBufferPool()) { self.md5 = md5 ? Digester(.md5) : nil; self.pool = pool }

    func submit(_ index: Int, _ part: PartBuffer) {
        lock.lock(); defer { lock.unlock() }
        waiting[index] = part
        while let b = waiting.removeValue(forKey: next) {
            sha?.update(b.filled)
            md5?.update(b.filled)
            next += 1
            pool.give(b)
        }
    }

    /// The digests of everything submitted; call once.
    func finish() -> (sha256: String, md5: String?) {
        lock.lock(); defer { lock.unlock() }
        var m: String? = nil
        if let d = md5.take() { m = hex(d.finalizeBytes()) }
        return (sha.take()!.finalize(), m)
    }
}

extension S3Client {
    /// The part size for an object: at least 8 MiB (S3's minimum is 5 MiB), more for objects so large
    /// that 10 000 parts would not hold them, or as configured.
    public func partSize(for size: Int64) -> Int {
        let minimum = Int64(config.partSize ?? 16 << 20)
        let needed = (size + 9_999) / 10_000
        let mib = Int64(1 << 20)
        return Int(max(minimum, (needed + mib - 1) / mib * mib))
    }

    // MARK: - Download

    /// Downloads an object to `path`: into a preallocated temporary file next to it (parallel ranged
    /// GETs written with pwrite for large objects), checked against the size and the recorded SHA-256
    /// (or the ETag's MD5), fsynced, then renamed. The destination never holds a partial or wrong file;
    /// a changed object mid-download (ETag) fails cleanly and is retried from scratch.
    @discardableResult
    public func download(bucket: String, key: String, to path: String, known: S3Object? = nil, permissions: UInt32 = 0o644,
                         progress: (@Sendable (Int) -> Void)? = nil) throws(S3Error) -> TransferResult {
        let obj: S3Object
        // A listing's size and ETag are enough for an object fetched in one GET: its metadata comes with
        // the GET reply. Larger ones are HEADed first, to know what to verify before the parts arrive.
        if let known, known.size <= Int64(partSize(for: known.size)) || !known.metadata.isEmpty || known.checksumSHA256 != nil { obj = known }
        else {
            guard let o = try head(bucket: bucket, key: key) else {
                throw S3Error(operation: "GetObject", bucket: bucket, key: key, status: 404, code: "NoSuchKey", message: "",
                              hint: S3Error.hint(code: "NoSuchKey", status: 404, bucket: bucket, config: config))
            }
            obj = o
        }
        func ioError(_ e: POSIXFileError) -> S3Error {
            S3Error(operation: "download", bucket: bucket, key: key, status: nil, code: nil, message: e.description,
                    hint: "check that the destination directory exists, is writable and has room")
        }
        let dir = Path.directory(of: path)
        do { try makeDirectories(dir) } catch { throw ioError(error) }
        // A whole-download attempt: a wrong checksum (or an object replaced meanwhile) starts over once.
        var attempt = 0
        while true {
            attempt += 1
            let tmp = AtomicFile.temporaryPath(for: path)
            do throws(S3Error) {
                let result = try downloadOnce(obj, bucket: bucket, tmp: tmp, progress: progress)
                do {
                    try setPermissions(tmp, permissions)
                    try AtomicFile.publish(temporary: tmp, as: path)
                } catch { throw ioError(error) }
                return result
            } catch {
                _ = unlinkIgnoringErrors(tmp)
                if attempt < 2 && (error.code == "ChecksumMismatch" || error.code == "PreconditionFailed") { continue }
                throw error
            }
        }
    }

    private func downloadOnce(_ obj: S3Object, bucket: String, tmp: String, progress: (@Sendable (Int) -> Void)?) throws(S3Error) -> TransferResult {
        let key = obj.key
        let fd = try Self.createPreallocated(tmp, size: obj.size) { e in
            S3Error(operation: "download", bucket: bucket, key: key, status: nil, code: nil, message: e.description,
                    hint: "check that the destination is writable and has \(obj.size) bytes free")
        }
        let hasher = OrderedHasher(md5: obj.recordedSHA256 == nil && obj.etagMD5 != nil)
        let firstReply = Mutex<[String: String]?>(nil)
        let part = Int64(partSize(for: obj.size))
        let count = max(1, Int((obj.size + part - 1) / part))
        let firstError = Mutex<S3Error?>(nil)
        let rawFD = fd.rawValue
        let path = tmp
        ParallelThreads.run(count: count, width: count == 1 ? 1 : config.concurrency,
                            shouldStop: { firstError.withLock { $0 != nil } }) { _, i in
            let start = Int64(i) * part
            let length = Int(min(part, obj.size - start))
            do throws(S3Error) {
                let buf = hasher.pool.take(capacity: length)
                try self.retrying("GetObject") { () throws(S3Error) in
                    buf.count = 0
                    var r = Request(operation: "GetObject", method: "GET", bucket: bucket, key: key)
                    r.headers.append(("x-amz-checksum-mode", "ENABLED"))
                    if !obj.etag.isEmpty { r.headers.append(("if-match", "\"\(obj.etag)\"")) }
                    if obj.size > 0 { r.headers.append(("range", "bytes=\(start)-\(start + Int64(length) - 1)")) }
                    let reply = try self.sendOnce(r, body: nil) { chunk in
                        buf.append(chunk, capacity: length)
                    }
                    guard buf.count == length else {
                        throw S3Error(operation: "GetObject", bucket: bucket, key: key, status: nil, code: nil,
                                      message: "bytes \(start)-\(start + Int64(length) - 1): got \(buf.count) of \(length) bytes",
                                      hint: "the connection ended early; it was retried", retryable: true)
                    }
                    if i == 0 { firstReply.withLock { $0 = reply.headers } }
                }
                do { try FileDescriptor.writeAll(rawFD, path: path, buf.filled, at: start) } catch {
                    throw S3Error(operation: "download", bucket: bucket, key: key, status: nil, code: nil, message: "\(error)",
                                  hint: "check the destination file system (space, quota)")
                }
                hasher.submit(i, buf)
                progress?(length)
            } catch {
                firstError.withLock { if $0 == nil { $0 = error } }
            }
        }
        if let e = firstError.withLock({ $0 }) { throw e }
        let (sha, md5) = hasher.finish()
        var verifiedBy = "size"
        var expectSHA = obj.recordedSHA256
        if expectSHA == nil, let h = firstReply.withLock({ $0 }) { expectSHA = Self.object(key: key, headers: h).recordedSHA256 }
        if let expectSHA {
            guard sha == expectSHA else { throw mismatch(bucket, key, "sha256 \(sha), the object records \(expectSHA)") }
            verifiedBy = "sha256"
        } else if let expectMD5 = obj.etagMD5, let md5 {
            guard md5 == expectMD5 else { throw mismatch(bucket, key, "md5 \(md5), the ETag is \(expectMD5)") }
            verifiedBy = "md5 (etag)"
        }
        do {
            let st = try fd.status()
            guard st.size == obj.size else { throw mismatch(bucket, key, "size \(st.size), the object has \(obj.size)") }
            try fd.sync()
        } catch let e as S3Error { throw e } catch {
            throw S3Error(operation: "download", bucket: bucket, key: key, status: nil, code: nil, message: "\(error)", hint: "check the destination file system")
        }
        return TransferResult(size: obj.size, sha256: sha, etag: obj.etag, verifiedBy: verifiedBy)
    }

    static func createPreallocated(_ path: String, size: Int64, _ wrap: (POSIXFileError) -> S3Error) throws(S3Error) -> FileDescriptor {
        do {
            let fd = try FileDescriptor(path: path, mode: .createExclusive(permissions: 0o600))
            try fd.preallocate(size)
            return fd
        } catch { throw wrap(error) }
    }

    static func openForReading(_ path: String, _ wrap: (POSIXFileError) -> S3Error) throws(S3Error) -> FileDescriptor {
        do { return try FileDescriptor(path: path, mode: .read) } catch { throw wrap(error) }
    }

    private func mismatch(_ bucket: String, _ key: String, _ what: String) -> S3Error {
        S3Error(operation: "download", bucket: bucket, key: key, status: nil, code: "ChecksumMismatch",
                message: "what arrived does not verify: \(what)",
                hint: "the object or the transfer is damaged; nothing was written — run the same command again, and if it persists check the object")
    }

    // MARK: - Upload

    /// Uploads the file at `path` as `bucket/key` with `x-amz-meta-sha256`. Small files go in one PUT
    /// whose SHA-256 the server verifies; large ones as a multipart upload with parallel parts (each
    /// verified by the server against its SHA-256), aborted on failure so no half object is ever
    /// visible. When `sha256` is given, the file is checked against it while it is read, and the
    /// upload aborted on mismatch.
    /// `progress` gets the bytes sent; `hashing` the bytes read for the SHA-256 before a multipart
    /// upload can start (a minute for 100 GB), so that a progress line does not look stuck.
    @discardableResult
    public func upload(file path: String, bucket: String, key: String, sha256 known: String? = nil, contentType: String? = nil,
                       metadata: [String: String] = [:], progress: (@Sendable (Int) -> Void)? = nil,
                       hashing: ((Int) -> Void)? = nil) throws(S3Error) -> TransferResult {
        @Sendable func ioError(_ e: Error) -> S3Error {
            S3Error(operation: "upload", bucket: bucket, key: key, status: nil, code: nil, message: "\(e)", hint: "check the source file")
        }
        let fd = try Self.openForReading(path) { ioError($0) }
        let size: Int64
        do { size = try fd.status().size } catch { throw ioError(error) }
        let part = partSize(for: size)
        if size <= Int64(part) {
            var body = [UInt8](repeating: 0, count: Int(size))
            do { try body.withUnsafeMutableBytes { b in try fd.readFull(into: b, at: 0) } } catch { throw ioError(error) }
            let sha = SHA256Hasher.hash(body)
            if let known, known != sha { throw changed(path, bucket, key, known, sha) }
            let etag = try put(bucket: bucket, key: key, body: body, contentType: contentType, metadata: metadata)
            progress?(body.count)
            return TransferResult(size: size, sha256: sha, etag: etag, verifiedBy: "sha256")
        }
        // The whole-file SHA-256 goes into the metadata, which is set when the upload starts.
        // Without a known digest the file is read once up front for it, and each part's digest is
        // computed alongside on the other cores; with one, each part is hashed as it goes out.
        let sha: String, digests: [[UInt8]]?
        if let known { sha = known; digests = nil } else {
            do {
                let (whole, parts) = try FileHasher.sha256WithParts(path: path, size: size, partSize: part, onProgress: hashing)
                sha = whole.sha256
                digests = parts
            } catch { throw ioError(error) }
        }
        var meta = metadata
        meta["sha256"] = sha
        let uploadID = try createMultipart(bucket: bucket, key: key, metadata: meta, contentType: contentType)
        let count = Int((size + Int64(part) - 1) / Int64(part))
        let etags = Mutex<[(etag: String, checksum: String)]>(Array(repeating: ("", ""), count: count))
        let firstError = Mutex<S3Error?>(nil)
        let pool = PartBufferPool()
        let hasher = known == nil ? nil : OrderedHasher(md5: false, pool: pool)
        let rawFD = fd.rawValue
        ParallelThreads.run(count: count, width: config.concurrency, shouldStop: { firstError.withLock { $0 != nil } }) { _, i in
            let start = Int64(i) * Int64(part)
            let length = Int(min(Int64(part), size - start))
            let buf = pool.take(capacity: length)
            buf.count = length
            do { try FileDescriptor.readFull(rawFD, path: path, into: UnsafeMutableRawBufferPointer(rebasing: buf.bytes[0..<length]), at: start) } catch {
                firstError.withLock { if $0 == nil { $0 = ioError(error) } }
                return
            }
            do throws(S3Error) {
                let etag = try self.uploadPart(bucket: bucket, key: key, uploadID: uploadID, number: i + 1, body: buf.filled, digest: digests?[i])
                etags.withLock { $0[i] = etag }
                if let hasher { hasher.submit(i, buf) } else { pool.give(buf) }
                progress?(length)
            } catch {
                firstError.withLock { if $0 == nil { $0 = error } }
            }
        }
        var failure = firstError.withLock { $0 }
        if failure == nil, let hasher {
            let got = hasher.finish().sha256
            if got != sha { failure = changed(path, bucket, key, sha, got) }
        }
        if failure == nil {
            do {
                let etag = try completeMultipart(bucket: bucket, key: key, uploadID: uploadID, parts: etags.withLock { $0 })
                return TransferResult(size: size, sha256: sha, etag: etag, verifiedBy: "sha256")
            } catch { failure = error }
        }
        // Abort so that no half object is visible and the parts do not linger on the server.
        try? abortMultipart(bucket: bucket, key: key, uploadID: uploadID)
        throw failure!
    }

    private func changed(_ path: String, _ bucket: String, _ key: String, _ expected: String, _ got: String) -> S3Error {
        S3Error(operation: "upload", bucket: bucket, key: key, status: nil, code: "SourceChanged",
                message: "\(path) reads as sha256 \(got), not the recorded \(expected)",
                hint: "the file changed after it was checksummed; nothing was uploaded — check the file and run the same command again")
    }
}
