internal import CChecksums
import Foundation
import Synchronization
import POSIXFiles

/// A SHA-256 or MD5 stream that can be advanced together with another on one core. Each digest is a
/// chain of dependent rounds, bound by their latency rather than by the core's width: two chains
/// interleaved hash 1.5 times as many bytes a second as one alone with SHA-NI (3.2 against 2.1 GB/s
/// here), and 1.5 times as many as OpenSSL's single MD5 stream (1.4–1.5 against 0.9 GB/s). Where
/// pairing does not pay (SHA-256 on a CPU without SHA-NI) the stream is OpenSSL's and a paired
/// update feeds the two one after the other.
///
/// Not shareable: one thread at a time feeds a stream (`DigestPairing` hands it between threads).
public final class DigestStream: @unchecked Sendable {
    public let algorithm: Digester.Algorithm
    private let native: UnsafeMutablePointer<emflow_digest>?
    private var openSSL: Digester?

    public init(_ algorithm: Digester.Algorithm) {
        self.algorithm = algorithm
        if Self.pairsFaster(algorithm) {
            native = .allocate(capacity: 1)
            emflow_digest_init(native, algorithm == .md5 ? Int32(EMFLOW_MD5) : Int32(EMFLOW_SHA256))
        } else {
            native = nil
            openSSL = Digester(algorithm)
        }
    }

    deinit { native?.deallocate() }

    /// Whether two streams of `algorithm` hash faster together than one after the other here.
    public static func pairsFaster(_ algorithm: Digester.Algorithm) -> Bool {
        emflow_digest_pairs_faster(algorithm == .md5 ? Int32(EMFLOW_MD5) : Int32(EMFLOW_SHA256)) != 0
    }

    public func update(_ bytes: UnsafeRawBufferPointer) {
        guard bytes.count > 0 else { return }
        if let native { emflow_digest_update(native, bytes.baseAddress, bytes.count) } else { openSSL!.update(bytes) }
    }

    /// Feeds `p` to `a` and `q` to `b`, interleaved where that is faster. `a` and `b` must differ.
    public static func update(_ a: DigestStream, _ p: UnsafeRawBufferPointer, _ b: DigestStream, _ q: UnsafeRawBufferPointer) {
        precondition(a !== b, "a stream cannot be paired with itself")
        if let x = a.native, let y = b.native, a.algorithm == b.algorithm {
            emflow_digest_update2(x, p.baseAddress, p.count, y, q.baseAddress, q.count)
        } else {
            a.update(p)
            b.update(q)
        }
    }

    /// The raw digest; the stream cannot be fed afterwards.
    public func finalizeBytes() -> [UInt8] {
        if let native {
            var out = [UInt8](repeating: 0, count: 32)
            let n = emflow_digest_final(native, &out)
            return Array(out.prefix(n))
        }
        return openSSL.take()!.finalizeBytes()
    }
}

/// Where threads that each feed a stream of their own meet to hash in pairs. A thread bringing bytes
/// finds another's of the same algorithm waiting and hashes both together, or leaves its own waiting for a partner for
/// at most `patience`, then hashes them alone. Either way it returns once its bytes are hashed, so
/// its buffer is free again and its stream's order holds. A thread never waits when no other stream
/// is open (`enter`/`leave` count them), and the wait is short against a block's transfer.
public final class DigestPairing: @unchecked Sendable {
    private final class Waiter {
        let stream: DigestStream
        let bytes: UnsafeRawBufferPointer
        var done = false
        init(_ stream: DigestStream, _ bytes: UnsafeRawBufferPointer) { self.stream = stream; self.bytes = bytes }
    }

    private let cond = NSCondition()
    private var open = 0
    private var waiting: Waiter?
    private let patience: TimeInterval
    private var pairedBytes = 0, aloneBytes = 0

    public init(patience: TimeInterval = 0.002) { self.patience = patience }

    /// A thread starts feeding a stream through here.
    public func enter() { cond.lock(); open += 1; cond.unlock() }

    /// The thread has no more to feed: a waiter stops waiting for it.
    public func leave() { cond.lock(); open -= 1; cond.broadcast(); cond.unlock() }

    /// How many bytes were hashed in pairs, and how many alone.
    public var counts: (paired: Int, alone: Int) { cond.lock(); defer { cond.unlock() }; return (pairedBytes, aloneBytes) }

