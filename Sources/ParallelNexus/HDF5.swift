internal import CHDF5
import Synchronization
import EMFormats

/// What went wrong writing or reading a NeXus/HDF5 file, with HDF5's own error stack.
public struct ParallelNexusError: Error, CustomStringConvertible, Sendable {
    public let path: String
    public let message: String
    public init(path: String, message: String) { self.path = path; self.message = message }
    public var description: String { "\(path): \(message)" }
}

/// The element types emflow writes are EMFormats' pixel types (named as NumPy and h5py users know them).
public typealias ElementType = PixelType

extension PixelType {
    var memoryType: hid_t {
        switch self {
        case .uint8: emflow_h5t_native_uint8()
        case .int8: emflow_h5t_native_int8()
        case .uint16: emflow_h5t_native_uint16()
        case .int16: emflow_h5t_native_int16()
        case .uint32: emflow_h5t_native_uint32()
        case .int32: emflow_h5t_native_int32()
        case .uint64: emflow_h5t_native_uint64()
        case .int64: emflow_h5t_native_int64()
        case .float32: emflow_h5t_native_float()
        case .float64: emflow_h5t_native_double()
        }
    }

    var fileType: hid_t {
        switch self {
        case .uint8: emflow_h5t_std_u8le()
        case .int8: emflow_h5t_std_i8le()
        case .uint16: emflow_h5t_std_u16le()
        case .int16: emflow_h5t_std_i16le()
        case .uint32: emflow_h5t_std_u32le()
        case .int32: emflow_h5t_std_i32le()
        case .uint64: emflow_h5t_std_u64le()
        case .int64: emflow_h5t_std_i64le()
        case .float32: emflow_h5t_ieee_f32le()
        case .float64: emflow_h5t_ieee_f64le()
        }
    }
}

/// Chunk compression. Bitshuffle+LZ4 is HDF5 filter 32008 (a plugin that must be installed).
public enum Compression: Sendable, Equatable, Codable {
    case none
    case deflate(level: Int)
    case bitshuffleLZ4

    public static let bitshuffleFilterID = 32008

    public var name: String {
        switch self {
        case .none: "none"
        case .deflate(let l): "deflate(\(l))"
        case .bitshuffleLZ4: "bitshuffle+lz4"
        }
    }
}

/// A value stored as a scalar or small 1-D dataset or attribute, in the encodings NeXus readers and
/// the NXem validator accept (see infra/nxem-validator.md).
public enum H5Value: Sendable, Equatable {
    /// Variable-length UTF-8 scalar string (NX_CHAR, NX_DATE_TIME, @NX_class).
    case string(String)
    /// Fixed-length string (NX_BINARY, e.g. NXnote/data).
    case fixedString(String)
    case double(Double)
    case int(Int64)
    case uint32(UInt32)
    /// HDF5 enum FALSE=0/TRUE=1 on int8, which h5py reads as numpy.bool_.
    case bool(Bool)
    case doubles([Double])
    case int64s([Int64])
    /// 1-D array of variable-length strings (e.g. NXdata @axes).
    case strings([String])
}

/// HDF5's library (the MPI build) is not thread-safe: every call in this process goes through this lock.
/// Callers do their slow non-HDF5 work (reading and decoding the source) outside of it.
public enum HDF5Library {
    static let lock = Mutex(())
    /// The thread holding the lock (0: none), so a call made while it is held (a frame source that
    /// reads HDF5 inside a writer's fill) runs at once instead of deadlocking.
    static let holder = Atomic<UInt>(0)

    public static func serialized<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
        let me = UInt(pthread_self())
        if holder.load(ordering: .acquiring) == me { return try body() }
        return try lock.withLock { _ throws(E) -> T in
            holder.store(me, ordering: .releasing)
            defer { holder.store(0, ordering: .releasing) }
            emflow_h5_silence()
            return try body()
        }
    }

    /// The library's version, asked once (it is written into every file).
    public static let version: String = serialized {
        var a: UInt32 = 0, b: UInt32 = 0, c: UInt32 = 0
        H5get_libversion(&a, &b, &c)
        return "\(a).\(b).\(c)"
    }

    /// Whether a filter (by id) can be used, e.g. 32008 for bitshuffle.
    public static func filterAvailable(_ id: Int) -> Bool {
        serialized { H5Zfilter_avail(H5Z_filter_t(id)) > 0 }
    }
}

