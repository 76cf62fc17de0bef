internal import CHDF5
import Foundation
import POSIXFiles
import EMFormats
import Synchronization

/// Writes a 4D-STEM NXem document with every rank of a `Communicator` at once: the ranks split the
/// scan rows, each reads its rows from the `FrameSource` a few at a time and writes them as one
/// hyperslab per step with collective I/O (a rank with nothing left joins with an empty selection),
/// and each writes its rows of the summary image (the sum of every frame). The file appears under
/// its final name only when complete: a temporary beside it, fsynced and renamed by rank 0.
/// Every rank must call `write` with the same document and options.
public enum ParallelStackWriter {
    public struct Options: Sendable {
        public var compression: Compression = .none
        /// Frames per chunk along scan x (chunk = (1, k, h, w)).
        public var chunkFrames = 1
        /// Objects at least this large start on its multiples (the file system's stripe size).
        public var alignment: Int? = 1 << 20
        /// Bytes of frames a rank holds per step (two steps when reads overlap writes).
        public var bufferBytes = 64 << 20
        /// Whether uncompressed frames written on one node (one process, or ranks sharing the node) may
        /// go past the page cache where the file system takes direct I/O (`DirectWriter`).
        public var directIO = true
        public init() {}

        /// Where HDF5 places the objects of a file whose stack chunks are `chunkBytes` long.
        /// Uncompressed chunks smaller than the stripe and made of whole pages start on a page:
        /// they can then be written with direct I/O, and none shares a page with HDF5's metadata.
        /// A page, not a larger power of two: the space between two aligned objects is left empty
        /// (at most a page per metadata block between the chunks), and HDF5 puts small objects
        /// there, such as the summary image, which must come after the frames to be hashed in order.
        /// Otherwise (chunks of a stripe or more, compressed ones, other sizes) objects at least a
        /// stripe long start on a stripe.
        public func placement(chunkBytes: Int) -> HDF5File.Alignment? {
            guard let stripe = alignment, stripe > 1 else { return nil }
            let page = Int(sysconf(Int32(_SC_PAGESIZE)))
            guard compression == .none, chunkBytes < stripe, chunkBytes % page == 0 else { return .stripe(stripe) }
            return HDF5File.Alignment(threshold: chunkBytes, boundary: page)
        }
    }

    public struct Outcome: Sendable, Codable {
        public var output: String
        public var outputSHA256: String
        public var outputSize: Int64
        public var bytesIn: Int64
        public var ranks: Int
        public var seconds: Double
        /// Peak resident memory of the largest rank and of rank 0, in bytes.
        public var peakRSSMax: Int64
        public var peakRSSRoot: Int64
        /// The frames went straight into chunks HDF5 had reserved, and the file was hashed as written.
        public var hashedWhileWriting = false
        /// The frames went past the page cache (direct I/O).
        public var directIO = false
        /// Ranks of one node compressed the chunks, and rank 0 alone stored them.
        public var storedByRoot = false
    }

    /// One step of a rank: the box (rows y..<y+ny, columns x..<x+nx) of scan positions it writes.
    public struct Step: Equatable, Sendable {
        public var y: Int, ny: Int, x: Int, nx: Int
        public func frames(scanX: Int) -> Range<Int> { let f = y * scanX + x; return f..<(f + ny * nx) }
        /// Where the step's chunk `c` (of `k` frames; the step holds whole chunks) starts in the stack.
        func chunkOrigin(_ c: Int, framesPerChunk k: Int) -> [Int] { [y + c / (nx / k), x + (c % (nx / k)) * k, 0, 0] }
    }

