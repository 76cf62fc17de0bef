internal import CHDF5
import Foundation
import POSIXFiles
import EMFormats

/// Memory that the ranks of one node share: MPI's shared window, each rank's part starting on a page.
/// Each part begins with a page of counters: the rank's own (its steps ready in its memory), and in
/// rank 0's part also the steps (of all ranks, in file order) that rank 0 is done with and whether any
/// rank failed.
final class SharedWindow: @unchecked Sendable {
    private var win: MPI_Win?
    private let parts: [UnsafeMutableRawPointer]
    let bytesPerRank: Int
    private static let page = Int(sysconf(Int32(_SC_PAGESIZE)))

    private init(win: MPI_Win?, parts: [UnsafeMutableRawPointer], bytesPerRank: Int) {
        self.win = win; self.parts = parts; self.bytesPerRank = bytesPerRank
    }

    /// `bytes` for every rank (after a page of its own for the counter), or nil on every rank where
    /// any rank could not have them. Collective.
    static func allocate(bytes: Int, communicator comm: Communicator) -> SharedWindow? {
        var base: UnsafeMutableRawPointer?
        var win: MPI_Win?
        let per = page + (bytes + page - 1) / page * page
        // One page more than asked: MPI need not start a part on a page boundary.
        let ok = emflow_mpi_win_allocate_shared(Int64(per + page), &base, &win) == 0
        var parts: [UnsafeMutableRawPointer] = []
        if ok, let w = win {
            for r in 0..<comm.size {
                guard let p = emflow_mpi_win_shared_part(w, Int32(r)) else { break }
                let aligned = (Int(bitPattern: p) + page - 1) / page * page
                parts.append(UnsafeMutableRawPointer(bitPattern: aligned)!)
            }
        }
        // Where any rank went without, the window is left to MPI_Finalize: freeing it is collective,
        // and a rank whose allocation failed may not take part.
        guard comm.min(ok && parts.count == comm.size ? 1 : 0) == 1 else { return nil }
        let window = SharedWindow(win: win, parts: parts, bytesPerRank: per - page)
        emflow_store_release_i64(parts[comm.rank], 0)
        if comm.isRoot { emflow_store_release_i64(parts[0] + 8, 0); emflow_store_release_i64(parts[0] + 16, 0) }
        comm.barrier()
        return window
    }

    /// `rank`'s memory (after its counter page).
    func part(_ rank: Int) -> UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: parts[rank] + Self.page, count: bytesPerRank)
    }

    /// The steps `rank` has ready in its memory (read; compressed where the frames are).
    func stepsReady(by rank: Int) -> Int { Int(emflow_load_acquire_i64(parts[rank])) }
    func setStepsReady(by rank: Int, _ v: Int) { emflow_store_release_i64(parts[rank], Int64(v)) }
    /// The steps (of all ranks, in file order) that rank 0 is done with (hashed, or stored): their
    /// memory may be used again.
    var stepsDone: Int { Int(emflow_load_acquire_i64(parts[0] + 8)) }
    func setStepsDone(_ v: Int) { emflow_store_release_i64(parts[0] + 8, Int64(v)) }
    /// Set by a rank that cannot go on, so that no rank waits for it.
    var failed: Bool { emflow_load_acquire_i64(parts[0] + 16) != 0 }
    func fail() { emflow_store_release_i64(parts[0] + 16, 1) }

    /// Waits, asleep (20 µs at first, up to 1 ms at a time), until `ready`; false if a rank failed.
    func wait(until ready: () -> Bool) -> Bool {
        var ns = 20_000
        while !ready() {
            if failed { return false }
            var ts = timespec(tv_sec: 0, tv_nsec: ns)
            nanosleep(&ts, nil)
            ns = Swift.min(ns * 2, 1_000_000)
        }
        return true
    }

    /// Collective; after every reader of the memory is done.
    func free() {
        guard win != nil else { return }
        _ = emflow_mpi_win_free(&win)
        win = nil
    }
}

