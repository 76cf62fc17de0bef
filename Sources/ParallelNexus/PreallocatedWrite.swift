internal import CHDF5
import Foundation
import POSIXFiles
import EMFormats
import Checksums
import Synchronization

/// The single-process, uncompressed case written the way `dd` writes: HDF5 lays the whole file out
/// first (every chunk reserved, every field written, the file closed), then the frames go straight
/// from the step buffers into their chunks with `pwrite`. Since every byte between the chunks is final
/// by then, the file's SHA-256 is computed front to back from those bytes and the step buffers *while*
/// the file is written, on the other core, instead of in a second pass over the written file (which
/// cost as much as the write itself).
struct PreallocatedLayout {
    /// Byte ranges of the file that the writer fills, in file order: first the stack's chunks in
    /// row-major chunk order (k frames each), then the summary image's chunks.
    var extents: [(offset: Int, length: Int)]
    var frameChunks: Int
    var framesPerChunk: Int
    var summaryChunkRows: Int

    /// Reads where HDF5 put the arrays' chunks in `file` (still open), or nil when this file cannot be
    /// written this way (a chunk not reserved, an unexpected size or order, an older HDF5): the caller
    /// then writes through HDF5.
    static func read(_ doc: NXemDocument, in file: HDF5File, geometry g: ScanGeometry) -> PreallocatedLayout? {
        guard 1.littleEndian == 1, doc.images.count == 2 else { return nil }
        let e = "/" + doc.entry + "/"
        let stack = doc.images[0], summary = doc.images[1]
        let k = stack.chunks.count == 4 ? stack.chunks[1] : 0
        guard k > 0, g.scanX % k == 0, stack.chunks == [1, k, g.frameHeight, g.frameWidth],
              summary.type == .float64, summary.shape == [g.scanY, g.scanX],
              summary.chunks.count == 2, summary.chunks[1] == g.scanX else { return nil }
        func locations(_ img: NXemDocument.Image) -> [(offset: Int, size: Int)]? {
            guard let ds = try? file.openArray(e + img.dataGroup + "/real", type: img.type) else { return nil }
            defer { try? ds.close() }
            return ds.reservedChunkLocations(chunks: img.chunks)
        }
        guard let frames = locations(stack), let sums = locations(summary) else { return nil }
        let chunkBytes = k * g.frameBytes, sumBytes = summary.chunks[0] * g.scanX * 8
        guard frames.allSatisfy({ $0.size == chunkBytes }), sums.allSatisfy({ $0.size == sumBytes }) else { return nil }
        let extents = (frames + sums).map { (offset: $0.offset, length: $0.size) }
        // Written (and hashed) in this order, so it must be the file's order, without overlaps.
        for (a, b) in zip(extents, extents.dropFirst()) where a.offset + a.length > b.offset { return nil }
        return PreallocatedLayout(extents: extents, frameChunks: frames.count, framesPerChunk: k, summaryChunkRows: summary.chunks[0])
    }

    /// The end of extent `i`.
    func end(of i: Int) -> Int { extents[i].offset + extents[i].length }

    /// The chunks of a step's `frames` (whole chunks) as runs placed back to back in the file, each at
    /// most `limit` chunks: the bytes of the step's buffer it holds and where they go.
    func pieces(of frames: Range<Int>, limit: Int = .max) -> [(bytes: Range<Int>, offset: Int)] {
        let chunkBytes = extents.first?.length ?? 0, first = frames.lowerBound / framesPerChunk
        return runs(first..<(frames.upperBound / framesPerChunk), limit: limit).map {
            (bytes: ($0.lowerBound - first) * chunkBytes..<($0.upperBound - first) * chunkBytes, offset: extents[$0.lowerBound].offset)
        }
    }

    /// Writes the summary image (`sums`, one per scan position) into its chunks through `fd`, chunk by
    /// chunk (rows × scan x float64, the last padded with zeros), and has `hasher` hash them; returns
    /// once they are hashed.
    func writeSummary(_ sums: [Double], scanX: Int, fd: Int32, path: String, hasher: WrittenFileHasher) throws {
        let chunkValues = summaryChunkRows * scanX, summaryChunks = extents.count - frameChunks
        let padded = sums + [Double](repeating: 0, count: max(0, summaryChunks * chunkValues - sums.count))
        defer { hasher.drain() }  // before `padded` goes
        try padded.withUnsafeBytes { (all) throws in
            for j in 0..<summaryChunks {
                let b = UnsafeRawBufferPointer(rebasing: all[(j * chunkValues * 8)..<((j + 1) * chunkValues * 8)])
                let at = extents[frameChunks + j].offset
                try FileDescriptor.writeAll(fd, path: path, b, at: Int64(at))
                hasher.append(b, at: at)
            }
        }
    }