    /// Whole rows per step when a row fits in `budget` bytes, else runs of whole chunks within a row.
    public static func steps(rows: Range<Int>, scanX: Int, frameBytes: Int, chunkFrames: Int, budget: Int) -> [Step] {
        let rowBytes = scanX * frameBytes
        var out: [Step] = []
        if rowBytes <= budget {
            let per = max(1, budget / max(1, rowBytes))
            var y = rows.lowerBound
            while y < rows.upperBound { let n = min(per, rows.upperBound - y); out.append(Step(y: y, ny: n, x: 0, nx: scanX)); y += n }
        } else {
            let k = max(1, chunkFrames)
            let per = min(scanX, max(k, budget / max(1, frameBytes) / k * k))
            for y in rows { var x = 0; while x < scanX { let n = min(per, scanX - x); out.append(Step(y: y, ny: 1, x: x, nx: n)); x += n } }
        }
        return out
    }

    /// As `steps`, but the first row goes in steps of an eighth of the budget: writing (and compressing)
    /// starts as soon as those few frames are read instead of after a whole buffer's worth.
    public static func rampedSteps(rows: Range<Int>, scanX: Int, frameBytes: Int, chunkFrames: Int, budget: Int) -> [Step] {
        guard let first = rows.first else { return [] }
        return steps(rows: first..<(first + 1), scanX: scanX, frameBytes: frameBytes, chunkFrames: chunkFrames, budget: max(1, budget / 8)) +
            steps(rows: (first + 1)..<rows.upperBound, scanX: scanX, frameBytes: frameBytes, chunkFrames: chunkFrames, budget: budget)
    }

    /// Frames of one step, read (and summed) on a helper thread while the previous step is written.
    final class StepBuffer: @unchecked Sendable {
        let frames: UnsafeMutableRawBufferPointer
        private let owned: Bool
        var sums: [Double] = []
        var error: String?
        init(bytes: Int) { frames = .allocate(byteCount: max(bytes, 1), alignment: 4096); owned = true }
        /// A buffer in memory that its owner frees (e.g. shared with other ranks).
        init(borrowing memory: UnsafeMutableRawBufferPointer) { frames = memory; owned = false }
        deinit { if owned { frames.deallocate() } }
    }

    static func read(_ step: Step, from source: FrameSource, into buf: StepBuffer) {
        let g = source.geometry
        let r = step.frames(scanX: g.scanX)
        do {
            try source.readFrames(r.lowerBound, count: r.count, into: buf.frames)
            buf.sums = frameSums(buf.frames, frames: r.count, geometry: g)
            buf.error = nil
        } catch {
            buf.error = error.description
        }
    }

    /// The sum of each frame's pixels (the summary image's values).
    public static func frameSums(_ b: UnsafeMutableRawBufferPointer, frames: Int, geometry g: ScanGeometry) -> [Double] {
        let n = g.frameHeight * g.frameWidth
        func sums<T>(_ t: T.Type, _ f: (T) -> Double) -> [Double] {
            let p = b.baseAddress!.assumingMemoryBound(to: T.self)
            return (0..<frames).map { k in var s = 0.0; let q = p + k * n; for i in 0..<n { s += f(q[i]) }; return s }
        }
        func intSums<T: FixedWidthInteger>(_ t: T.Type) -> [Double] {
            // Integer accumulation is exact and several times faster than Double adds.
            let p = b.baseAddress!.assumingMemoryBound(to: T.self)
            return (0..<frames).map { k in var s: Int64 = 0; let q = p + k * n; for i in 0..<n { s &+= Int64(truncatingIfNeeded: q[i]) }; return Double(s) }
        }
        func narrowSums<T: FixedWidthInteger & UnsignedInteger>(_ t: T.Type) -> [Double] {
            // Unsigned pixels of up to 16 bits summed over at most 65 537 pixels fit 32 bits: twice the
            // vector lanes of 64-bit sums (the reader thread sums each frame it reads).
            let p = b.baseAddress!.assumingMemoryBound(to: T.self)
            return (0..<frames).map { k in var s: UInt32 = 0; let q = p + k * n; for i in 0..<n { s &+= UInt32(q[i]) }; return Double(s) }
        }
        let narrow = n <= 65_537
        switch g.pixelType {
        case .uint8 where narrow: return narrowSums(UInt8.self)
        case .uint16 where narrow: return narrowSums(UInt16.self)
        case .uint8: return intSums(UInt8.self)
        case .int8: return intSums(Int8.self)
        case .uint16: return intSums(UInt16.self)
        case .int16: return intSums(Int16.self)
        case .uint32: return intSums(UInt32.self)
        case .int32: return intSums(Int32.self)
        case .uint64: return sums(UInt64.self) { Double($0) }
        case .int64: return sums(Int64.self) { Double($0) }
        case .float32: return sums(Float.self) { Double($0) }
        case .float64: return sums(Double.self) { $0 }
        }
    }