    /// Feeds `bytes` to `stream`, paired with another thread's where one comes within the patience.
    public func update(_ stream: DigestStream, _ bytes: UnsafeRawBufferPointer) {
        guard bytes.count > 0 else { return }
        cond.lock()
        if let partner = waiting, partner.stream !== stream, partner.stream.algorithm == stream.algorithm {
            waiting = nil
            pairedBytes += min(bytes.count, partner.bytes.count) * 2
            aloneBytes += abs(bytes.count - partner.bytes.count)
            cond.unlock()
            DigestStream.update(partner.stream, partner.bytes, stream, bytes)
            cond.lock(); partner.done = true; cond.broadcast(); cond.unlock()
            return
        }
        if waiting == nil && open > 1 && DigestStream.pairsFaster(stream.algorithm) {
            let me = Waiter(stream, bytes)
            waiting = me
            let deadline = Date(timeIntervalSinceNow: patience)
            while waiting === me && open > 1 && cond.wait(until: deadline) {}
            if waiting !== me {
                // Taken: the partner hashes these bytes with its own.
                while !me.done { cond.wait() }
                cond.unlock()
                return
            }
            waiting = nil
        }
        aloneBytes += bytes.count
        cond.unlock()
        stream.update(bytes)
    }
}

extension FileHasher {
    /// The digests of `ranges` (offset and length) of an open file, on up to `width` threads, two
    /// ranges at a time where pairing is faster. Each thread reads through a buffer of its own, in
    /// pieces of at most `piece` bytes.
    public static func digests(_ algorithm: Digester.Algorithm, of fd: Int32, path: String, ranges: [(at: Int64, count: Int)],
                               width: Int, piece: Int = 4 << 20) -> ParallelDigests {
        ParallelDigests(algorithm, fd: fd, path: path, ranges: ranges, width: width, piece: piece)
    }
}

/// Range digests under way (`FileHasher.digests`): `wait()` gives them, or the first read error.
public final class ParallelDigests: @unchecked Sendable {
    private final class Outcome: Sendable {
        let results: Mutex<[[UInt8]]>
        let failure = Mutex<POSIXFileError?>(nil)
        init(_ count: Int) { results = Mutex(Array(repeating: [], count: count)) }
    }
    private let outcome: Outcome
    private let running: ParallelThreads.Running
    private let buffers: [UnsafeMutableRawBufferPointer]

    fileprivate init(_ algorithm: Digester.Algorithm, fd: Int32, path: String, ranges: [(at: Int64, count: Int)], width: Int, piece: Int) {
        let outcome = Outcome(ranges.count)
        self.outcome = outcome
        let group = DigestStream.pairsFaster(algorithm) ? 2 : 1
        let tasks = (ranges.count + group - 1) / group
        let width = max(1, min(width, tasks))
        let largest = ranges.map(\.count).max() ?? 0
        let size = max(1, min(piece, largest))
        // One buffer per range of a pair, per thread: reused across the thread's ranges.
        buffers = (0..<width * group).map { _ in .allocate(byteCount: size, alignment: 4096) }
        nonisolated(unsafe) let buffers = buffers
        running = ParallelThreads.start(count: tasks, width: width, shouldStop: { outcome.failure.withLock { $0 != nil } }) { w, t in
            let mine = Array(t * group..<min((t + 1) * group, ranges.count))
            let streams = mine.map { _ in DigestStream(algorithm) }
            var done = [Int](repeating: 0, count: mine.count)
            do throws(POSIXFileError) {
                while zip(mine, done).contains(where: { ranges[$0].count > $1 }) {
                    var pieces: [UnsafeRawBufferPointer] = []
                    for (k, i) in mine.enumerated() {
                        let n = min(size, ranges[i].count - done[k])
                        let buffer = UnsafeMutableRawBufferPointer(rebasing: buffers[w * group + k][0..<n])
                        if n > 0 { try FileDescriptor.readFull(fd, path: path, into: buffer, at: ranges[i].at + Int64(done[k])) }
                        pieces.append(UnsafeRawBufferPointer(buffer))
                        done[k] += n
                    }
                    if streams.count == 2 { DigestStream.update(streams[0], pieces[0], streams[1], pieces[1]) } else { streams[0].update(pieces[0]) }
                }
                let ds = streams.map { $0.finalizeBytes() }
                outcome.results.withLock { for (k, i) in mine.enumerated() { $0[i] = ds[k] } }
            } catch {
                outcome.failure.withLock { if $0 == nil { $0 = error } }
            }
        }
    }

    deinit {
        running.wait()   // the threads read into the buffers until they end
        for b in buffers { b.deallocate() }
    }

    /// Waits for every range; their digests in the order given.
    public func wait() throws(POSIXFileError) -> [[UInt8]] {
        running.wait()
        if let e = outcome.failure.withLock({ $0 }) { throw e }
        return outcome.results.withLock { $0 }
    }

    /// Stops taking new ranges after the current ones (their results are dropped) and waits.
    public func cancel(_ error: POSIXFileError) {
        outcome.failure.withLock { if $0 == nil { $0 = error } }
        running.wait()
    }
}