    /// `chunks` as runs of extents that lie back to back in the file, each at most `limit` long.
    func runs(_ chunks: Range<Int>, limit: Int = .max) -> [Range<Int>] {
        var out: [Range<Int>] = [], c = chunks.lowerBound
        while c < chunks.upperBound {
            var e = c + 1
            while e < chunks.upperBound && e - c < limit && extents[e].offset == end(of: e - 1) { e += 1 }
            out.append(c..<e)
            c = e
        }
        return out
    }
}

/// The SHA-256 of a file computed from what is being written into it, front to back, on its own
/// serial queue: written ranges from the writers' memory (`append`), the bytes between them (HDF5's
/// metadata, final before the frames are written) read from the file.
final class WrittenFileHasher: @unchecked Sendable {
    let fd: Int32, path: String
    private let queue = DispatchQueue(label: "emflow.written-file-hash")
    private var sha: SHA256Hasher? = SHA256Hasher()
    private var position = 0
    private var error: POSIXFileError?
    /// Pieces read from the file are hashed while still in the CPU's cache.
    private static let piece = 256 << 10
    private let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: WrittenFileHasher.piece, alignment: 64)

    init(fd: Int32, path: String) { self.fd = fd; self.path = path }
    // Queued work holds `self`, so nothing reads into the buffer any more.
    deinit { buffer.deallocate() }

    /// Hashes the file up to `offset`, then `bytes` (which will be at `offset`); `done` runs after
    /// (also after an error), when the caller may reuse `bytes`. With `when`, the hashing thread first
    /// waits for it to say the bytes are there; false stops the hash (it then fails).
    func append(_ bytes: UnsafeRawBufferPointer, at offset: Int, when ready: (@Sendable () -> Bool)? = nil,
                done: @escaping @Sendable () -> Void = {}) {
        let b = UncheckedBox(bytes)
        queue.async { [self] in
            if error == nil, let ready, !ready() { error = POSIXFileError("hash", path: path, errno: ECANCELED) }
            if error == nil {
                do throws(POSIXFileError) { try fromFile(upTo: offset); sha!.update(b.value); position = offset + b.value.count }
                catch { self.error = error }
            }
            done()
        }
    }

    /// Hashes the rest of the file (`size` bytes in all) and returns the SHA-256.
    func finish(size: Int) throws(POSIXFileError) -> String {
        let result: Result<String, POSIXFileError> = queue.sync {
            if let error { return .failure(error) }
            do throws(POSIXFileError) { try fromFile(upTo: size) } catch { return .failure(error) }
            return .success(sha.take()!.finalize())
        }
        return try result.get()
    }

    /// Waits until everything handed over so far is hashed.
    func drain() { queue.sync {} }

    private func fromFile(upTo end: Int) throws(POSIXFileError) {
        while position < end {
            let piece = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<Swift.min(Self.piece, end - position)])
            try FileDescriptor.readFull(fd, path: path, into: piece, at: Int64(position))
            sha!.update(UnsafeRawBufferPointer(piece))
            position += piece.count
        }
    }
}

extension ParallelStackWriter {
    /// The largest step of the preallocated paths, in bytes: 4 MiB. The hash, which is
    /// what these paths wait for, starts as soon as the first step is read and has only the last step
    /// left after the last write; small steps make both short, and the three buffers per process small.
    /// Alternating runs on 1 GiB here (medians of 10): one process 0.58–0.60 s against 0.61–0.67 s with
    /// steps of up to 42 MiB; two ranks 0.66 s against 0.69 s with 16 MiB steps. Steps of 2 MiB were no
    /// faster, 8 MiB slower; smaller steps for the first row (`rampedSteps`) made no difference.
    static let preallocatedStep = 4 << 20

