internal import CHDF5
import Foundation

/// The ranks of one collective write: MPI's world when the process was started by `mpirun` or
/// `srun`, else a single rank with no MPI at all (no MPI_Init, so serial use costs nothing).
/// Every collective call must be made by all ranks in the same order (infra/hdf5-mpi.md).
public final class Communicator: @unchecked Sendable {
    public let rank: Int
    public let size: Int
    /// Whether MPI was initialised (false: one rank, plain POSIX file driver).
    public let usesMPI: Bool

    init(rank: Int, size: Int, usesMPI: Bool) { self.rank = rank; self.size = size; self.usesMPI = usesMPI }

    /// The communicator stages run with in this process (`emflow worker --mpi-task` sets MPI's world).
    nonisolated(unsafe) public static var current: Communicator = .serial

    /// A rank of a pretend world of `size` (for planning tests; collective calls are not available).
    public static func testing(rank: Int, size: Int) -> Communicator { Communicator(rank: rank, size: size, usesMPI: false) }

    /// One rank, no MPI.
    public static let serial = Communicator(rank: 0, size: 1, usesMPI: false)

    /// Whether this process was started by an MPI launcher (mpirun/mpiexec or srun with a PMI plugin).
    public static var launchedByMPI: Bool {
        let env = ProcessInfo.processInfo.environment
        return env["OMPI_COMM_WORLD_SIZE"] != nil || env["PMIX_RANK"] != nil || env["PMI_RANK"] != nil
    }

    /// MPI's world, initialised on first use. Call `finalize()` before the process exits.
    public static func world() throws(ParallelNexusError) -> Communicator {
        guard emflow_mpi_init() == MPI_SUCCESS else { throw ParallelNexusError(path: "MPI", message: "MPI_Init failed") }
        return Communicator(rank: Int(emflow_mpi_rank()), size: Int(emflow_mpi_size()), usesMPI: true)
    }

    /// Ends MPI (after every HDF5 file is closed). Harmless when MPI was never started. It first
    /// turns Nagle's algorithm off (`sendSmallMessagesAtOnce`) so that the closing fence is not held
    /// back by a delayed ACK.
    public static func finalize() { _ = emflow_mpi_finalize() }

    /// Sets TCP_NODELAY on every TCP socket of this process and returns how many. Open MPI 4's PMIx
    /// client connects to its server (mpirun, or slurmstepd under srun) without it, so the last small
    /// message of MPI_Finalize's fence waited for the server's delayed ACK: 46 ms of every rank's
    /// finalize here, 3 ms with it.
    @discardableResult public static func sendSmallMessagesAtOnce() -> Int { Int(emflow_tcp_nodelay_all()) }

    /// Ends every rank at once, e.g. when one rank cannot go on and the others would wait forever.
    public func abort(code: Int32 = 1) -> Never {
        if usesMPI { emflow_mpi_abort(code) }
        exit(code)
    }

    public var isRoot: Bool { rank == 0 }

    public func barrier() { if usesMPI { _ = emflow_mpi_barrier() } }

    public func min(_ v: Int) -> Int { reduce(v, emflow_mpi_allreduce_min_i64) }
    public func max(_ v: Int) -> Int { reduce(v, emflow_mpi_allreduce_max_i64) }
    public func sum(_ v: Int) -> Int { reduce(v, emflow_mpi_allreduce_sum_i64) }

    private func reduce(_ v: Int, _ op: (Int64, UnsafeMutablePointer<Int64>) -> Int32) -> Int {
        guard usesMPI else { return v }
        var out: Int64 = 0
        _ = op(Int64(v), &out)
        return Int(out)
    }

    /// Element-wise sums of every rank's `values` (all ranks pass the same count), on every rank.
    public func sum(_ values: [Double]) -> [Double] {
        guard usesMPI, size > 1, !values.isEmpty else { return values }
        var out = values
        out.withUnsafeMutableBufferPointer { _ = emflow_mpi_allreduce_sum_f64($0.baseAddress, Int32($0.count)) }
        return out
    }

    /// Whether every rank runs on one node, so that each sees what the others wrote through the same
    /// page cache as soon as their write calls return. Collective.
    public func sharesOneNode() -> Bool {
        guard usesMPI else { return true }
        return min(Int(emflow_mpi_node_size())) == size
    }

    /// `root`'s bytes on every rank.
    public func broadcast(_ bytes: [UInt8], from root: Int = 0) -> [UInt8] {
        guard usesMPI else { return bytes }
        var n = Int64(rank == root ? bytes.count : 0)
        withUnsafeMutableBytes(of: &n) { _ = emflow_mpi_bcast_bytes($0.baseAddress, 8, Int32(root)) }
        var buf = rank == root ? bytes : [UInt8](repeating: 0, count: Int(n))
        if n > 0 { buf.withUnsafeMutableBytes { _ = emflow_mpi_bcast_bytes($0.baseAddress, Int32(n), Int32(root)) } }
        return buf
    }

    public func broadcast(_ s: String, from root: Int = 0) -> String {
        String(decoding: broadcast(Array(s.utf8), from: root), as: UTF8.self)
    }

    /// Agreement on failure: every rank passes its own error (or nil) and gets the same answer, the
    /// error of the lowest failing rank, so all ranks stop together instead of waiting on each other.
    public func firstError(_ mine: String?) -> String? {
        guard usesMPI else { return mine }
        let failing = min(mine == nil ? size : rank)
        guard failing < size else { return nil }
        let msg = broadcast(mine ?? "", from: failing)
        return size > 1 && failing != 0 ? "rank \(failing): \(msg)" : msg
    }

    /// The rows `[start, start+count)` of `total` this rank owns: contiguous blocks, the first
    /// `total % size` ranks one row more; a rank may own none.
    public func share(of total: Int) -> Range<Int> {
        let base = total / size, extra = total % size
        let start = rank * base + Swift.min(rank, extra)
        return start..<(start + base + (rank < extra ? 1 : 0))
    }
}
