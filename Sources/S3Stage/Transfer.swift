import Foundation
import Synchronization
import Checksums
import POSIXFiles

/// The outcome of moving one object.
public struct TransferResult: Sendable {
    public var size: Int64
    /// The content's SHA-256; nil for a download that was not asked for it and was verified by the
    /// object's per-part checksums instead.
    public var sha256: String?
    public var etag: String
    /// What the content was checked against: "sha256", "sha256 of N parts", "md5 of N parts (etag)",
    /// "md5 (etag)" or "size".
    public var verifiedBy: String
}

/// How a multipart object was uploaded, as far as checking it goes: parts of one size but the last
/// (as S3 clients upload them), and what the server says of them: its composite checksum, the SHA-256
/// of the parts' SHA-256 digests, which it verified part by part as they arrived; or, for an object
/// uploaded without checksums, its ETag, the MD5 of the parts' MD5 digests.
struct PartLayout: Sendable {
    let partSize: Int64
    let count: Int
    let algorithm: Digester.Algorithm
    /// The digest of the parts' digests that the server holds.
    let composite: [UInt8]
    /// Whether the parts are of one size but the last. Parts that are not are checked after the
    /// download, along their true sizes (`checkAlongTrueParts`), rather than as they arrive.
    var uniform = true

    /// How a check by these parts is named: "sha256 of N parts" or "md5 of N parts (etag)".
    var name: String { algorithm == .sha256 ? "sha256 of \(count) parts" : "md5 of \(count) parts (etag)" }
}

/// The digests of an object's upload parts, each hashed by the thread that fetches it, in order, as
/// its bytes are written: parts are checked in parallel instead of one hash over the whole object in
/// file order, which one core caps (1–2 GB/s) below what a fast link delivers. The fetching threads
/// meet at a `DigestPairing` to hash their blocks two at a time, interleaved on one core.
final class PartDigests: @unchecked Sendable {
    let layout: PartLayout
    private let size: Int64
    private let digests: Mutex<[[UInt8]]>
    /// One for the process: ranges of objects downloaded side by side pair up too.
    static let pairing = DigestPairing()

    init(_ layout: PartLayout, size: Int64) {
        self.layout = layout; self.size = size
        digests = Mutex(Array(repeating: [], count: layout.count))
    }

    /// The running hash of one fetched range (whole parts, fed in order by one thread), open at the
    /// pairing until `close()`.
    final class Cursor {
        private let owner: PartDigests
        private var stream: DigestStream? = nil
        private var closed = false
        init(_ owner: PartDigests) { self.owner = owner; PartDigests.pairing.enter() }

        /// `bytes` are the object's at `offset`, right after those fed before for this range.
        func feed(_ bytes: UnsafeRawBufferPointer, at offset: Int64) {
            var offset = offset, rest = bytes
            while !rest.isEmpty {
                let part = Int(offset / owner.layout.partSize)
                let end = min(Int64(part + 1) * owner.layout.partSize, owner.size)
                let n = Int(min(Int64(rest.count), end - offset))
                if stream == nil { stream = DigestStream(owner.layout.algorithm) }
                PartDigests.pairing.update(stream!, UnsafeRawBufferPointer(rebasing: rest[..<n]))
                offset += Int64(n)
                rest = UnsafeRawBufferPointer(rebasing: rest[n...])
                if offset == end {
                    let d = stream.take()!.finalizeBytes()
                    owner.digests.withLock { $0[part] = d }
                }
            }
        }

        /// This range is done (or failed): no other thread waits for it to pair.
        func close() {
            guard !closed else { return }
            closed = true
            PartDigests.pairing.leave()
        }

        deinit { close() }
    }

    /// Whether every part was hashed and together they give the server's digest of the parts.
    func verify() -> Bool {
        let all = digests.withLock { $0 }
        guard all.allSatisfy({ !$0.isEmpty }) else { return false }
        return Digester.digest(layout.algorithm, all.flatMap { $0 }) == layout.composite
    }
}

/// The CRC-32C of each range of a download, set by the thread that fetched it, and joined in file
/// order: the whole content's.
final class RangeCRCs: Sendable {
    private let crcs: Mutex<[CRC32C]>
    private let size: Int64, rangeSize: Int64

    init(size: Int64, rangeSize: Int64) {
        self.size = size; self.rangeSize = max(1, rangeSize)
        crcs = Mutex(Array(repeating: CRC32C(), count: max(1, Int((size + self.rangeSize - 1) / self.rangeSize))))
    }

    func set(_ range: Int, _ crc: CRC32C) { crcs.withLock { $0[range] = crc } }