/// `H5P_DEFAULT` and `H5S_ALL` import as Int32 literals; HDF5 calls take `hid_t`.
let h5Default = hid_t(H5P_DEFAULT)
let h5All = hid_t(H5S_ALL)

func lastH5Error() -> String {
    let s = String(cString: emflow_h5_take_error())
    return s.isEmpty ? "HDF5 call failed" : s
}

/// An HDF5 file opened for writing (or reading). Objects are opened by path and closed within each
/// call, so nothing stays open when the file is closed. Use only inside `HDF5Library.serialized`.
public final class HDF5File {
    let id: hid_t
    public let path: String
    var closed = false

    init(id: hid_t, path: String) { self.id = id; self.path = path }

    /// Collective (MPI-IO) transfers when the file is shared by several ranks; nil: default (serial).
    var transfer: hid_t? = nil
    /// Whether every rank writes every object (all HDF5 metadata calls are collective).
    public private(set) var parallel = false

    /// Where HDF5 places objects (H5Pset_alignment): each at least `threshold` bytes long starts on a
    /// multiple of `boundary`.
    public struct Alignment: Sendable, Equatable {
        public var threshold: Int, boundary: Int
        public init(threshold: Int, boundary: Int) { self.threshold = threshold; self.boundary = boundary }
        /// Objects at least a stripe long start on a stripe.
        public static func stripe(_ bytes: Int) -> Alignment { Alignment(threshold: bytes, boundary: bytes) }
    }

    /// Creates a new file; fails if one exists at `path`. With a communicator of several ranks every
    /// rank calls this with the same path and the file is opened through MPI-IO. `chunks`: the most
    /// chunks one dataset of the file will have, to size the nodes of the chunk index; such a file's
    /// arrays are also placed in the order they are created, small ones included (HDF5 otherwise puts
    /// arrays under 2 KiB in a block it reserved earlier: a small scan's summary image then came
    /// before the frames, and the file could not be hashed front to back as the frames were written).
    public static func create(path: String, communicator: Communicator = .serial, alignment: Alignment? = nil,
                              chunks: Int? = nil) throws(ParallelNexusError) -> HDF5File {
        let fcpl = H5Pcreate(emflow_h5p_file_create())
        defer { H5Pclose(fcpl) }
        if let chunks { H5Pset_istore_k(fcpl, UInt32(chunkIndexK(chunks: chunks))) }
        let fapl = try accessList(path: path, communicator: communicator, alignment: alignment)
        defer { H5Pclose(fapl) }
        if chunks != nil { H5Pset_small_data_block_size(fapl, 0) }
        let id = H5Fcreate(path, emflow_h5f_acc_excl(), fcpl, fapl)
        guard id >= 0 else { throw ParallelNexusError(path: path, message: "cannot create the HDF5 file: \(lastH5Error())") }
        return HDF5File(id: id, path: path, communicator: communicator)
    }

    /// Half the entries of a chunk-index node (HDF5's `istore_k`, default 32) for a dataset of `chunks`
    /// chunks: 16 to 32 leaves (as full as HDF5's splits leave them) whatever the count, between 32
    /// and 2048. With the default, a stack of 8192 chunks has 128 leaves; each node lies between two
    /// runs of chunks in the file, so finding where the chunks went took ~1000 lookups (30 ms)
    /// instead of ~60, and allocating them took longer. A node of 2K entries is ~56 × 2K bytes (one of
    /// 57 KB at K = 512), and a file with a non-default K has a version 1 superblock, which HDF5 1.6
    /// and later read.
    static func chunkIndexK(chunks: Int) -> Int {
        var k = 32
        while k < 2048 && 2 * k * 16 < chunks { k *= 2 }
        return k
    }