    /// Fills a file that `PreallocatedLayout` describes (closed, at `tmp`), hashing it meanwhile, then
    /// makes it durable and renames it to `path`.
    static func writePreallocated(_ layout: PreallocatedLayout, source: FrameSource, tmp: String, path: String, options: Options,
                                  started: Date, progress: @escaping @Sendable (Int) -> Void) throws -> Outcome {
        let g = source.geometry
        // Raw descriptors: the hashing queue and the writes share them until the end of this call.
        let writable = open(tmp, O_WRONLY | O_CLOEXEC)
        guard writable >= 0 else { throw POSIXFileError("open", path: tmp, errno: errno) }
        defer { close(writable) }
        let readable = open(tmp, O_RDONLY | O_CLOEXEC)
        guard readable >= 0 else { throw POSIXFileError("open", path: tmp, errno: errno) }
        defer { close(readable) }
        let hasher = WrittenFileHasher(fd: readable, path: tmp)
        let k = layout.framesPerChunk, chunkBytes = k * g.frameBytes
        let direct = DirectWriter(writable, path: tmp, enabled: options.directIO)

        // Three buffers (together at most the two of the other path): one being read, one written, one
        // hashed. A buffer is read into again only once its frames are hashed.
        let plan = steps(rows: 0..<g.scanY, scanX: g.scanX, frameBytes: g.frameBytes, chunkFrames: k,
                         budget: min(options.bufferBytes * 2 / 3, preallocatedStep))
        let reader = StepReader(plan: plan, source: source, frameBytes: g.frameBytes, buffers: 3)
        // The hashing queue may still read the buffers: they live until it is done.
        defer { withExtendedLifetime(reader) { reader.finish(); hasher.drain() } }
        let hashed = plan.map { _ in DispatchSemaphore(value: 0) }
        var sums = [Double](repeating: 0, count: g.scanY * g.scanX)
        // Writes of about 128 KiB: the hashing queue reads each piece right after it is written, while
        // it is still in the CPU's cache (64 MiB writes took twice as long here, mostly in the kernel).
        // Direct writes leave the page cache (and the copy into it) out; they go in pieces of 4 MiB.
        let directChunks = direct.accepts(offset: layout.extents.first?.offset ?? 1, count: chunkBytes)
        let maxRun = max(1, (directChunks ? 4 << 20 : 128 << 10) / chunkBytes)
        for (i, s) in plan.enumerated() {
            let buf = reader.take(i)
            if let error = buf.error { throw ParallelNexusError(path: tmp, message: error) }
            if i >= 2 { hashed[i - 2].wait() }
            reader.prefetch(i + 1)
            let frames = s.frames(scanX: g.scanX)
            // Consecutive chunks that HDF5 placed back to back go out together.
            let pieces = layout.pieces(of: frames, limit: maxRun)
            for (n, piece) in pieces.enumerated() {
                let bytes = UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(buf.frames)[piece.bytes])
                try direct.write(bytes, at: piece.offset)
                let release = hashed[i], isLast = n == pieces.count - 1
                hasher.append(bytes, at: piece.offset, done: { if isLast { release.signal() } })
            }
            for (j, v) in buf.sums.enumerated() { sums[frames.lowerBound + j] = v }
            progress(frames.count * g.frameBytes)
            // Start writing back what is written so far, so the final fsync has little left.
            if !directChunks { _ = emflow_start_writeback(writable) }
        }
        try layout.writeSummary(sums, scanX: g.scanX, fd: writable, path: tmp, hasher: hasher)
        let size = Int(try FileStatus.of(path: tmp).size)
        let tWritten = Date()
        var sha = ""
        try NXemWriter.syncAndPublish(tmp, as: path) { _ in sha = try hasher.finish(size: size) }
        profile(path, written: tWritten.timeIntervalSince(started), finished: Date().timeIntervalSince(tWritten))
        let rss = peakRSS()
        return Outcome(output: path, outputSHA256: sha, outputSize: Int64(size), bytesIn: g.totalBytes, ranks: 1,
                       seconds: Date().timeIntervalSince(started), peakRSSMax: rss, peakRSSRoot: rss, hashedWhileWriting: true,
                       directIO: direct.directBytes > 0)
    }

    static func profile(_ path: String, written: Double, finished: Double) {
        guard ProcessInfo.processInfo.environment["EMFLOW_PROFILE"] != nil else { return }
        FileHandle.standardError.write(Data(String(format: "profile %@: write %.3f s, fsync+checksum+rename %.3f s\n", path, written, finished).utf8))
    }
}

/// Reads a plan's steps into a ring of buffers, the next one on a helper thread while the current one
/// is written (or, with one buffer, on the caller's thread when asked for).
final class StepReader {
    let plan: [ParallelStackWriter.Step]
    let source: FrameSource
    let buffers: [ParallelStackWriter.StepBuffer]
    private var pending: DispatchSemaphore?