    var whole: CRC32C {
        crcs.withLock { all in
            all.enumerated().reduce(CRC32C()) { w, r in CRC32C.combine(w, r.element, length: max(0, min(rangeSize, size - Int64(r.offset) * rangeSize))) }
        }
    }
}

/// The object as a download's first reply shows it, set from whichever thread sees that reply.
final class Reply: Sendable {
    private let stored = Mutex<S3Object?>(nil)
    var object: S3Object? { stored.withLock { $0 } }
    @discardableResult func set(_ o: S3Object) -> S3Object { stored.withLock { $0 = o }; return o }
}

/// A block of bytes on their way to a file and its hash, page-aligned, reused through a pool.
final class Block: @unchecked Sendable {
    let bytes: UnsafeMutableRawBufferPointer
    var count = 0
    init(capacity: Int) { bytes = .allocate(byteCount: max(capacity, 1), alignment: 4096) }
    deinit { bytes.deallocate() }
    var filled: UnsafeRawBufferPointer { UnsafeRawBufferPointer(rebasing: bytes[0..<count]) }
}

/// Hashes, in file order, the blocks of a file whose parts are written concurrently, without reading
/// anything back: each block is handed over once written and kept until the frontier reaches it.
/// Memory stays bounded: writers of parts ahead of the frontier wait while more than `window` bytes
/// are held, and blocks are reused. A single part is hashed as it comes; with several, a thread of
/// its own hashes, so on a busy machine the hash keeps pace with the transfer instead of being left
/// to do alone at the end.
final class OrderedHasher: @unchecked Sendable {
    private let cond = NSCondition()
    private var sha: SHA256Hasher? = SHA256Hasher()
    private var md5: Digester?
    private let size: Int64
    private let partSize: Int64
    private let window: Int64
    let blockSize: Int
    private var held: [Int64: Block] = [:]
    private var heldBytes: Int64 = 0
    private var free: [Block] = []
    private var hashed: Int64 = 0
    private var stopped = false
    private var running = false
    private let parts: Int

    init(size: Int64, partSize: Int64, window: Int64, blockSize: Int = 1 << 20, md5: Bool) {
        self.size = size; self.partSize = max(partSize, 1); self.window = max(window, 1)
        self.blockSize = Self.blockSize(partSize: self.partSize, size: size, largest: blockSize)
        self.md5 = md5 ? Digester(.md5) : nil
        parts = max(1, Int((size + self.partSize - 1) / self.partSize))
        if parts > 1 {
            running = true
            let t = Thread { [self] in hashLoop() }
            t.stackSize = 1 << 20
            t.start()
        }
    }

    /// Blocks of up to 1 MiB: a small object or part needs no larger one.
    static func blockSize(partSize: Int64, size: Int64, largest: Int = 1 << 20) -> Int {
        Int(max(1, min(Int64(largest), partSize, size)))
    }

    /// How far writers may run ahead of the hash: 32 MiB (measured as fast as 128 MiB for a 1 GiB
    /// object in 16 MiB parts, with 90 MB rather than 180 MB resident), or two parts if larger.
    static func window(partSize: Int64) -> Int64 { max(32 << 20, 2 * partSize) }

    /// An empty block of `blockSize` bytes, to fill and hand back with `add`.
    func takeBlock() -> Block {
        cond.lock()
        let b = free.popLast()
        cond.unlock()
        guard let b else { return Block(capacity: blockSize) }
        b.count = 0
        return b
    }

    /// `block` holds the bytes at `offset` of part `part`, right after those added before for it.
    func add(_ block: Block, part: Int, at offset: Int64) {
        cond.lock()
        defer { cond.unlock() }
        if parts == 1 {
            update(block.filled)
            hashed += Int64(block.count)
            free.append(block)
            return
        }
        held[offset] = block
        heldBytes += Int64(block.count)
        cond.broadcast()
        // The part at the frontier never waits: only it lets the hash move on.
        while heldBytes > window && Int(hashed / partSize) != part && !stopped { cond.wait() }
    }

    private func hashLoop() {
        cond.lock()
        defer { running = false; cond.broadcast(); cond.unlock() }
        while hashed < size {
            guard let b = held.removeValue(forKey: hashed) else {
                if stopped { return }
                cond.wait()
                continue
            }
            cond.unlock()
            update(b.filled)
            cond.lock()
            hashed += Int64(b.count)
            heldBytes -= Int64(b.count)
            free.append(b)
            cond.broadcast()
        }
    }