    /// Opens an existing file for writing, through MPI-IO when the communicator has MPI (every rank
    /// calls this). Parallel HDF5 cannot write variable-length strings, so a parallel writer creates
    /// the tree serially first and only fills the large arrays here.
    public static func openForWriting(path: String, communicator: Communicator = .serial, alignment: Alignment? = nil) throws(ParallelNexusError) -> HDF5File {
        let fapl = try accessList(path: path, communicator: communicator, alignment: alignment)
        defer { H5Pclose(fapl) }
        let id = H5Fopen(path, emflow_h5f_acc_rdwr(), fapl)
        guard id >= 0 else { throw ParallelNexusError(path: path, message: "cannot open the HDF5 file for writing: \(lastH5Error())") }
        return HDF5File(id: id, path: path, communicator: communicator)
    }

    private init(id: hid_t, path: String, communicator: Communicator) {
        self.id = id; self.path = path
        if communicator.usesMPI {
            let dxpl = H5Pcreate(emflow_h5p_dataset_xfer())
            emflow_h5p_set_dxpl_collective(dxpl)
            transfer = dxpl
            parallel = true
        }
    }

    static func accessList(path: String, communicator: Communicator, alignment: Alignment?) throws(ParallelNexusError) -> hid_t {
        let fapl = H5Pcreate(emflow_h5p_file_access())
        // Readers from HDF5 1.8 on (h5py wheels, viewers) must open the file: no newer format features.
        H5Pset_libver_bounds(fapl, H5F_LIBVER_EARLIEST, H5F_LIBVER_V18)
        if let alignment, alignment.boundary > 1 { H5Pset_alignment(fapl, hsize_t(alignment.threshold), hsize_t(alignment.boundary)) }
        if communicator.usesMPI {
            guard emflow_h5p_set_fapl_mpio_world(fapl) >= 0 else {
                H5Pclose(fapl)
                throw ParallelNexusError(path: path, message: "cannot use the MPI-IO driver: \(lastH5Error())")
            }
            H5Pset_all_coll_metadata_ops(fapl, true)
            H5Pset_coll_metadata_write(fapl, true)
        }
        return fapl
    }

    /// An existing N-D dataset, to be filled by `write(start:count:)`.
    public func openArray(_ datasetPath: String, type: ElementType) throws(ParallelNexusError) -> ArrayDataset {
        // Whole chunks are written once each: no chunk cache, so they go to the file (or the filter)
        // straight from the caller's buffer instead of being copied through the cache first.
        let dapl = H5Pcreate(emflow_h5p_dataset_access())
        defer { H5Pclose(dapl) }
        H5Pset_chunk_cache(dapl, 0, 0, 1.0)
        let d = H5Dopen2(id, datasetPath, dapl)
        guard d >= 0 else { throw fail("no dataset \(datasetPath)") }
        let sp = H5Dget_space(d)
        defer { H5Sclose(sp) }
        let rank = Int(H5Sget_simple_extent_ndims(sp))
        var dims = [hsize_t](repeating: 0, count: max(rank, 1))
        H5Sget_simple_extent_dims(sp, &dims, nil)
        return ArrayDataset(id: d, file: self, name: datasetPath, type: type, shape: dims.map { Int($0) })
    }

    public static func open(path: String) throws(ParallelNexusError) -> HDF5File {
        let id = H5Fopen(path, emflow_h5f_acc_rdonly(), h5Default)
        guard id >= 0 else { throw ParallelNexusError(path: path, message: "cannot open as HDF5: \(lastH5Error())") }
        return HDF5File(id: id, path: path)
    }

    public func close() throws(ParallelNexusError) {
        guard !closed else { return }
        closed = true
        if let t = transfer { H5Pclose(t); transfer = nil }
        guard H5Fclose(id) >= 0 else { throw fail("closing the file failed") }
    }

    deinit { if !closed { if let t = transfer { H5Pclose(t) }; H5Fclose(id) } }

    func fail(_ what: String) -> ParallelNexusError {
        ParallelNexusError(path: path, message: "\(what): \(lastH5Error())")
    }

    public func exists(_ objectPath: String) -> Bool {
        // Check each level: H5Lexists fails on a missing intermediate group.
        var prefix = ""
        for part in objectPath.split(separator: "/") {
            prefix += "/" + part
            if H5Lexists(id, prefix, h5Default) <= 0 { return false }
        }
        return true
    }

    public func createGroup(_ groupPath: String) throws(ParallelNexusError) {
        let g = H5Gcreate2(id, groupPath, h5Default, h5Default, h5Default)
        guard g >= 0 else { throw fail("cannot create group \(groupPath)") }
        H5Gclose(g)
    }