    /// `checksum(tmp)` runs on rank 0 while the finished file is fsynced (a SHA-256 from the page cache).
    /// `late()` runs on rank 0 after the frames are written (e.g. waits for the input's checksum) and
    /// returns fields (path under the entry → string) that every rank then writes. Without it,
    /// uncompressed frames on one node go straight into the chunks HDF5 reserved, and the file is hashed
    /// as it is written (`PreallocatedLayout`): by one process, or by several ranks taking the steps in
    /// turns, rank 0 hashing them from memory the ranks share (`writePreallocatedOnOneNode`). The ranks
    /// of one node compress bitshuffle+LZ4 chunks each and rank 0 stores them (`writeCompressedOnOneNode`).
    public static func write(_ doc: NXemDocument, source: FrameSource, to path: String, communicator comm: Communicator,
                             options: Options, late: (() throws -> [String: String])? = nil,
                             checksum: @escaping (String) throws -> String,
                             progress: @escaping @Sendable (Int) -> Void = { _ in }) throws -> Outcome {
        let started = Date()
        let g = source.geometry
        precondition(doc.images.first?.shape == g.shape)
        func agree(_ e: String?) throws {
            if let m = comm.firstError(e) { throw ParallelNexusError(path: path, message: m) }
        }
        var tmp = comm.isRoot ? AtomicFile.temporaryPath(for: path) : ""
        tmp = comm.broadcast(tmp)

        // 1. Rank 0 writes the whole tree with the arrays' chunks reserved (parallel HDF5 cannot write
        //    the variable-length strings NXem needs); 2. all ranks fill the arrays collectively;
        // 3. rank 0 adds the fields known only at the end. Any rank's error stops all of them.
        var file: HDF5File?
        // Rank 0 asks for writeback through this descriptor as the file fills.
        var writeback: Int32 = -1
        defer { if writeback >= 0 { close(writeback) } }
        do {
            // Ranks that share one node (its memory and page cache) can write uncompressed frames as one
            // process does, hashing the file as it fills instead of after it is closed.
            let oneNode = comm.usesMPI && comm.size > 1 && comm.sharesOneNode()
            // The stack's chunks as the document lays them out (chunk_frames capped at a scan row): their
            // size decides where HDF5 places objects, their count how wide the chunk index is.
            let stack = doc.images[0]
            let placement = options.placement(chunkBytes: stack.chunks.reduce(g.pixelType.size, *))
            let stackChunks = zip(stack.shape, stack.chunks).reduce(1) { $0 * (($1.0 + $1.1 - 1) / $1.1) }
            var createError: String?
            var layout: PreallocatedLayout?
            if comm.isRoot {
                do {
                    try HDF5Library.serialized { () throws in
                        let f = try HDF5File.create(path: tmp, alignment: placement, chunks: stackChunks)
                        file = f
                        try NXemWriter.build(doc, in: f, compression: options.compression, allocateEarly: true) { _, _ in }
                        // The chunks' places, for one process or the ranks of one node filling them themselves
                        // (HDF5 1.10 walks every chunk per lookup: ~35 ms for 8192 chunks, so only then).
                        if options.compression == .none && late == nil && (comm.size == 1 || oneNode) {
                            layout = PreallocatedLayout.read(doc, in: f, geometry: g)
                        }
                        try f.close()
                        file = nil
                    }
                } catch { createError = "\(error)" }
            }
            try agree(createError)
            if comm.size == 1, let layout {
                return try writePreallocated(layout, source: source, tmp: tmp, path: path, options: options, started: started, progress: progress)
            }
            if comm.size > 1 && oneNode && comm.max(layout == nil ? 0 : 1) == 1,
               let outcome = try writePreallocatedOnOneNode(layout, source: source, tmp: tmp, path: path, options: options,
                                                            communicator: comm, started: started, progress: progress) {
                return outcome
            }
            if comm.size > 1 && oneNode && options.compression == .bitshuffleLZ4,
               let outcome = try writeCompressedOnOneNode(doc, source: source, tmp: tmp, path: path, options: options, placement: placement,
                                                          late: late, checksum: checksum, communicator: comm, started: started,
                                                          progress: progress) {
                return outcome
            }
            var openError: String?
            do {
                file = try HDF5Library.serialized { () throws(ParallelNexusError) in
                    // Every rank compresses its own chunks through HDF5's filter: the faster one where it can.
                    if options.compression == .bitshuffleLZ4 { _ = BitshuffleLZ4.replacesHDF5Filter }
                    return try HDF5File.openForWriting(path: tmp, communicator: comm, alignment: placement)
                }
            }
            catch { openError = error.message }
            try agree(openError)
            let f = file!

            let mine = comm.share(of: g.scanY)
            let budget: Int
            // One process compressing bitshuffle+LZ4 itself works in steps small enough that the frames
            // are still in the cache when compressed (from memory, the bit transposition cost 3× more).
            if !comm.usesMPI && options.compression == .bitshuffleLZ4 { budget = min(options.bufferBytes, 4 << 20) }
            // Ranks compressing through HDF5's filter likewise: with 8 MiB steps a step is still in the
            // cache when HDF5 gathers and filters its chunks (1 GiB on 2 ranks: 0.60–0.61 s against
            // 0.61–0.88 s with 64 MiB steps, and 81 MB of peak RSS per rank instead of 219 MB).
            else if options.compression == .bitshuffleLZ4 { budget = min(options.bufferBytes, 8 << 20) }
            else { budget = options.bufferBytes }
            let plan = rampedSteps(rows: mine, scanX: g.scanX, frameBytes: g.frameBytes, chunkFrames: options.chunkFrames, budget: budget)
            let rounds = comm.max(plan.count)
            var sums = [Double](repeating: 0, count: g.scanY * g.scanX)
            let e = "/" + doc.entry + "/"
            let direct = DirectChunks(geometry: g, options: options, communicator: comm, stepFrames: plan.map { $0.ny * $0.nx }.max() ?? 0)
            // HDF5's filter pipeline allocates and frees buffers of a little over a chunk for every chunk
            // (its copy of the frames, the filter's output). With glibc's defaults each went to a mapping
            // of its own or to heap that was given back and faulted in again: keep freed memory instead
            // (at most 64 MiB of it).
            if direct == nil && options.compression != .none { _ = emflow_keep_freed_heap(4 << 20, 64 << 20) }
            if comm.isRoot { writeback = open(tmp, O_RDONLY | O_CLOEXEC) }

            try HDF5Library.serialized { () throws in
                let ds = try f.openArray(e + doc.images[0].dataGroup + "/real", type: g.pixelType)
                defer { try? ds.close() }
                // HDF5 sources read through the HDF5 library, which this thread holds while writing.
                let reader = StepReader(plan: plan, source: source, frameBytes: g.frameBytes, buffers: source is HDF5FrameSource ? 1 : 2)
                defer { reader.finish() }
                for i in 0..<rounds {
                    try agree(i < plan.count ? reader.take(i).error : nil)
                    if i < plan.count {
                        let buf = reader.buffer(i), s = plan[i]
                        reader.prefetch(i + 1)
                        if let direct { try direct.write(s, from: buf, to: ds) }
                        else { try ds.write(start: [s.y, s.x, 0, 0], count: [s.ny, s.nx, g.frameHeight, g.frameWidth], UnsafeRawBufferPointer(buf.frames)) }
                        for (k, v) in buf.sums.enumerated() { sums[(s.y + k / s.nx) * g.scanX + s.x + k % s.nx] = v }
                        progress(s.ny * s.nx * g.frameBytes)
                    } else { try ds.writeNothing() }
                    // Start writing back what is written so far, so the final fsync has little left.
                    if writeback >= 0 { _ = emflow_start_writeback(writeback) }
                }
                try ds.close()
                if doc.images.count > 1 {
                    let summary = try f.openArray(e + doc.images[1].dataGroup + "/real", type: .float64)
                    defer { try? summary.close() }
                    // Each rank summed the frames it read; every rank writes its share of the rows.
                    let totals = comm.sum(sums)
                    if mine.isEmpty { try summary.writeNothing() }
                    else {
                        let all = totals[(mine.lowerBound * g.scanX)..<(mine.upperBound * g.scanX)]
                        try all.withUnsafeBytes { (b) throws in try summary.write(start: [mine.lowerBound, 0], count: [mine.count, g.scanX], b) }
                    }
                    try summary.close()
                }
                try f.close()
            }
            file = nil

            var lateError: String? = nil
            if comm.isRoot {
                do { try addLateFields(late, entry: e, tmp: tmp) } catch { lateError = "\(error)" }
            }
            try agree(lateError)
        } catch {
            if let f = file { HDF5Library.serialized { try? f.close() } }
            if comm.isRoot { _ = unlinkIgnoringErrors(tmp) }
            throw error
        }

        return try publish(tmp, as: path, checksum: checksum, bytesIn: g.totalBytes, communicator: comm, started: started)
    }

