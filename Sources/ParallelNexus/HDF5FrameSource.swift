internal import CHDF5
import EMFormats

/// Frames from a detector's HDF5 file: a named dataset of shape (scan_y, scan_x, h, w), or
/// (frames, h, w) with a declared scan shape. Read by hyperslab, any chunking or filter HDF5 can
/// decode; re-chunked and compressed by the writer on the way.
public final class HDF5FrameSource: FrameSource {
    public let path: String
    public var format: String { "hdf5" }
    public var mediaType: String { "application/x-hdf5" }
    public let geometry: ScanGeometry
    public let metadata: [(String, String)]
    let file: HDF5File
    let dataset: hid_t
    let fourD: Bool

    public init(path: String, dataset name: String, scan: (Int, Int)?) throws(EMFormatsError) {
        self.path = path
        let opened: (HDF5File, hid_t, [Int], PixelType) = try HDF5Library.serialized { () throws(EMFormatsError) in
            let f: HDF5File
            do throws(ParallelNexusError) { f = try HDF5File.open(path: path) } catch { throw EMFormatsError(path: path, message: error.message) }
            guard f.exists(name) else { throw EMFormatsError(path: path, message: "no dataset '\(name)' in the file; set dataset: to the detector data's path (h5ls -r \(path) lists them)") }
            let d = H5Dopen2(f.id, name, h5Default)
            guard d >= 0 else { throw EMFormatsError(path: path, message: "'\(name)' is not a dataset: \(lastH5Error())") }
            let sp = H5Dget_space(d)
            defer { H5Sclose(sp) }
            let rank = Int(H5Sget_simple_extent_ndims(sp))
            var dims = [hsize_t](repeating: 0, count: max(rank, 1))
            H5Sget_simple_extent_dims(sp, &dims, nil)
            let t = H5Dget_type(d)
            defer { H5Tclose(t) }
            let size = H5Tget_size(t), cls = H5Tget_class(t)
            var type: PixelType?
            if cls == H5T_INTEGER {
                let signed = H5Tget_sign(t) == H5T_SGN_2
                type = [1: signed ? .int8 : .uint8, 2: signed ? .int16 : .uint16, 4: signed ? .int32 : .uint32, 8: signed ? .int64 : .uint64][size]
            } else if cls == H5T_FLOAT {
                type = [4: .float32, 8: .float64][size]
            }
            guard let type, rank == 3 || rank == 4 else {
                H5Dclose(d)
                throw EMFormatsError(path: path, message: "'\(name)' must be a 3-D (frames, h, w) or 4-D (scan_y, scan_x, h, w) array of integers or floats; it is \(rank)-D")
            }
            return (f, d, dims.map { Int($0) }, type)
        }
        file = opened.0; dataset = opened.1
        let dims = opened.2
        fourD = dims.count == 4
        let (y, x): (Int, Int)
        if fourD {
            if let s = scan, s != (dims[0], dims[1]) {
                throw EMFormatsError(path: path, message: "the declared scan shape \(s.0)×\(s.1) differs from the dataset's \(dims[0])×\(dims[1])")
            }
            (y, x) = (dims[0], dims[1])
        } else {
            (y, x) = try ScanShapeHint.resolve(declared: scan, fallback: nil, frames: dims[0], path: path)
        }
        geometry = ScanGeometry(scanY: y, scanX: x, frameHeight: dims[dims.count - 2], frameWidth: dims[dims.count - 1], pixelType: opened.3)
        metadata = [("dataset", name), ("dataset_shape", dims.map(String.init).joined(separator: "×"))]
    }

    deinit { HDF5Library.serialized { H5Dclose(dataset); try? file.close() } }

    public func readFrames(_ first: Int, count: Int, into out: UnsafeMutableRawBufferPointer) throws(EMFormatsError) {
        let g = geometry
        try HDF5Library.serialized { () throws(EMFormatsError) in
            // One hyperslab per run of frames within a scan row (a 4-D selection must be a box).
            var f = first, done = 0
            while done < count {
                let n = fourD ? min(count - done, g.scanX - f % g.scanX) : count - done
                let fs = H5Dget_space(dataset)
                defer { H5Sclose(fs) }
                var start: [hsize_t] = fourD ? [hsize_t(f / g.scanX), hsize_t(f % g.scanX), 0, 0] : [hsize_t(f), 0, 0]
                var cnt: [hsize_t] = fourD ? [1, hsize_t(n), hsize_t(g.frameHeight), hsize_t(g.frameWidth)] : [hsize_t(n), hsize_t(g.frameHeight), hsize_t(g.frameWidth)]
                H5Sselect_hyperslab(fs, H5S_SELECT_SET, &start, nil, &cnt, nil)
                let ms = H5Screate_simple(Int32(cnt.count), &cnt, nil)
                defer { H5Sclose(ms) }
                guard H5Dread(dataset, g.pixelType.memoryType, ms, fs, h5Default, out.baseAddress! + done * g.frameBytes) >= 0 else {
                    throw EMFormatsError(path: path, message: "cannot read frames \(f)..<\(f + n): \(lastH5Error())")
                }
                f += n; done += n
            }
        }
    }
}