extension PreallocatedLayout {
    /// This layout as bytes (for the other ranks).
    var encoded: [UInt8] {
        let values = [frameChunks, framesPerChunk, summaryChunkRows] + extents.flatMap { [$0.offset, $0.length] }
        return values.flatMap { v in withUnsafeBytes(of: Int64(v).littleEndian) { Array($0) } }
    }

    init?(encoded bytes: [UInt8]) {
        guard bytes.count >= 24, bytes.count % 16 == 8 else { return nil }
        let v = stride(from: 0, to: bytes.count, by: 8).map { i in
            Int(Int64(littleEndian: bytes[i..<(i + 8)].withUnsafeBytes { $0.loadUnaligned(as: Int64.self) }))
        }
        self.init(extents: stride(from: 3, to: v.count, by: 2).map { (offset: v[$0], length: v[$0 + 1]) },
                  frameChunks: v[0], framesPerChunk: v[1], summaryChunkRows: v[2])
    }
}

extension ParallelStackWriter {
    /// The steps of the whole scan (at most `preallocatedStep` each) and this rank's share of them, dealt
    /// in turns so that the file fills front to back: step n of the deal is rank n % size's n / size.
    static func dealtSteps(_ g: ScanGeometry, framesPerChunk k: Int, options: Options,
                           communicator comm: Communicator) -> (all: [Step], mine: [Step]) {
        let all = steps(rows: 0..<g.scanY, scanX: g.scanX, frameBytes: g.frameBytes, chunkFrames: k, budget: min(options.bufferBytes, preallocatedStep))
        return (all, stride(from: comm.rank, to: all.count, by: comm.size).map { all[$0] })
    }