    // MARK: Scalars and small arrays

    public func write(_ datasetPath: String, _ value: H5Value) throws(ParallelNexusError) {
        try withTypeAndSpace(value) { (type, space, buffer) throws(ParallelNexusError) in
            let d = H5Dcreate2(id, datasetPath, type, space, h5Default, h5Default, h5Default)
            guard d >= 0 else { throw fail("cannot create \(datasetPath)") }
            defer { H5Dclose(d) }
            guard H5Dwrite(d, type, h5All, h5All, Self.smallTransfer, buffer) >= 0 else { throw fail("cannot write \(datasetPath)") }
        }
    }

    /// Transfers of fields a few bytes long. With the default list HDF5 sets up 1 MiB for type
    /// conversion and 1 MiB of zeroed background for every write that converts (each string), and
    /// glibc hands those pages back on free: ~1 ms per field, 30 ms for an NXem tree. 64 KiB still
    /// holds thousands of elements of any type a field has.
    static let smallTransfer: hid_t = {
        let dxpl = H5Pcreate(emflow_h5p_dataset_xfer())
        H5Pset_buffer(dxpl, 64 << 10, nil, nil)
        return dxpl
    }()

    public func setAttribute(_ objectPath: String, _ name: String, _ value: H5Value) throws(ParallelNexusError) {
        let o = H5Oopen(id, objectPath, h5Default)
        guard o >= 0 else { throw fail("cannot open \(objectPath) for attribute \(name)") }
        defer { H5Oclose(o) }
        try withTypeAndSpace(value) { (type, space, buffer) throws(ParallelNexusError) in
            let a = H5Acreate2(o, name, type, space, h5Default, h5Default)
            guard a >= 0 else { throw fail("cannot create attribute \(objectPath)@\(name)") }
            defer { H5Aclose(a) }
            guard H5Awrite(a, type, buffer) >= 0 else { throw fail("cannot write attribute \(objectPath)@\(name)") }
        }
    }

    /// A scalar string attribute, or nil when absent or not a string.
    public func stringAttribute(_ objectPath: String, _ name: String) -> String? {
        guard H5Aexists_by_name(id, objectPath, name, h5Default) > 0 else { return nil }
        let a = H5Aopen_by_name(id, objectPath, name, h5Default, h5Default)
        guard a >= 0 else { return nil }
        defer { H5Aclose(a) }
        let ft = H5Aget_type(a)
        defer { H5Tclose(ft) }
        guard H5Tget_class(ft) == H5T_STRING, H5Tis_variable_str(ft) > 0 else { return nil }
        let mt = H5Tcopy(emflow_h5t_c_s1())
        defer { H5Tclose(mt) }
        H5Tset_size(mt, emflow_h5t_variable())
        H5Tset_cset(mt, H5T_CSET_UTF8)
        var p: UnsafeMutablePointer<CChar>? = nil
        guard H5Aread(a, mt, &p) >= 0, let p else { return nil }
        defer { free(p) }
        return String(cString: p)
    }

    func withTypeAndSpace(_ value: H5Value, _ body: (hid_t, hid_t, UnsafeRawPointer) throws(ParallelNexusError) -> Void) throws(ParallelNexusError) {
        do { try withTypeAndSpaceUntyped(value, body) } catch let e as ParallelNexusError { throw e } catch { throw ParallelNexusError(path: path, message: "\(error)") }
    }