    /// Rank 0: the fields known only at the end (`late`), added to the closed file at `tmp`.
    static func addLateFields(_ late: (() throws -> [String: String])?, entry e: String, tmp: String) throws {
        let fields = try late?() ?? [:]
        guard !fields.isEmpty else { return }
        try HDF5Library.serialized { () throws in
            let f = try HDF5File.openForWriting(path: tmp)
            do {
                for (rel, value) in fields.sorted(by: { $0.key < $1.key }) {
                    try NXemWriter.writeField(.init(.string(value)), at: e + rel, in: f)
                }
            } catch { try? f.close(); throw error }
            try f.close()
        }
    }

    /// Rank 0 makes the closed file at `tmp` durable, hashes it from the page cache meanwhile
    /// (`checksum`) and renames it to `path` (or removes it); every rank returns the outcome. Collective.
    static func publish(_ tmp: String, as path: String, checksum: (String) throws -> String, bytesIn: Int64,
                        communicator comm: Communicator, started: Date) throws -> Outcome {
        let tWritten = Date()
        var result: (String, Int64)? = nil
        var finishError: String? = nil
        if comm.isRoot {
            do {
                var sha = ""
                try NXemWriter.syncAndPublish(tmp, as: path) { t in sha = try checksum(t) }
                result = (sha, try FileStatus.of(path: path).size)
            } catch {
                _ = unlinkIgnoringErrors(tmp)
                finishError = "\(error)"
            }
        }
        if let m = comm.firstError(finishError) { throw ParallelNexusError(path: path, message: m) }
        let sha = comm.broadcast(result?.0 ?? "")
        let size = Int64(comm.max(Int(result?.1 ?? 0)))
        if comm.isRoot { profile(path, written: tWritten.timeIntervalSince(started), finished: Date().timeIntervalSince(tWritten)) }
        let rss = peakRSS()
        let rootRSS = Int64(comm.broadcast(String(rss))) ?? rss
        return Outcome(output: path, outputSHA256: sha, outputSize: size, bytesIn: bytesIn, ranks: comm.size,
                       seconds: Date().timeIntervalSince(started), peakRSSMax: Int64(comm.max(Int(rss))), peakRSSRoot: rootRSS)
    }