    /// Several ranks on one node, uncompressed frames, a file that `PreallocatedLayout` describes
    /// (closed, at `tmp`; `layout` given on rank 0): written as one process writes it
    /// (`writePreallocated`), with the steps dealt out to the ranks in turns. Each rank fills the chunks
    /// HDF5 reserved for its steps itself (direct I/O where the file system takes it), from step
    /// buffers in memory that the node's ranks share; rank 0's hashing thread hashes every step from
    /// that memory, in file order, as soon as its rank has read it. The ranks wait on each other only
    /// through counters in that memory, not in lockstep rounds (which cost each rank 0.09 s of waiting
    /// per GiB here), and agree on errors at the end. No rank reads back what another
    /// wrote (from a disk written directly, that cost 1.8 s of system time per GiB here), and the frames
    /// do not go through the page cache (on the two ranks of the same machine, 0.75 s for 1 GiB through
    /// HDF5's collective I/O and the cache). A rank reads into a buffer again only once rank 0 has
    /// hashed what it held. Returns nil, on every rank, where the shared memory cannot be had; the
    /// caller then writes through HDF5. Collective.
    static func writePreallocatedOnOneNode(_ rootLayout: PreallocatedLayout?, source: FrameSource, tmp: String, path: String,
                                           options: Options, communicator comm: Communicator, started: Date,
                                           progress: @escaping @Sendable (Int) -> Void) throws -> Outcome? {
        func agree(_ e: String?) throws {
            if let m = comm.firstError(e) { throw ParallelNexusError(path: path, message: m) }
        }
        guard let layout = PreallocatedLayout(encoded: comm.broadcast(rootLayout?.encoded ?? [])) else { return nil }
        let g = source.geometry
        let k = layout.framesPerChunk, chunkBytes = k * g.frameBytes
        let (dealt, mine) = dealtSteps(g, framesPerChunk: k, options: options, communicator: comm)
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let stepBytes = ((dealt.map { $0.ny * $0.nx }.max() ?? 0) * g.frameBytes + page - 1) / page * page
        // Three buffers per rank: one being read, one written, one waiting to be hashed.
        let ring = 3
        guard let window = SharedWindow.allocate(bytes: ring * stepBytes, communicator: comm) else { return nil }
        defer { window.free() }
        func buffer(of rank: Int, _ i: Int) -> UnsafeMutableRawBufferPointer {
            let start = (i % ring) * stepBytes
            return UnsafeMutableRawBufferPointer(rebasing: window.part(rank)[start..<(start + stepBytes)])
        }

        let writable = open(tmp, O_WRONLY | O_CLOEXEC)
        let readable = comm.isRoot ? open(tmp, O_RDONLY | O_CLOEXEC) : -1
        defer { if writable >= 0 { close(writable) }; if readable >= 0 { close(readable) } }
        try agree(writable < 0 || (comm.isRoot && readable < 0) ? "cannot open \(tmp): \(String(cString: strerror(errno)))" : nil)
        let direct = DirectWriter(writable, path: tmp, enabled: options.directIO)
        let hasher = comm.isRoot ? WrittenFileHasher(fd: readable, path: tmp) : nil
        let directChunks = direct.accepts(offset: layout.extents.first?.offset ?? 1, count: chunkBytes)
        let maxRun = max(1, (directChunks ? 4 << 20 : 128 << 10) / chunkBytes)
        var sums = [Double](repeating: 0, count: g.scanY * g.scanX)
        var failure: String?
        do {
            // Rank 0 hands every step to its hashing thread at once, in file order: each waits there
            // until its rank has read it. Step n of the deal is rank n % size's step n / size.
            if let hasher {
                for (n, s) in dealt.enumerated() {
                    let r = n % comm.size, j = n / comm.size, memory = buffer(of: r, j)
                    let pieces = layout.pieces(of: s.frames(scanX: g.scanX))
                    for (p, piece) in pieces.enumerated() {
                        let isLast = p == pieces.count - 1
                        hasher.append(UnsafeRawBufferPointer(rebasing: memory[piece.bytes]), at: piece.offset,
                                      when: { window.wait { window.stepsReady(by: r) > j } }) {
                            if isLast { window.setStepsDone(n + 1) }
                        }
                    }
                }
            }
            let reader = StepReader(plan: mine, source: source, buffers: (0..<ring).map { .init(borrowing: buffer(of: comm.rank, $0)) })
            // The hashing thread reads the shared buffers until it is drained.
            defer { reader.finish(); hasher?.drain() }
            for (j, s) in mine.enumerated() {
                let buf = reader.take(j)
                if let e = buf.error { failure = e; break }
                window.setStepsReady(by: comm.rank, j + 1)
                // The next step goes into the buffer of step j + 1 - ring: once rank 0 has hashed it.
                if j + 1 >= ring && j + 1 < mine.count {
                    let held = (j + 1 - ring) * comm.size + comm.rank
                    guard window.wait(until: { window.stepsDone > held }) else { break }
                }
                reader.prefetch(j + 1)
                let frames = s.frames(scanX: g.scanX)
                do {
                    for piece in layout.pieces(of: frames, limit: maxRun) {
                        try direct.write(UnsafeRawBufferPointer(rebasing: buf.frames[piece.bytes]), at: piece.offset)
                    }
                } catch { failure = "\(error)"; break }
                for (i, v) in buf.sums.enumerated() { sums[frames.lowerBound + i] = v }
                progress(frames.count * g.frameBytes)
                // Start writing back what went through the cache, so the final fsync has little left.
                if !directChunks { _ = emflow_start_writeback(writable) }
            }
            if failure != nil { window.fail() }
        }
        try agree(failure)  // every rank's steps are in the file

        // Rank 0 adds the summary image (each rank summed the frames it read), makes the file durable,
        // finishes its hash meanwhile and renames it.
        let tWritten = Date()
        let totals = comm.sum(sums)
        var finished: (sha: String, size: Int)?
        var finishError: String?
        if let hasher {
            do {
                try layout.writeSummary(totals, scanX: g.scanX, fd: writable, path: tmp, hasher: hasher)
                let size = Int(try FileStatus.of(path: tmp).size)
                var sha = ""
                try NXemWriter.syncAndPublish(tmp, as: path) { _ in sha = try hasher.finish(size: size) }
                finished = (sha, size)
            } catch {
                _ = unlinkIgnoringErrors(tmp)
                finishError = "\(error)"
            }
        }
        try agree(finishError)
        if comm.isRoot { profile(path, written: tWritten.timeIntervalSince(started), finished: Date().timeIntervalSince(tWritten)) }
        let sha = comm.broadcast(finished?.sha ?? "")
        let size = comm.max(finished?.size ?? 0)
        let rss = peakRSS()
        return Outcome(output: path, outputSHA256: sha, outputSize: Int64(size), bytesIn: g.totalBytes, ranks: comm.size,
                       seconds: Date().timeIntervalSince(started), peakRSSMax: Int64(comm.max(Int(rss))),
                       peakRSSRoot: Int64(comm.broadcast(String(rss))) ?? rss, hashedWhileWriting: true,
                       directIO: comm.max(direct.directBytes > 0 ? 1 : 0) == 1)
    }
}

