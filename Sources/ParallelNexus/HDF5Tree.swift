import Foundation
internal import CHDF5
import Checksums

/// Every group, dataset and attribute of an HDF5 file as text, keyed by path (`/entry1/sample/name`,
/// `/entry1/sample@NX_class`, `/@file_time`): what `emflow diff` compares. Small values are written
/// out (strings, numbers, enumerations such as NeXus booleans, arrays of up to `inlineLimit`
/// elements); larger arrays by type, shape and the SHA-256 of their values, read a slab at a time so
/// memory stays bounded whatever the stack's size.
public struct HDF5Tree: Sendable, Equatable {
    public enum Kind: String, Sendable, Codable { case group, dataset, attribute }
    public struct Entry: Sendable, Equatable, Codable {
        public var kind: Kind
        public var value: String
    }
    public var entries: [String: Entry]

    public static let inlineLimit = 64
    static let slabBytes = 64 << 20

    public static func read(path: String) throws(ParallelNexusError) -> HDF5Tree {
        try HDF5Library.serialized { () throws(ParallelNexusError) -> HDF5Tree in
            let file = try HDF5File.open(path: path)
            defer { try? file.close() }
            var entries: [String: Entry] = [:]
            try walk(file, "/", into: &entries)
            return HDF5Tree(entries: entries)
        }
    }

    /// Names handed back by the C listing functions.
    final class Names { var list: [String] = [] }
    static let collect: emflow_name_cb = { name, ctx in
        guard let name, let ctx else { return -1 }
        Unmanaged<Names>.fromOpaque(ctx).takeUnretainedValue().list.append(String(cString: name))
        return 0
    }

    static func walk(_ file: HDF5File, _ path: String, into entries: inout [String: Entry]) throws(ParallelNexusError) {
        let o = H5Oopen(file.id, path, h5Default)
        guard o >= 0 else { throw file.fail("cannot open \(path)") }
        defer { H5Oclose(o) }
        let isGroup = H5Iget_type(o) == H5I_GROUP
        if path != "/" {
            entries[path] = isGroup ? Entry(kind: .group, value: "group") : try dataset(file, o, path)
        }
        let attrs = Names()
        guard emflow_list_attributes(o, collect, Unmanaged.passUnretained(attrs).toOpaque()) >= 0 else { throw file.fail("cannot list the attributes of \(path)") }
        for name in attrs.list {
            let a = H5Aopen(o, name, h5Default)
            guard a >= 0 else { throw file.fail("cannot open attribute \(path)@\(name)") }
            defer { H5Aclose(a) }
            let t = H5Aget_type(a), sp = H5Aget_space(a)
            defer { H5Tclose(t); H5Sclose(sp) }
            let key = (path == "/" ? "/" : path) + "@" + name
            entries[key] = Entry(kind: .attribute, value: try value(file, type: t, space: sp, what: key) { mt, buf in H5Aread(a, mt, buf) })
        }
        guard isGroup else { return }
        let children = Names()
        guard emflow_list_links(file.id, path, collect, Unmanaged.passUnretained(children).toOpaque()) >= 0 else { throw file.fail("cannot list \(path)") }
        for c in children.list { try walk(file, (path == "/" ? "" : path) + "/" + c, into: &entries) }
    }

    static func dataset(_ file: HDF5File, _ d: hid_t, _ path: String) throws(ParallelNexusError) -> Entry {
        let t = H5Dget_type(d), sp = H5Dget_space(d)
        defer { H5Tclose(t); H5Sclose(sp) }
        let v = try value(file, type: t, space: sp, what: path, slabs: d) { mt, buf in H5Dread(d, mt, h5All, h5All, h5Default, buf) }
        return Entry(kind: .dataset, value: v)
    }