    /// `buffers`: 1 reads each step when it is taken, 2 or more read one step ahead.
    convenience init(plan: [ParallelStackWriter.Step], source: FrameSource, frameBytes: Int, buffers count: Int) {
        let stepBytes = plan.map { $0.ny * $0.nx * frameBytes }.max() ?? 0
        self.init(plan: plan, source: source, buffers: (0..<max(1, count)).map { _ in .init(bytes: stepBytes) })
    }

    /// Reads into `buffers` (each large enough for any step of the plan).
    init(plan: [ParallelStackWriter.Step], source: FrameSource, buffers: [ParallelStackWriter.StepBuffer]) {
        self.plan = plan; self.source = source; self.buffers = buffers
        prefetch(0)
    }

    var overlap: Bool { buffers.count > 1 }
    func buffer(_ i: Int) -> ParallelStackWriter.StepBuffer { buffers[i % buffers.count] }

    /// Starts reading step `i` (nothing past the plan's end, nothing with one buffer).
    func prefetch(_ i: Int) {
        guard i < plan.count, overlap else { return }
        let buf = buffer(i), step = plan[i]
        let done = DispatchSemaphore(value: 0)
        let src = UncheckedBox(source)
        Thread.detachNewThread { ParallelStackWriter.read(step, from: src.value, into: buf); done.signal() }
        pending = done
    }

    /// Step `i`'s frames once read (check `error`).
    func take(_ i: Int) -> ParallelStackWriter.StepBuffer {
        finish()
        if !overlap { ParallelStackWriter.read(plan[i], from: source, into: buffer(i)) }
        return buffer(i)
    }

    /// Waits for a read in flight.
    func finish() { pending?.wait(); pending = nil }
}

/// Writes a file's aligned ranges with direct I/O (`O_DIRECT`) where its file system declares that it
/// takes it and at which alignment (statx), and every other range through the page cache (`fd`).
/// Direct writes leave out the kernel's copy into the page cache and its per-page bookkeeping: on a
/// local disk that is most of a buffered write's CPU, which the writer's other work (reading, hashing)
/// needs. A file system that turns a direct write down (EINVAL) gets the rest through the cache.
public final class DirectWriter {
    let fd: Int32, path: String
    private var directFD: Int32 = -1
    private var memoryAlignment = 1, offsetAlignment = 1
    /// Bytes that went past the page cache.
    private(set) var directBytes = 0

    init(_ fd: Int32, path: String, enabled: Bool) {
        self.fd = fd; self.path = path
        guard enabled, let a = Self.alignment(fd) else { return }
        directFD = open(path, O_WRONLY | O_CLOEXEC | emflow_o_direct())
        // Whole pages only: no page holds both bytes written directly and bytes in the cache.
        memoryAlignment = a.memory
        offsetAlignment = max(a.offset, Int(sysconf(Int32(_SC_PAGESIZE))))
    }

    /// The alignment of memory and of file offsets that direct I/O on this (regular) file needs, or
    /// nil where its file system does not say that it takes direct I/O.
    static func alignment(_ fd: Int32) -> (memory: Int, offset: Int)? {
        var memory: UInt32 = 0, offset: UInt32 = 0
        return emflow_direct_io_alignment(fd, &memory, &offset) == 0 ? (Int(memory), Int(offset)) : nil
    }

    /// Whether files created in `directory` would be written with direct I/O (for tests and
    /// diagnostics: it creates and removes a probe file there).
    public static func takesDirectIO(directory: String) -> Bool {
        let probe = directory + "/.emflow-direct-io-probe-\(getpid())"
        let fd = open(probe, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return false }
        defer { close(fd); unlink(probe) }
        return alignment(fd) != nil
    }

    deinit { if directFD >= 0 { _ = Glibc.close(directFD) } }

    var isOn: Bool { directFD >= 0 }

    /// Whether `count` bytes at `offset` (from page-aligned memory) would be written directly.
    func accepts(offset: Int, count: Int) -> Bool {
        directFD >= 0 && offset % offsetAlignment == 0 && count % offsetAlignment == 0
    }

    func write(_ bytes: UnsafeRawBufferPointer, at offset: Int) throws(POSIXFileError) {
        if accepts(offset: offset, count: bytes.count), Int(bitPattern: bytes.baseAddress) % memoryAlignment == 0 {
            do throws(POSIXFileError) {
                try FileDescriptor.writeAll(directFD, path: path, bytes, at: Int64(offset))
                directBytes += bytes.count
                return
            } catch where error.errno == EINVAL {
                _ = Glibc.close(directFD); directFD = -1
            }
        }
        try FileDescriptor.writeAll(fd, path: path, bytes, at: Int64(offset))
    }
}