    // The standard library's withUnsafeBytes rethrows untyped errors.
    private func withTypeAndSpaceUntyped(_ value: H5Value, _ body: (hid_t, hid_t, UnsafeRawPointer) throws(ParallelNexusError) -> Void) throws {
        func scalarSpace() -> hid_t { H5Screate(H5S_SCALAR) }
        func vectorSpace(_ n: Int) -> hid_t { var d = [hsize_t(n)]; return H5Screate_simple(1, &d, nil) }
        func vlenType() -> hid_t {
            let t = H5Tcopy(emflow_h5t_c_s1()); H5Tset_size(t, emflow_h5t_variable()); H5Tset_cset(t, H5T_CSET_UTF8); return t
        }
        switch value {
        case .string(let s):
            let t = vlenType(), sp = scalarSpace()
            defer { H5Tclose(t); H5Sclose(sp) }
            try s.withCString { (c) in
                var ptr: UnsafePointer<CChar>? = c
                try withUnsafePointer(to: &ptr) { (pp) in try body(t, sp, UnsafeRawPointer(pp)) }
            }
        case .strings(let list):
            let t = vlenType(), sp = vectorSpace(list.count)
            defer { H5Tclose(t); H5Sclose(sp) }
            let cstrings = list.map { strdup($0) }
            defer { cstrings.forEach { free($0) } }
            let ptrs: [UnsafePointer<CChar>?] = cstrings.map { UnsafePointer($0) }
            try ptrs.withUnsafeBytes { (b) in try body(t, sp, b.baseAddress!) }
        case .fixedString(let s):
            var bytes = Array(s.utf8)
            if bytes.isEmpty { bytes = [0] }
            let t = H5Tcopy(emflow_h5t_c_s1()); H5Tset_size(t, bytes.count); H5Tset_cset(t, H5T_CSET_UTF8); H5Tset_strpad(t, H5T_STR_NULLPAD)
            let sp = scalarSpace()
            defer { H5Tclose(t); H5Sclose(sp) }
            try bytes.withUnsafeBytes { (b) in try body(t, sp, b.baseAddress!) }
        case .double(var v):
            let sp = scalarSpace(); defer { H5Sclose(sp) }
            try withUnsafeBytes(of: &v) { (b) in try body(emflow_h5t_native_double(), sp, b.baseAddress!) }
        case .int(var v):
            let sp = scalarSpace(); defer { H5Sclose(sp) }
            try withUnsafeBytes(of: &v) { (b) in try body(emflow_h5t_native_int64(), sp, b.baseAddress!) }
        case .uint32(var v):
            let sp = scalarSpace(); defer { H5Sclose(sp) }
            try withUnsafeBytes(of: &v) { (b) in try body(emflow_h5t_native_uint32(), sp, b.baseAddress!) }
        case .bool(let b):
            let t = H5Tenum_create(emflow_h5t_native_int8())
            var f: Int8 = 0, tr: Int8 = 1
            H5Tenum_insert(t, "FALSE", &f); H5Tenum_insert(t, "TRUE", &tr)
            let sp = scalarSpace()
            defer { H5Tclose(t); H5Sclose(sp) }
            var v: Int8 = b ? 1 : 0
            try withUnsafeBytes(of: &v) { (buf) in try body(t, sp, buf.baseAddress!) }
        case .doubles(let a):
            let sp = vectorSpace(a.count); defer { H5Sclose(sp) }
            try a.withUnsafeBytes { (b) in try body(emflow_h5t_native_double(), sp, b.baseAddress ?? UnsafeRawPointer(bitPattern: 8)!) }
        case .int64s(let a):
            let sp = vectorSpace(a.count); defer { H5Sclose(sp) }
            try a.withUnsafeBytes { (b) in try body(emflow_h5t_native_int64(), sp, b.baseAddress ?? UnsafeRawPointer(bitPattern: 8)!) }
        }
    }

    // MARK: Large arrays