    /// The text of a value of `type` and `space`; `read(memoryType, buffer)` reads it whole. Large
    /// datasets (`slabs`) are hashed a slab of the first dimension at a time instead.
    static func value(_ file: HDF5File, type t: hid_t, space sp: hid_t, what: String, slabs: hid_t? = nil,
                      read: (hid_t, UnsafeMutableRawPointer) -> herr_t) throws(ParallelNexusError) -> String {
        let rank = Int(H5Sget_simple_extent_ndims(sp))
        var dims = [hsize_t](repeating: 0, count: max(rank, 1))
        H5Sget_simple_extent_dims(sp, &dims, nil)
        let shape = rank == 0 ? [] : dims.prefix(rank).map { Int($0) }
        let n = shape.reduce(1, *)
        let shapeText = shape.isEmpty ? "" : "[" + shape.map(String.init).joined(separator: "×") + "]"
        let cls = H5Tget_class(t)
        let size = H5Tget_size(t)

        if cls == H5T_STRING {
            var strings: [String] = []
            if H5Tis_variable_str(t) > 0 {
                let mt = H5Tcopy(emflow_h5t_c_s1()); H5Tset_size(mt, emflow_h5t_variable()); H5Tset_cset(mt, H5Tget_cset(t))
                defer { H5Tclose(mt) }
                var ptrs = [UnsafeMutablePointer<CChar>?](repeating: nil, count: n)
                guard ptrs.withUnsafeMutableBytes({ read(mt, $0.baseAddress!) }) >= 0 else { throw file.fail("cannot read \(what)") }
                strings = ptrs.map { $0.map { String(cString: $0) } ?? "" }
                for p in ptrs where p != nil { H5free_memory(p) }
            } else {
                let mt = H5Tcopy(t)
                defer { H5Tclose(mt) }
                var bytes = [UInt8](repeating: 0, count: max(n * size, 1))
                guard bytes.withUnsafeMutableBytes({ read(mt, $0.baseAddress!) }) >= 0 else { throw file.fail("cannot read \(what)") }
                strings = (0..<n).map { i in
                    let s = bytes[(i * size)..<((i + 1) * size)]
                    return String(decoding: s.prefix { $0 != 0 }, as: UTF8.self).trimmingCharacters(in: CharacterSet(charactersIn: " "))
                }
            }
            let quoted = strings.map { "\"" + $0.replacingOccurrences(of: "\n", with: "\\n") + "\"" }
            if shape.isEmpty { return "string " + (quoted.first ?? "\"\"") }
            if n <= inlineLimit { return "string\(shapeText) [" + quoted.joined(separator: ", ") + "]" }
            return "string\(shapeText) sha256:" + SHA256Hasher.hash(strings.joined(separator: "\u{0}"))
        }

        if cls == H5T_ENUM {
            let nt = H5Tget_native_type(t, H5T_DIR_ASCEND)
            defer { H5Tclose(nt) }
            let es = H5Tget_size(nt)
            var bytes = [UInt8](repeating: 0, count: max(n * es, 1))
            guard bytes.withUnsafeMutableBytes({ read(nt, $0.baseAddress!) }) >= 0 else { throw file.fail("cannot read \(what)") }
            var names: [String] = []
            for i in 0..<n {
                var buf = [CChar](repeating: 0, count: 256)
                let ok = bytes.withUnsafeBytes { H5Tenum_nameof(nt, $0.baseAddress! + i * es, &buf, 256) }
                names.append(ok >= 0 ? String(cString: buf) : "?")
            }
            let text = names.count == 1 && shape.isEmpty ? names[0] : "[" + names.prefix(inlineLimit).joined(separator: ", ") + (n > inlineLimit ? ", …" : "") + "]"
            return "enum\(shapeText) \(text)"
        }

        guard cls == H5T_INTEGER || cls == H5T_FLOAT else {
            return "type class \(cls.rawValue), \(size) bytes\(shapeText)"
        }
        let signed = cls == H5T_INTEGER && H5Tget_sign(t) == H5T_SGN_2
        let typeName = cls == H5T_FLOAT ? "float\(size * 8)" : (signed ? "int\(size * 8)" : "uint\(size * 8)")
        let mt = cls == H5T_FLOAT ? emflow_h5t_native_double() : (signed ? emflow_h5t_native_int64() : emflow_h5t_native_uint64())
        func render(_ bytes: UnsafeRawBufferPointer, _ i: Int) -> String {
            if cls == H5T_FLOAT { return "\(bytes.load(fromByteOffset: i * 8, as: Double.self))" }
            return signed ? "\(bytes.load(fromByteOffset: i * 8, as: Int64.self))" : "\(bytes.load(fromByteOffset: i * 8, as: UInt64.self))"
        }
        if n <= inlineLimit {
            var bytes = [UInt8](repeating: 0, count: max(n * 8, 8))
            guard bytes.withUnsafeMutableBytes({ read(mt, $0.baseAddress!) }) >= 0 else { throw file.fail("cannot read \(what)") }
            let values = bytes.withUnsafeBytes { b in (0..<n).map { render(b, $0) } }
            return shape.isEmpty ? "\(typeName) \(values.first ?? "")" : "\(typeName)\(shapeText) [" + values.joined(separator: ", ") + "]"
        }
        // Large: the values' SHA-256 in the file's own element size (read as stored, little-endian).
        var hasher = SHA256Hasher()
        let ft = H5Tcopy(t)
        H5Tset_order(ft, H5T_ORDER_LE)
        defer { H5Tclose(ft) }
        if let d = slabs, shape.count >= 1 {
            let rowElements = shape.dropFirst().reduce(1, *)
            let rows = max(1, slabBytes / max(1, rowElements * size))
            var buffer = [UInt8](repeating: 0, count: min(shape[0], rows) * rowElements * size)
            var start = 0
            while start < shape[0] {
                let count = min(rows, shape[0] - start)
                var off = [hsize_t](repeating: 0, count: rank), cnt = dims.prefix(rank).map { $0 }
                off[0] = hsize_t(start); cnt[0] = hsize_t(count)
                let fs = H5Scopy(sp), ms = H5Screate_simple(Int32(rank), cnt, nil)
                defer { H5Sclose(fs); H5Sclose(ms) }
                H5Sselect_hyperslab(fs, H5S_SELECT_SET, off, nil, cnt, nil)
                let bytes = count * rowElements * size
                guard buffer.withUnsafeMutableBytes({ H5Dread(d, ft, ms, fs, h5Default, $0.baseAddress) }) >= 0 else { throw file.fail("cannot read \(what)") }
                buffer.withUnsafeBytes { hasher.update(UnsafeRawBufferPointer(rebasing: $0[0..<bytes])) }
                start += count
            }
        } else {
            var bytes = [UInt8](repeating: 0, count: n * size)
            guard bytes.withUnsafeMutableBytes({ read(ft, $0.baseAddress!) }) >= 0 else { throw file.fail("cannot read \(what)") }
            hasher.update(bytes)
        }
        return "\(typeName)\(shapeText) sha256:" + hasher.finalize()
    }
}

/// What differs between two HDF5 trees.
public struct HDF5TreeDiff: Sendable, Codable, Equatable {
    public struct Change: Sendable, Codable, Equatable {
        public var path: String
        public var kind: HDF5Tree.Kind
        /// nil: only in the other file.
        public var a: String?
        public var b: String?
    }
    public var changes: [Change]

    public init(_ a: HDF5Tree, _ b: HDF5Tree) {
        var out: [Change] = []
        for path in Set(a.entries.keys).union(b.entries.keys).sorted() {
            let x = a.entries[path], y = b.entries[path]
            if x != y { out.append(Change(path: path, kind: (x ?? y)!.kind, a: x?.value, b: y?.value)) }
        }
        changes = out
    }
}
