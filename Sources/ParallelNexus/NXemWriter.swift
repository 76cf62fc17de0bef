import POSIXFiles
import Foundation
import Synchronization

/// Writes an `NXemDocument` as one HDF5 file: to a temporary name in the target directory, synced,
/// then renamed, so a reader never sees a partial file and a killed writer leaves only a temporary
/// that the next run removes.
public enum NXemWriter {
    /// The HDF5 attribute on the file root that names the task which wrote it (for resuming).
    public static let taskKeyAttribute = "emflow_task_key"

    /// `fill(i, dataset)` writes the pixels of `document.images[i]`; it runs with the HDF5 lock held.
    /// `whileSyncing(tmp)` runs on this thread while another thread fsyncs the finished temporary
    /// (e.g. to checksum it from the page cache); the file is renamed once both are done.
    public static func write(_ document: NXemDocument, to path: String, compression: Compression,
                             fill: (Int, ArrayDataset) throws -> Void,
                             whileSyncing: (String) throws -> Void = { _ in }) throws {
        let tmp = AtomicFile.temporaryPath(for: path)
        do {
            try HDF5Library.serialized { () throws in
                let file = try HDF5File.create(path: tmp)
                do {
                    try build(document, in: file, compression: compression, fill: fill)
                    try file.close()
                } catch {
                    try? file.close()
                    throw error
                }
            }
            try syncAndPublish(tmp, as: path, whileSyncing: whileSyncing)
        } catch {
            _ = unlinkIgnoringErrors(tmp)
            throw error
        }
    }

    /// fsyncs a finished temporary on another thread while `whileSyncing(tmp)` runs on this one (e.g.
    /// to checksum it from the page cache), then renames it to `path` and syncs the directory.
    public static func syncAndPublish(_ tmp: String, as path: String, whileSyncing: (String) throws -> Void) throws {
        let syncError = Mutex<POSIXFileError?>(nil)
        let done = DispatchSemaphore(value: 0)
        let target = tmp
        Thread.detachNewThread {
            do {
                let fd = try FileDescriptor(path: target, mode: .writeExisting)
                try fd.sync()
            } catch {
                syncError.withLock { $0 = error as? POSIXFileError ?? POSIXFileError("fsync", path: target, errno: EIO) }
            }
            done.signal()
        }
        var hookError: Error?
        do { try whileSyncing(tmp) } catch { hookError = error }
        done.wait()
        if let e = syncError.withLock({ $0 }) { throw e }
        if let hookError { throw hookError }
        try AtomicFile.publish(temporary: tmp, as: path)
    }

    /// `allocateEarly`: the images' chunks are reserved at creation (another pass fills them).
    public static func build(_ doc: NXemDocument, in file: HDF5File, compression: Compression, allocateEarly: Bool = false,
                             fill: (Int, ArrayDataset) throws -> Void) throws {
        let e = "/" + doc.entry
        for (name, value) in doc.rootAttributes.sorted(by: { $0.key < $1.key }) { try file.setAttribute("/", name, value) }

        // Every group any field or image lives in, parents first.
        var groups = Set<String>([""])
        func addParents(_ rel: String) {
            var parts = rel.split(separator: "/").map(String.init)
            parts.removeLast()
            var p = ""
            for c in parts { p = p.isEmpty ? c : p + "/" + c; groups.insert(p) }
        }
        for path in doc.fields.keys { addParents(path) }
        for g in doc.groupClasses.keys { groups.insert(g); addParents(g) }
        for img in doc.images {
            addParents(img.dataGroup + "/real")
            for p in img.process.keys { addParents(img.group + "/process/" + p) }
        }
        let ordered = groups.sorted { a, b in
            let da = a.isEmpty ? 0 : a.split(separator: "/").count, db = b.isEmpty ? 0 : b.split(separator: "/").count
            return da != db ? da < db : a < b
        }
        for g in ordered {
            let components = [doc.entry] + (g.isEmpty ? [] : g.split(separator: "/").map(String.init))
            guard let cls = doc.groupClasses[g] ?? NXemLayout.nxClass(of: components) else {
                throw ParallelNexusError(path: file.path, message: "no NeXus class known for group \(g); name it in groupClasses")
            }
            let full = g.isEmpty ? e : e + "/" + g
            try file.createGroup(full)
            try file.setAttribute(full, "NX_class", .string(cls))
            for (k, v) in (doc.groupAttributes[g] ?? [:]).sorted(by: { $0.key < $1.key }) { try file.setAttribute(full, k, v) }
        }
        for (rel, field) in doc.fields.sorted(by: { $0.key < $1.key }) {
            try writeField(field, at: e + "/" + rel, in: file)
        }
        for (index, img) in doc.images.enumerated() {
            let dg = e + "/" + img.dataGroup
            let rank = img.shape.count
            precondition(img.axes.count == rank)
            try file.setAttribute(dg, "signal", .string("real"))
            try file.setAttribute(dg, "axes", .strings(img.axes.map(\.name)))
            for (d, axis) in img.axes.enumerated() {
                try file.setAttribute(dg, "\(axis.name)_indices", .uint32(UInt32(d)))
                try file.write(dg + "/" + axis.name, .doubles(axis.values))
                try file.setAttribute(dg + "/" + axis.name, "long_name", .string(axis.longName))
                if let u = axis.units { try file.setAttribute(dg + "/" + axis.name, "units", .string(u)) }
            }
            let ds = try file.createArray(dg + "/real", type: img.type, shape: img.shape, chunks: img.chunks, compression: compression,
                                          allocateEarly: allocateEarly)
            do {
                try ds.setAttribute("long_name", .string(img.signalLongName))
                try fill(index, ds)
                try ds.close()
            } catch {
                try? ds.close()
                throw error
            }
            for (rel, field) in img.process.sorted(by: { $0.key < $1.key }) {
                try writeField(field, at: e + "/" + img.group + "/process/" + rel, in: file)
            }
        }
    }

    public static func writeField(_ field: NXemDocument.Field, at path: String, in file: HDF5File) throws(ParallelNexusError) {
        try file.write(path, field.value)
        if let u = field.units { try file.setAttribute(path, "units", .string(u)) }
        for (k, v) in field.attributes.sorted(by: { $0.key < $1.key }) { try file.setAttribute(path, k, v) }
    }

    /// The task key recorded in an existing file, or nil if it is not an emflow file or unreadable.
    public static func taskKey(ofFileAt path: String) -> String? {
        HDF5Library.serialized {
            guard let f = try? HDF5File.open(path: path) else { return nil }
            defer { try? f.close() }
            return f.stringAttribute("/", taskKeyAttribute)
        }
    }
}