    /// This process's peak resident set size in bytes.
    public static func peakRSS() -> Int64 {
        var u = rusage()
        getrusage(RUSAGE_SELF.rawValue, &u)
        return Int64(u.ru_maxrss) * 1024
    }
}

/// A value handed to one helper thread while its owner waits for it (never used by both at once).
struct UncheckedBox<T>: @unchecked Sendable { let value: T; init(_ v: T) { value = v } }

/// A single process writes whole chunks itself: uncompressed ones straight from the step buffer,
/// bitshuffle+LZ4 ones compressed on every core first (HDF5 would filter them one at a time on its
/// one thread). Not for MPI files (direct chunk writes are serial) or deflate (HDF5's own filter).
final class DirectChunks {
    let g: ScanGeometry
    let k: Int
    let chunkBytes: Int
    let codec: BitshuffleLZ4?
    let out: UnsafeMutableRawBufferPointer
    let bound: Int
    var sizes: [Int]

    /// Frames per chunk where the chunks tile every scan row (so steps hold whole chunks), else nil.
    static func framesPerChunk(_ g: ScanGeometry, _ options: ParallelStackWriter.Options) -> Int? {
        let k = max(1, min(options.chunkFrames, g.scanX))
        return g.scanX % k == 0 ? k : nil
    }