    private func update(_ bytes: UnsafeRawBufferPointer) {
        sha?.update(bytes)
        md5?.update(bytes)
    }

    /// Drops the digests not needed after all, as long as nothing is hashed yet (a single GET learns
    /// from its reply's headers which of them it can be checked by).
    func keep(sha256: Bool, md5: Bool) {
        cond.lock(); defer { cond.unlock() }
        guard hashed == 0, held.isEmpty else { return }
        if !sha256 { sha = nil }
        if !md5 { self.md5 = nil }
    }

    /// Stops hashing (the transfer failed): writers waiting go on, the hashing thread ends.
    func cancel() {
        cond.lock(); defer { cond.unlock() }
        stopped = true
        cond.broadcast()
        while running { cond.wait() }
    }

    /// The digests (those kept), once every block is added; call once, after the last `add`. Nil when
    /// bytes are missing (a part that failed).
    func finish() -> (sha256: String?, md5: String?)? {
        cond.lock(); defer { cond.unlock() }
        stopped = true
        cond.broadcast()
        while running { cond.wait() }
        guard hashed == size else { return nil }
        var m: String? = nil
        if let d = md5.take() { m = hex(d.finalizeBytes()) }
        return (sha.take()?.finalize(), m)
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

    /// The size of the ranged GETs a download is cut into. Where the whole content is hashed in file
    /// order, or `--part-size` says, it is the part size (ranges ahead of the ordered hash wait in its
    /// window). Otherwise ranges are larger, about two per parallel request, up to 64 MiB: 16 GETs
    /// rather than 64 for 1 GiB, which cost the server less (on 16 cores 32–64 MiB ranges were faster;
    /// on 2 cores, alternating, 0.89–1.08 s against 0.95–1.11 s, within the noise).
    func rangeSize(for size: Int64, ordered: Bool) -> Int64 {
        let part = Int64(partSize(for: size))
        guard !ordered, config.partSize == nil else { return part }
        let mib: Int64 = 1 << 20
        return max(part, min(64 * mib, size / Int64(2 * max(1, config.concurrency)) / mib * mib))
    }

    // MARK: - Download

    /// Downloads an object to `path`: into a preallocated temporary file next to it (parallel ranged
    /// GETs written with pwrite for large objects), checked against the size and the recorded SHA-256
    /// (or the ETag's MD5), fsynced, then renamed. The destination never holds a partial or wrong file;
    /// a changed object mid-download (ETag) fails cleanly and is retried from scratch.
    /// With `sha256: false` (the caller needs no digest of the file) the result carries no SHA-256 and
    /// the cheapest whole check is taken: a recorded CRC-32C (emflow records one), each range's taken by
    /// the thread that fetches it and joined in order; else a composite SHA-256 checksum, verified part
    /// by part as the parts arrive. Otherwise the whole content is hashed in file order as well.
    @discardableResult
    public func download(bucket: String, key: String, to path: String, known: S3Object? = nil, permissions: UInt32 = 0o644,
                         sha256 wanted: Bool = true, progress: (@Sendable (Int) -> Void)? = nil) throws(S3Error) -> TransferResult {
        let obj: S3Object
        // A listing's size and ETag are enough for an object fetched in one GET: its metadata comes with
        // the GET reply. Larger ones are HEADed first, to know what to verify before the parts arrive.
        if let known, known.size <= Int64(partSize(for: known.size)) || !known.metadata.isEmpty || known.checksumSHA256 != nil
            || known.checksumCRC32C != nil { obj = known }
        else {
            guard let o = try head(bucket: bucket, key: key) else {
                throw S3Error(operation: "GetObject", bucket: bucket, key: key, status: 404, code: "NoSuchKey", message: "",
                              hint: S3Error.hint(code: "NoSuchKey", status: 404, bucket: bucket, config: config))
            }
            obj = o
        }
        // The parts' checksums are used where they add something: no whole SHA-256 is wanted (and no
        // CRC-32C, a tenth of their cost, is recorded), or there is no recorded SHA-256 to check it
        // against. The ETag's MD5 of part MD5s, which costs more to check than SHA-256, only where there
        // is nothing else.
        let byCRC = !wanted && obj.recordedCRC32C != nil
        let layout = !byCRC && (!wanted || obj.recordedSHA256 == nil)
            ? try partLayout(of: obj, bucket: bucket, nothingElse: obj.recordedSHA256 == nil) : nil
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
                let result = try downloadOnce(obj, bucket: bucket, tmp: tmp, layout: layout, sha256: wanted, progress: progress)
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

    /// The parts of a multipart object, with what they are checked against: the composite SHA-256
    /// checksum (`base64-N`) where the server keeps one, else the ETag's MD5 of part MD5s (`hex-N`).
    /// The first part's size comes from a HEAD with partNumber=1; parts that cannot all be of that
    /// size (but the last) make a layout that is not `uniform`. `nothingElse`: no recorded SHA-256
    /// checks the object, so the ETag may, and uneven parts are worth their HEADs. nil for anything
    /// else, and for a server that does not answer that HEAD as S3 does.
    func partLayout(of obj: S3Object, bucket: String, nothingElse: Bool) throws(S3Error) -> PartLayout? {
        let algorithm: Digester.Algorithm, composite: [UInt8], count: Int
        if let c = obj.compositeSHA256 { (algorithm, composite, count) = (.sha256, c.digest, c.parts) }
        else if nothingElse, let m = multipartETagMD5(of: obj) { (algorithm, composite, count) = (.md5, m.digest, m.parts) }
        else { return nil }
        guard count > 1, obj.size >= Int64(count) else { return nil }
        var r = Request(operation: "HeadObject", method: "HEAD", bucket: bucket, key: obj.key, query: [("partNumber", "1")])
        if !obj.etag.isEmpty { r.headers.append(("if-match", "\"\(obj.etag)\"")) }
        let reply: HTTPResponse
        do { reply = try send(r) } catch where error.status == 400 || error.status == 416 || error.status == 501 { return nil }
        // A listed object's encryption shows only here; under a KMS or customer key the ETag is no MD5.
        if algorithm == .md5 && !Self.object(key: obj.key, headers: reply.headers).etagIsMD5 { return nil }
        guard let first = Int64(reply.headers["content-length"] ?? ""), first > 0 else { return nil }
        let partsCount = reply.headers["x-amz-mp-parts-count"].flatMap { Int($0) }
        var layout = PartLayout(partSize: first, count: count, algorithm: algorithm, composite: composite)
        if Int((obj.size + first - 1) / first) == count && (partsCount ?? count) == count { return layout }
        // Uneven parts, from a server that says it has them: checked after the download.
        guard nothingElse, partsCount == count, first < obj.size else { return nil }
        layout.uniform = false
        return layout
    }

    /// A check by parts that fails is certain only if the parts are what the layout took them to be,
    /// one size but the last. A client may have uploaded parts of other sizes that happen to come to
    /// the same count; so each part's size is asked for (HEAD ?partNumber=k, in parallel), and where
    /// they differ from the layout the downloaded file is hashed again along the true parts. The
    /// same checks a layout that is not `uniform`. False when the parts are as laid out (the content
    /// is damaged) or still do not check out.
    func checkAlongTrueParts(_ layout: PartLayout, of obj: S3Object, bucket: String, file path: String) throws(S3Error) -> Bool {
        let sizes = Mutex([Int64](repeating: -1, count: layout.count))
        let firstError = Mutex<S3Error?>(nil)
        ParallelThreads.run(count: layout.count, width: config.concurrency, shouldStop: { firstError.withLock { $0 != nil } }) { _, i in
            var r = Request(operation: "HeadObject", method: "HEAD", bucket: bucket, key: obj.key, query: [("partNumber", "\(i + 1)")])
            if !obj.etag.isEmpty { r.headers.append(("if-match", "\"\(obj.etag)\"")) }
            do throws(S3Error) {
                let n = Int64(try self.send(r).headers["content-length"] ?? "") ?? -1
                sizes.withLock { $0[i] = n }
            } catch { firstError.withLock { if $0 == nil { $0 = error } } }
        }
        if let e = firstError.withLock({ $0 }) { throw e }
        let parts = sizes.withLock { $0 }
        let laidOut = (0..<layout.count).map { min(layout.partSize, obj.size - Int64($0) * layout.partSize) }
        guard !layout.uniform || parts != laidOut, parts.allSatisfy({ $0 > 0 }), parts.reduce(0, +) == obj.size else { return false }
        let starts: [Int64] = { var at: Int64 = 0; return parts.map { n in defer { at += n }; return at } }()
        func readError(_ e: POSIXFileError) -> S3Error {
            S3Error(operation: "download", bucket: bucket, key: obj.key, status: nil, code: nil, message: e.description, hint: "check the destination file system")
        }
        let file = try Self.openForReading(path, readError)
        let hashing = FileHasher.digests(layout.algorithm, of: file.rawValue, path: path, ranges: zip(starts, parts).map { (at: $0, count: Int($1)) },
                                         width: ProcessInfo.processInfo.activeProcessorCount, piece: 1 << 20)
        let digests: [[UInt8]]
        do { digests = try hashing.wait() } catch { throw readError(error) }
        return Digester.digest(layout.algorithm, digests.flatMap { $0 }) == layout.composite
    }

    private func downloadOnce(_ obj: S3Object, bucket: String, tmp: String, layout: PartLayout?, sha256 wanted: Bool,
                              progress: (@Sendable (Int) -> Void)?) throws(S3Error) -> TransferResult {
        let key = obj.key
        let fd = try Self.createPreallocated(tmp, size: obj.size) { e in
            S3Error(operation: "download", bucket: bucket, key: key, status: nil, code: nil, message: e.description,
                    hint: "check that the destination is writable and has \(obj.size) bytes free")
        }
        // Ranges hold whole upload parts when their checksums are checked.
        // A recorded CRC-32C checks the content when no SHA-256 is wanted. A single GET of a listed
        // object takes the CRC as well, in case its reply shows one.
        let expectCRC = wanted ? nil : obj.recordedCRC32C
        let mayLearnCRC = !wanted && expectCRC == nil && obj.recordedSHA256 == nil && obj.size <= Int64(partSize(for: obj.size))
        // The whole content is hashed in file order when its SHA-256 is wanted or nothing else checks it.
        let wholeSHA256 = wanted || (layout == nil && expectCRC == nil)
        let ours = rangeSize(for: obj.size, ordered: wholeSHA256)
        let part = layout.flatMap { $0.uniform ? $0.partSize * max(1, ours / $0.partSize) : nil } ?? ours
        let count = max(1, Int((obj.size + part - 1) / part))
        let rawFD = fd.rawValue
        let path = tmp
        let partDigests = layout.flatMap { $0.uniform ? PartDigests($0, size: obj.size) : nil }
        let rangeCRCs = expectCRC != nil || mayLearnCRC ? RangeCRCs(size: obj.size, rangeSize: part) : nil
        let hasher = !wholeSHA256 ? nil : OrderedHasher(size: obj.size, partSize: part, window: OrderedHasher.window(partSize: part),
                                                        md5: obj.recordedSHA256 == nil && etagMD5(of: obj) != nil)
        let blockSize = hasher?.blockSize ?? OrderedHasher.blockSize(partSize: part, size: obj.size)
        // The object as the first range's reply shows it (a listed object's metadata and encryption
        // come with it), parsed once.
        let replied = Reply()
        // A single GET of a listed object learns from its reply's headers which digest checks it: the
        // recorded CRC-32C if there is one and no SHA-256 is wanted (then nothing else is hashed), the
        // recorded SHA-256 if there is one (then no MD5 is needed), else the ETag's MD5 (then no
        // SHA-256, unless the caller wants it).
        let learn: (@Sendable ([String: String]) -> Void)? = {
            guard count == 1, obj.recordedSHA256 == nil, let hasher else { return nil }
            let md5Possible = etagMD5(of: obj) != nil
            return { headers in
                let o = replied.set(S3Client.object(key: key, headers: headers))
                let crc = mayLearnCRC && o.recordedCRC32C != nil
                let recorded = o.recordedSHA256 != nil
                hasher.keep(sha256: wanted || (recorded && !crc), md5: !recorded && !crc && md5Possible && o.etagIsMD5)
            }
        }()
        let firstError = Mutex<S3Error?>(nil)
        // Each part streams into its place in the file in blocks of up to 1 MiB (fewer, larger writes
        // than the network's chunks), which then go to the hash; a part cut off midway asks again for
        // the rest only (If-Match keeps it the same object).
        let width = count == 1 ? 1 : config.concurrency
        // Without the ordered hash, each thread writes through a block of its own.
        let ownBlocks = hasher == nil ? (0..<width).map { _ in Block(capacity: blockSize) } : []
        // Buffered writes to one file take the inode's lock one at a time on Linux file systems (tmpfs,
        // ext4, XFS, CephFS, NFS), and a writer that finds it taken spins in the kernel while the holder
        // copies its 1 MiB: cores the server, the network and the hash need. A thread waiting here
        // sleeps at once (a pthread mutex) and leaves its core to them. 1 GiB download on 2 cores, three
        // runs of 10–12 rounds alternating with and without: 0.95–0.99 client CPU-s against 1.01–1.08,
        // median wall 0.87–0.91 s against 0.90–0.92 s; `perf` shows no more rwsem_spin_on_owner (4%).
        let fileWrites = NSLock()
        ParallelThreads.run(count: count, width: width, shouldStop: { firstError.withLock { $0 != nil } }) { w, i in
            let start = Int64(i) * part
            let length = min(part, obj.size - start)
            var block: Block? = ownBlocks.isEmpty ? nil : ownBlocks[w]
            block?.count = 0
            let cursor = partDigests.map { PartDigests.Cursor($0) }
            defer { cursor?.close() }
            var crc = CRC32C()   // of this range, as written
            var written: Int64 = 0   // of this part, in the file
            var unreported = 0
            var writeError: POSIXFileError? = nil
            var ignoredRange = 0
            var staged: Int { block?.count ?? 0 }
            func flush() -> Bool {
                guard let b = block, b.count > 0 else { return true }
                do throws(POSIXFileError) {
                    fileWrites.lock()
                    defer { fileWrites.unlock() }
                    try FileDescriptor.writeAll(rawFD, path: path, b.filled, at: start + written)
                } catch {
                    writeError = error
                    return false
                }
                cursor?.feed(b.filled, at: start + written)
                if rangeCRCs != nil { crc.update(b.filled) }
                let n = b.count   // the block is the hasher's once added
                if let hasher { block = nil; hasher.add(b, part: i, at: start + written) } else { b.count = 0 }
                written += Int64(n)
                unreported += n
                if unreported >= 4 << 20 { progress?(unreported); unreported = 0 }
                return true
            }
            do throws(S3Error) {
                try self.retrying("GetObject") { () throws(S3Error) in
                    var r = Request(operation: "GetObject", method: "GET", bucket: bucket, key: key)
                    r.headers.append(("x-amz-checksum-mode", "ENABLED"))
                    if !obj.etag.isEmpty { r.headers.append(("if-match", "\"\(obj.etag)\"")) }
                    if obj.size > 0 { r.headers.append(("range", "bytes=\(start + written)-\(start + length - 1)")) }
                    let reply: HTTPResponse
                    do throws(S3Error) {
                        reply = try self.sendOnce(r, body: nil, start: learn) { status, chunk in
                            // Only the range asked for is written: a server that ignores it (200 with
                            // the whole object) or sends more is refused.
                            if status != 206 && !(written == 0 && staged == 0 && length == obj.size) { ignoredRange = status; return false }
                            guard written + Int64(staged + chunk.count) <= length else { return false }
                            var rest = chunk
                            while !rest.isEmpty {
                                let b = block ?? hasher!.takeBlock()
                                block = b
                                let n = min(rest.count, blockSize - b.count)
                                (b.bytes.baseAddress! + b.count).copyMemory(from: rest.baseAddress!, byteCount: n)
                                b.count += n
                                rest = UnsafeRawBufferPointer(rebasing: rest[n...])
                                if b.count == blockSize && !flush() { return false }
                            }
                            return true
                        }
                    } catch {
                        // What arrived before the connection broke is good: keep it, ask for the rest.
                        if writeError == nil { _ = flush() }
                        if let writeError {
                            throw S3Error(operation: "download", bucket: bucket, key: key, status: nil, code: nil, message: "\(writeError)",
                                          hint: "check the destination file system (space, quota)")
                        }
                        if ignoredRange != 0 {
                            throw S3Error(operation: "GetObject", bucket: bucket, key: key, status: ignoredRange, code: nil,
                                          message: "the server answered a ranged GET (bytes \(start + written)-\(start + length - 1)) with the whole object",
                                          hint: "the server does not serve byte ranges as S3 does; a --part-size larger than the object fetches it in one GET")
                        }
                        throw error
                    }
                    guard flush() else {
                        throw S3Error(operation: "download", bucket: bucket, key: key, status: nil, code: nil, message: "\(writeError!)",
                                      hint: "check the destination file system (space, quota)")
                    }
                    guard written == length else {
                        throw S3Error(operation: "GetObject", bucket: bucket, key: key, status: nil, code: nil,
                                      message: "bytes \(start)-\(start + length - 1): got \(written) of \(length) bytes",
                                      hint: "the connection ended early; it was retried", retryable: true)
                    }
                    if i == 0 && replied.object == nil { replied.set(Self.object(key: key, headers: reply.headers)) }
                }
                rangeCRCs?.set(i, crc)
                if unreported > 0 { progress?(unreported) }
            } catch {
                firstError.withLock { if $0 == nil { $0 = error } }
                hasher?.cancel()   // writers waiting for this part to move the hash on go on, and stop
            }
        }
        if let e = firstError.withLock({ $0 }) { throw e }
        var sha: String? = nil, md5: String? = nil
        if let hasher {
            guard let digests = hasher.finish() else {
                throw S3Error(operation: "download", bucket: bucket, key: key, status: nil, code: nil, message: "not every byte arrived",
                              hint: "run the same command again")
            }
            (sha, md5) = digests
        }
        var verifiedBy = "size"
        if let layout {
            var checked = partDigests?.verify() ?? false
            if !checked { checked = try checkAlongTrueParts(layout, of: obj, bucket: bucket, file: path) }
            guard checked else {
                throw mismatch(bucket, key, layout.algorithm == .sha256
                               ? "the SHA-256 digests of its \(layout.count) parts do not give the object's composite checksum"
                               : "the MD5 digests of its \(layout.count) parts do not give the object's ETag \(obj.etag)", byETag: layout.algorithm == .md5)
            }
            verifiedBy = layout.name
        }
        let reply = replied.object
        if let sha, let expectSHA = obj.recordedSHA256 ?? reply?.recordedSHA256 {
            guard sha == expectSHA else { throw mismatch(bucket, key, "sha256 \(sha), the object records \(expectSHA)") }
            verifiedBy = "sha256"
        } else if let rangeCRCs, let expect = expectCRC ?? (mayLearnCRC ? reply?.recordedCRC32C : nil) {
            let whole = rangeCRCs.whole
            guard whole == expect else { throw mismatch(bucket, key, "crc32c \(whole.base64), the object records \(expect.base64)") }
            verifiedBy = "crc32c"
        } else if let expectMD5 = etagMD5(of: obj), reply?.etagIsMD5 ?? true, let md5 {
            guard md5 == expectMD5 else { throw mismatch(bucket, key, "md5 \(md5), the ETag is \(expectMD5)", byETag: true) }
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

    /// `byETag`: the check took the ETag for an MD5 digest, which not every server's is.
    private func mismatch(_ bucket: String, _ key: String, _ what: String, byETag: Bool = false) -> S3Error {
        S3Error(operation: "download", bucket: bucket, key: key, status: nil, code: "ChecksumMismatch",
                message: "what arrived does not verify: \(what)",
                hint: "the object or the transfer is damaged; nothing was written — run the same command again, and if it persists check the object"
                    + (byETag ? "; if this server's ETags are not MD5 digests (a server or gateway that encrypts or re-chunks objects may make others) and none of its objects check out, "
                                + "set `etags: opaque` under `s3:` in the spec or pass --etags opaque (such objects are then checked by size only)" : ""))
    }

    /// The ETag as the content's MD5, or as a multipart upload's MD5 of part MD5s: where it is one
    /// (`S3Object`: not under a KMS or customer key) and this server's ETags are digests at all
    /// (`config.etags`). Every check by an ETag goes through these two.
    func etagMD5(of obj: S3Object) -> String? { config.etags == .md5 ? obj.etagMD5 : nil }
    func multipartETagMD5(of obj: S3Object) -> (digest: [UInt8], parts: Int)? { config.etags == .md5 ? obj.multipartETagMD5 : nil }

    // MARK: - Upload

    /// Uploads the file at `path` as `bucket/key` with `x-amz-meta-sha256`. Small files go in one PUT
    /// whose SHA-256 the server verifies; large ones as a multipart upload with parallel parts (each
    /// verified by the server against its SHA-256), aborted on failure so no half object is ever
    /// visible. When `sha256` is given, the file is checked against it while it is read, and the
    /// upload aborted on mismatch. Parts are read from the file as they go out, never held whole in
    /// memory.
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
        let rawFD = fd.rawValue
        let part = partSize(for: size)
        if size <= 1 << 20 {
            // Small: read once, hashed and sent from memory.
            var body = [UInt8](repeating: 0, count: Int(size))
            do { try body.withUnsafeMutableBytes { b in try fd.readFull(into: b, at: 0) } } catch { throw ioError(error) }
            let sha = SHA256Hasher.hash(body)
            if let known, known != sha { throw changed(path, bucket, key, known, sha) }
            let etag = try put(bucket: bucket, key: key, body: body, contentType: contentType, metadata: metadata)   // with its CRC-32C
            progress?(body.count)
            return TransferResult(size: size, sha256: sha, etag: etag, verifiedBy: "sha256")
        }
        if size <= Int64(part) {
            // One PUT read from the file as it goes out (its SHA-256 and CRC-32C first, for the headers).
            let digest: [UInt8]
            var crc = CRC32C()
            do { digest = try Self.digest(of: rawFD, path: path, at: 0, count: Int(size)) { crc.update($0) } } catch { throw ioError(error) }
            if let known, known != hex(digest) { throw changed(path, bucket, key, known, hex(digest)) }
            let etag = try put(bucket: bucket, key: key, body: .file(descriptor: rawFD, offset: 0, count: Int(size)), source: path,
                               digest: digest, crc32c: crc, contentType: contentType, metadata: metadata)
            progress?(Int(size))
            return TransferResult(size: size, sha256: hex(digest), etag: etag, verifiedBy: "sha256")
        }
        // The whole-file SHA-256 goes into the metadata, which is set when the upload starts.
        // Without a known digest the file is read once up front for it and its CRC-32C (metadata too),
        // and each part's digest is computed alongside on the other cores; with one, each part is
        // hashed just before it goes out, and the whole file in order as the parts are read: no CRC is
        // recorded then (it would take a pass of its own), and downloads check the parts' SHA-256.
        let sha: String, digests: [[UInt8]]?
        var meta = metadata
        meta["crc32c"] = nil
        if let known { sha = known; digests = nil } else {
            do {
                let (whole, parts, crc) = try FileHasher.sha256WithParts(path: path, size: size, partSize: part, onProgress: hashing)
                sha = whole.sha256
                digests = parts
                meta["crc32c"] = crc.base64
            } catch { throw ioError(error) }
        }
        meta["sha256"] = sha
        let uploadID = try createMultipart(bucket: bucket, key: key, metadata: meta, contentType: contentType)
        let count = Int((size + Int64(part) - 1) / Int64(part))
        let etags = Mutex<[(etag: String, checksum: String)]>(Array(repeating: ("", ""), count: count))
        let firstError = Mutex<S3Error?>(nil)
        let hasher = known == nil ? nil : OrderedHasher(size: size, partSize: Int64(part), window: OrderedHasher.window(partSize: Int64(part)), md5: false)
        ParallelThreads.run(count: count, width: config.concurrency, shouldStop: { firstError.withLock { $0 != nil } }) { _, i in
            let start = Int64(i) * Int64(part)
            let length = Int(min(Int64(part), size - start))
            do throws(S3Error) {
                let digest: [UInt8]
                if let digests { digest = digests[i] } else {
                    do { digest = try Self.digest(of: rawFD, path: path, at: start, count: length, feeding: hasher, part: i) } catch { throw ioError(error) }
                }
                let etag = try self.uploadPart(bucket: bucket, key: key, uploadID: uploadID, number: i + 1,
                                               body: .file(descriptor: rawFD, offset: start, count: length), source: path, digest: digest)
                etags.withLock { $0[i] = etag }
                progress?(length)
            } catch {
                firstError.withLock { if $0 == nil { $0 = error } }
                hasher?.cancel()
            }
        }
        var failure = firstError.withLock { $0 }
        if failure == nil, let hasher {
            let got = hasher.finish()?.sha256 ?? "(incomplete)"
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

    /// The SHA-256 of `count` bytes of a file at `at`, read in pieces; with a `hasher`, the pieces
    /// go on to it (as part `part`), which hashes the whole file in order; without, to `alongside`.
    static func digest(of fd: Int32, path: String, at: Int64, count: Int, feeding hasher: OrderedHasher? = nil, part: Int = 0,
                       alongside: ((UnsafeRawBufferPointer) -> Void)? = nil) throws(POSIXFileError) -> [UInt8] {
        if let hasher {
            var d = Digester(.sha256)
            var done = 0
            while done < count {
                let b = hasher.takeBlock()
                b.count = min(hasher.blockSize, count - done)
                try FileDescriptor.readFull(fd, path: path, into: UnsafeMutableRawBufferPointer(rebasing: b.bytes[0..<b.count]), at: at + Int64(done))
                d.update(b.filled)
                let n = b.count   // the block is the hasher's once added
                hasher.add(b, part: part, at: at + Int64(done))
                done += n
            }
            return d.finalizeBytes()
        }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(1, min(count, 1 << 20)), alignment: 4096)
        defer { buffer.deallocate() }
        return try FileHasher.sha256(of: fd, path: path, at: at, count: count, buffer: buffer, alongside: alongside)
    }

    private func changed(_ path: String, _ bucket: String, _ key: String, _ expected: String, _ got: String) -> S3Error {
        S3Error(operation: "upload", bucket: bucket, key: key, status: nil, code: "SourceChanged",
                message: "\(path) reads as sha256 \(got), not the recorded \(expected)",
                hint: "the file changed after it was checksummed; nothing was uploaded — check the file and run the same command again")
    }
}