/// What rank 0's storing thread reports when it ends.
private final class StoreResult: @unchecked Sendable {
    var error: String?
    let ended = DispatchSemaphore(value: 0)
}

extension ParallelStackWriter {
    /// Several ranks on one node, bitshuffle+LZ4 frames in chunks that tile the scan rows: written as one
    /// process writes them (`DirectChunks`), with the compressing spread over the ranks. The steps are
    /// dealt in turns; each rank reads its steps and compresses their chunks into a ring of three slots in
    /// memory the node's ranks share, and a thread of rank 0 stores every chunk from there as it comes,
    /// in file order, with HDF5's direct chunk writes into the file that rank 0 alone has open. A rank
    /// compresses into a slot again only once rank 0 has stored what it held. HDF5's collective writes of
    /// filtered chunks (every rank filtering and writing in lockstep, the write's collectives and the
    /// shared file in between) took 12–20% longer on two ranks here. The output is hashed after it is
    /// closed, as one process does. Returns nil, on every rank, where the shared memory cannot be had or
    /// a rank has no compressor of its own; the caller then writes through HDF5. Collective.
    static func writeCompressedOnOneNode(_ doc: NXemDocument, source: FrameSource, tmp: String, path: String, options: Options,
                                         placement: HDF5File.Alignment?, late: (() throws -> [String: String])?,
                                         checksum: (String) throws -> String, communicator comm: Communicator, started: Date,
                                         progress: @escaping @Sendable (Int) -> Void) throws -> Outcome? {
        func agree(_ e: String?) throws {
            if let m = comm.firstError(e) { throw ParallelNexusError(path: path, message: m) }
        }
        let g = source.geometry
        guard comm.min(BitshuffleLZ4.shared == nil ? 0 : 1) == 1, let codec = BitshuffleLZ4.shared,
              let k = DirectChunks.framesPerChunk(g, options) else { return nil }
        let chunkBytes = k * g.frameBytes, elt = g.pixelType.size
        let bound = (codec.bound(elements: chunkBytes / elt, elementSize: elt) + 63) / 64 * 64
        let (dealt, mine) = dealtSteps(g, framesPerChunk: k, options: options, communicator: comm)
        // A slot: each chunk's compressed size, then the chunks, each at most `bound` bytes.
        let slotChunks = (dealt.map { $0.ny * $0.nx }.max() ?? 0) / k
        let sizesBytes = (slotChunks * 8 + 63) / 64 * 64, slotBytes = sizesBytes + slotChunks * bound
        let ring = 3
        guard let window = SharedWindow.allocate(bytes: ring * slotBytes, communicator: comm) else { return nil }
        defer { window.free() }
        @Sendable func slot(of rank: Int, _ j: Int) -> UnsafeMutableRawBufferPointer {
            let start = (j % ring) * slotBytes
            return UnsafeMutableRawBufferPointer(rebasing: window.part(rank)[start..<(start + slotBytes)])
        }

        // Rank 0 opens the file that it created, for itself.
        let e = "/" + doc.entry + "/"
        var file: HDF5File?
        var stack: ArrayDataset?
        var openError: String?
        if comm.isRoot {
            do {
                try HDF5Library.serialized { () throws(ParallelNexusError) in
                    // The summary image goes through HDF5's filter.
                    _ = BitshuffleLZ4.replacesHDF5Filter
                    let f = try HDF5File.openForWriting(path: tmp, alignment: placement)
                    file = f
                    stack = try f.openArray(e + doc.images[0].dataGroup + "/real", type: g.pixelType)
                }
            } catch { openError = error.message }
        }
        func closeFile() {
            HDF5Library.serialized { try? stack?.close(); try? file?.close() }
            stack = nil; file = nil
        }
        do {
            try agree(openError)
            // Rank 0's thread stores step n of the deal (rank n % size's step n / size) once its rank has
            // it ready, then lets that slot go.
            let stored = StoreResult()
            if let ds = stack {
                let target = UncheckedBox(ds), size = comm.size
                Thread.detachNewThread {
                    defer { stored.ended.signal() }
                    for (n, s) in dealt.enumerated() {
                        let r = n % size, j = n / size
                        guard window.wait(until: { window.stepsReady(by: r) > j }) else { return }
                        let memory = slot(of: r, j)
                        do throws(ParallelNexusError) {
                            try HDF5Library.serialized { () throws(ParallelNexusError) in
                                for c in 0..<(s.ny * s.nx / k) {
                                    let bytes = Int(memory.load(fromByteOffset: c * 8, as: Int64.self))
                                    let at = sizesBytes + c * bound
                                    try target.value.writeChunk(at: s.chunkOrigin(c, framesPerChunk: k), UnsafeRawBufferPointer(rebasing: memory[at..<(at + bytes)]))
                                }
                            }
                        } catch {
                            stored.error = error.message
                            window.fail()
                            return
                        }
                        window.setStepsDone(n + 1)
                    }
                }
            }

            let reader = StepReader(plan: mine, source: source, frameBytes: g.frameBytes, buffers: 2)
            var sums = [Double](repeating: 0, count: g.scanY * g.scanX)
            var failure: String?
            for (j, s) in mine.enumerated() {
                let buf = reader.take(j)
                if let e = buf.error { failure = e; break }
                reader.prefetch(j + 1)
                // The slot held step j - ring: once rank 0 has stored it.
                if j >= ring {
                    let held = (j - ring) * comm.size + comm.rank
                    guard window.wait(until: { window.stepsDone > held }) else { break }
                }
                let memory = slot(of: comm.rank, j)
                for c in 0..<(s.ny * s.nx / k) {
                    let at = sizesBytes + c * bound
                    let input = UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(buf.frames)[(c * chunkBytes)..<((c + 1) * chunkBytes)])
                    guard let n = codec.compress(input, elementSize: elt, into: UnsafeMutableRawBufferPointer(rebasing: memory[at..<(at + bound)])) else {
                        failure = "bitshuffle+LZ4 compression of chunk \(s.chunkOrigin(c, framesPerChunk: k)) failed"
                        break
                    }
                    memory.storeBytes(of: Int64(n), toByteOffset: c * 8, as: Int64.self)
                }
                if failure != nil { break }
                window.setStepsReady(by: comm.rank, j + 1)
                let frames = s.frames(scanX: g.scanX)
                for (i, v) in buf.sums.enumerated() { sums[frames.lowerBound + i] = v }
                progress(frames.count * g.frameBytes)
            }
            reader.finish()
            if failure != nil { window.fail() }
            if comm.isRoot { stored.ended.wait() }
            try agree(failure ?? stored.error)  // every chunk is in the file

            // Rank 0 adds the summary image (each rank summed the frames it read) and closes the file.
            let totals = comm.sum(sums)
            var closeError: String?
            if let f = file {
                do {
                    try HDF5Library.serialized { () throws in
                        try stack?.close()
                        stack = nil
                        if doc.images.count > 1 {
                            let summary = try f.openArray(e + doc.images[1].dataGroup + "/real", type: .float64)
                            defer { try? summary.close() }
                            try totals.withUnsafeBytes { (b) throws in try summary.write(start: [0, 0], count: [g.scanY, g.scanX], b) }
                            try summary.close()
                        }
                        try f.close()
                        file = nil
                    }
                    try addLateFields(late, entry: e, tmp: tmp)
                } catch { closeError = "\(error)" }
            }
            try agree(closeError)
        } catch {
            closeFile()
            throw error
        }
        var outcome = try publish(tmp, as: path, checksum: checksum, bytesIn: g.totalBytes, communicator: comm, started: started)
        outcome.storedByRoot = true
        return outcome
    }
}