    init?(geometry g: ScanGeometry, options: ParallelStackWriter.Options, communicator: Communicator, stepFrames: Int) {
        guard !communicator.usesMPI, let k = Self.framesPerChunk(g, options), stepFrames > 0 else { return nil }
        switch options.compression {
        case .none: codec = nil
        case .bitshuffleLZ4: guard let c = BitshuffleLZ4.shared else { return nil }; codec = c
        case .deflate: return nil
        }
        self.g = g; self.k = k
        chunkBytes = k * g.frameBytes
        let chunks = (stepFrames + k - 1) / k
        bound = codec?.bound(elements: chunkBytes / g.pixelType.size, elementSize: g.pixelType.size) ?? 0
        out = .allocate(byteCount: max(1, bound * chunks), alignment: 64)
        sizes = [Int](repeating: 0, count: chunks)
    }
    deinit { out.deallocate() }

    func write(_ s: ParallelStackWriter.Step, from buf: ParallelStackWriter.StepBuffer, to ds: ArrayDataset) throws {
        let chunks = s.ny * s.nx / k
        func offset(_ c: Int) -> [Int] { s.chunkOrigin(c, framesPerChunk: k) }
        guard let codec else {
            for c in 0..<chunks {
                try ds.writeChunk(at: offset(c), UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(buf.frames)[(c * chunkBytes)..<((c + 1) * chunkBytes)]))
            }
            return
        }
        let src = UncheckedBox(UnsafeRawBufferPointer(buf.frames)), dst = UncheckedBox(out)
        let results = UncheckedBox(UnsafeMutableBufferPointer<Int>.allocate(capacity: chunks))
        defer { results.value.deallocate() }
        let (cb, bd, elt) = (chunkBytes, bound, g.pixelType.size)
        // Each chunk is stored as soon as it and those before it are compressed, while the other
        // threads compress on: no core waits for the slowest chunk of the step.
        let ready = (0..<chunks).map { _ in DispatchSemaphore(value: 0) }
        let work = ParallelThreads.start(count: chunks, width: ProcessInfo.processInfo.activeProcessorCount) { _, c in
            let input = UnsafeRawBufferPointer(rebasing: src.value[(c * cb)..<((c + 1) * cb)])
            let o = UnsafeMutableRawBufferPointer(rebasing: dst.value[(c * bd)..<((c + 1) * bd)])
            results.value[c] = codec.compress(input, elementSize: elt, into: o) ?? -1
            ready[c].signal()
        }
        defer { work.wait() }
        for c in 0..<chunks {
            ready[c].wait()
            let n = results.value[c]
            guard n > 0 else { throw ParallelNexusError(path: ds.file.path, message: "bitshuffle+LZ4 compression of chunk \(offset(c)) failed") }
            try ds.writeChunk(at: offset(c), UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(out)[(c * bd)..<(c * bd + n)]))
        }
    }
}