    /// Creates a chunked N-D dataset without writing a fill value, to be filled by `write(slab:)`.
    /// `allocateEarly`: reserve every chunk now (uncompressed data to be filled later by other processes).
    public func createArray(_ datasetPath: String, type: ElementType, shape: [Int], chunks: [Int],
                            compression: Compression, allocateEarly: Bool = false) throws(ParallelNexusError) -> ArrayDataset {
        precondition(shape.count == chunks.count && !shape.isEmpty)
        let dcpl = H5Pcreate(emflow_h5p_dataset_create())
        defer { H5Pclose(dcpl) }
        var c = chunks.map { hsize_t(max(1, $0)) }
        guard H5Pset_chunk(dcpl, Int32(c.count), &c) >= 0 else { throw fail("bad chunk shape \(chunks) for \(datasetPath)") }
        // Without this HDF5 writes the whole fill value before the data (infra/hdf5-mpi.md).
        H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER)
        // Chunks are allocated as written, unless asked for up front (parallel HDF5 chooses its own).
        if allocateEarly && compression == .none { H5Pset_alloc_time(dcpl, H5D_ALLOC_TIME_EARLY) }
        else if !parallel { H5Pset_alloc_time(dcpl, H5D_ALLOC_TIME_INCR) }
        switch compression {
        case .none: break
        case .deflate(let level):
            H5Pset_shuffle(dcpl)
            guard H5Pset_deflate(dcpl, UInt32(max(0, min(9, level)))) >= 0 else { throw fail("deflate is not available") }
        case .bitshuffleLZ4:
            guard H5Zfilter_avail(H5Z_filter_t(Compression.bitshuffleFilterID)) > 0 else {
                throw ParallelNexusError(path: path, message: "the bitshuffle+LZ4 HDF5 filter (id 32008) is not installed; install Debian's 'bitshuffle' package or set HDF5_PLUGIN_PATH, or use compression: deflate")
            }
            _ = BitshuffleLZ4.replacesHDF5Filter
            // The user's cd_values are (block size, compression): 0 = automatic block, 2 = LZ4. The filter
            // puts its version and the element size in front of them itself (stored: 0, 3, elt, 0, 2).
            var cd: [UInt32] = [0, 2]
            guard H5Pset_filter(dcpl, H5Z_filter_t(Compression.bitshuffleFilterID), UInt32(H5Z_FLAG_MANDATORY), cd.count, &cd) >= 0 else {
                throw fail("cannot set the bitshuffle filter")
            }
        }
        var dims = shape.map { hsize_t($0) }
        let space = H5Screate_simple(Int32(dims.count), &dims, nil)
        defer { H5Sclose(space) }
        let d = H5Dcreate2(id, datasetPath, type.fileType, space, h5Default, dcpl, h5Default)
        guard d >= 0 else { throw fail("cannot create \(datasetPath) \(shape) \(type.rawValue)") }
        return ArrayDataset(id: d, file: self, name: datasetPath, type: type, shape: shape)
    }

    /// Reads a whole dataset of `type` (tests and checks).
    public func readArray(_ datasetPath: String, as type: ElementType) throws(ParallelNexusError) -> (shape: [Int], bytes: [UInt8]) {
        let d = H5Dopen2(id, datasetPath, h5Default)
        guard d >= 0 else { throw fail("no dataset \(datasetPath)") }
        defer { H5Dclose(d) }
        let sp = H5Dget_space(d)
        defer { H5Sclose(sp) }
        let rank = Int(H5Sget_simple_extent_ndims(sp))
        var dims = [hsize_t](repeating: 0, count: max(rank, 1))
        H5Sget_simple_extent_dims(sp, &dims, nil)
        let shape = rank == 0 ? [] : dims.map { Int($0) }
        let n = shape.reduce(1, *)
        var bytes = [UInt8](repeating: 0, count: n * type.size)
        let ok = bytes.withUnsafeMutableBytes { H5Dread(d, type.memoryType, h5All, h5All, h5Default, $0.baseAddress) }
        guard ok >= 0 else { throw fail("cannot read \(datasetPath)") }
        return (shape, bytes)
    }
}

/// An open N-D dataset being filled slab by slab. Close it before the file.
public final class ArrayDataset {
    let id: hid_t
    unowned let file: HDF5File
    public let name: String
    public let type: ElementType
    public let shape: [Int]
    var closed = false

    init(id: hid_t, file: HDF5File, name: String, type: ElementType, shape: [Int]) {
        self.id = id; self.file = file; self.name = name; self.type = type; self.shape = shape
    }

    /// Writes a hyperslab (`start`, `count` per dimension) from native-order elements of `type`.
    public func write(start: [Int], count: [Int], _ data: UnsafeRawBufferPointer) throws(ParallelNexusError) {
        precondition(start.count == shape.count && count.count == shape.count)
        precondition(data.count >= count.reduce(1, *) * type.size)
        let fs = H5Dget_space(id)
        defer { H5Sclose(fs) }
        var st = start.map { hsize_t($0) }, ct = count.map { hsize_t($0) }
        guard H5Sselect_hyperslab(fs, H5S_SELECT_SET, &st, nil, &ct, nil) >= 0 else { throw file.fail("bad selection in \(name)") }
        let ms = H5Screate_simple(Int32(ct.count), &ct, nil)
        defer { H5Sclose(ms) }
        guard H5Dwrite(id, type.memoryType, ms, fs, file.transfer ?? h5Default, data.baseAddress) >= 0 else { throw file.fail("cannot write \(name)") }
    }

    /// A rank's part of a collective write when it has nothing to write: it selects none and still
    /// joins (every rank of a parallel file must make the same write calls).
    public func writeNothing() throws(ParallelNexusError) {
        let fs = H5Dget_space(id)
        defer { H5Sclose(fs) }
        H5Sselect_none(fs)
        var one: [hsize_t] = [1]
        let ms = H5Screate_simple(1, &one, nil)
        defer { H5Sclose(ms) }
        H5Sselect_none(ms)
        var dummy: UInt64 = 0
        guard H5Dwrite(id, type.memoryType, ms, fs, file.transfer ?? h5Default, &dummy) >= 0 else { throw file.fail("cannot join the collective write of \(name)") }
    }

    /// Writes one whole chunk as stored bytes, bypassing HDF5's selection and type machinery (only
    /// for datasets without filters; `data` is exactly one chunk of native-order elements).
    public func writeChunk(at offset: [Int], _ data: UnsafeRawBufferPointer) throws(ParallelNexusError) {
        var off = offset.map { hsize_t($0) }
        guard H5Dwrite_chunk(id, h5Default, 0, &off, data.count, data.baseAddress) >= 0 else {
            throw file.fail("cannot write chunk \(offset) of \(name)")
        }
    }

    /// Where each chunk of an unfiltered dataset lies in the file (byte offset, stored size), in
    /// row-major order of the chunk grid for a dataset chunked as `chunks`, once its chunks are all
    /// reserved (early allocation); nil when HDF5 cannot say (before 1.10.5) or a chunk is missing.
    /// HDF5 reserves the chunks in that order at the end of the file, so their offsets increase: a run
    /// whose two ends lie exactly (n-1) chunks apart is contiguous, and only the ends of the runs are
    /// looked up (each lookup searches the chunk index, ~30 µs; a whole stack has thousands of chunks).
    public func reservedChunkLocations(chunks: [Int]) -> [(offset: Int, size: Int)]? {
        precondition(chunks.count == shape.count)
        let grid = zip(shape, chunks).map { ($0 + $1 - 1) / $1 }
        let total = grid.reduce(1, *)
        let bytes = chunks.reduce(type.size, *)
        var offsets = [Int](repeating: -1, count: total)
        var coord = [hsize_t](repeating: 0, count: shape.count)
        func locate(_ linear: Int) -> Int? {
            if offsets[linear] >= 0 { return offsets[linear] }
            var rest = linear
            for d in stride(from: shape.count - 1, through: 0, by: -1) {
                coord[d] = hsize_t((rest % grid[d]) * chunks[d]); rest /= grid[d]
            }
            var address: haddr_t = 0, size: hsize_t = 0
            guard emflow_chunk_location(id, &coord, &address, &size) == 0, Int(size) == bytes else { return nil }
            offsets[linear] = Int(address)
            return Int(address)
        }
        func fill(_ lo: Int, _ hi: Int) -> Bool {
            guard let a = locate(lo), let b = locate(hi) else { return false }
            guard hi > lo else { return true }
            guard b - a >= (hi - lo) * bytes else { return false }  // not in order: do not guess
            if b - a == (hi - lo) * bytes {
                for i in lo...hi { offsets[i] = a + (i - lo) * bytes }
                return true
            }
            if hi - lo == 1 { return true }
            let mid = (lo + hi) / 2
            return fill(lo, mid) && fill(mid, hi)
        }
        guard total > 0, fill(0, total - 1) else { return nil }
        return offsets.map { ($0, bytes) }
    }

    public func setAttribute(_ name: String, _ value: H5Value) throws(ParallelNexusError) {
        try file.setAttribute(self.name, name, value)
    }

    public func close() throws(ParallelNexusError) {
        guard !closed else { return }
        closed = true
        guard H5Dclose(id) >= 0 else { throw file.fail("closing \(name) failed") }
    }

    deinit { if !closed { H5Dclose(id) } }
}

#if canImport(Glibc)
import Glibc
#endif
