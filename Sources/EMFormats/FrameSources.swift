import Foundation
import POSIXFiles

/// The shape of a 4D-STEM scan: one detector frame (`frameHeight` × `frameWidth` pixels of
/// `pixelType`) per probe position of a `scanY` × `scanX` raster, frames in row-major scan order.
public struct ScanGeometry: Sendable, Equatable, Codable {
    public var scanY: Int
    public var scanX: Int
    public var frameHeight: Int
    public var frameWidth: Int
    public var pixelType: PixelType
    public init(scanY: Int, scanX: Int, frameHeight: Int, frameWidth: Int, pixelType: PixelType) {
        self.scanY = scanY; self.scanX = scanX; self.frameHeight = frameHeight; self.frameWidth = frameWidth; self.pixelType = pixelType
    }
    public var frames: Int { scanY * scanX }
    public var frameBytes: Int { frameHeight * frameWidth * pixelType.size }
    public var totalBytes: Int64 { Int64(frames) * Int64(frameBytes) }
    public var shape: [Int] { [scanY, scanX, frameHeight, frameWidth] }
}

/// A "Y×X" (or "YxX", "Y,X") pair as specs write scan and frame shapes.
public enum ShapeText {
    public static func parse(_ s: String) -> (Int, Int)? {
        let parts = s.split(whereSeparator: { "x×X, ".contains($0) }).compactMap { Int($0) }
        guard parts.count == 2, parts[0] > 0, parts[1] > 0 else { return nil }
        return (parts[0], parts[1])
    }
}

/// A detector file read frame by frame: the whole scan is never in memory.
public protocol FrameSource: AnyObject {
    var path: String { get }
    /// `mib`, `raw`, `tiff-stack`, `hdf5`.
    var format: String { get }
    /// A MIME-like type for provenance (`application/x-merlin-mib`, ...).
    var mediaType: String { get }
    var geometry: ScanGeometry { get }
    /// Header facts verbatim (first frame header, sidecar), for an NXcollection.
    var metadata: [(String, String)] { get }
    /// Frames `first ..< first+count` (scan order) as native-endian pixels into `out`
    /// (`count * geometry.frameBytes` bytes).
    func readFrames(_ first: Int, count: Int, into out: UnsafeMutableRawBufferPointer) throws(EMFormatsError)
}

/// How to find a declared scan shape when the file does not say it.
public enum ScanShapeHint {
    /// The declared shape when given; else `fallback` (from a sidecar or the name); else a square
    /// scan when the frame count is a perfect square. Errors say what to declare.
    public static func resolve(declared: (Int, Int)?, fallback: (Int, Int)?, frames: Int, path: String) throws(EMFormatsError) -> (Int, Int) {
        if let d = declared {
            guard d.0 * d.1 == frames else {
                throw EMFormatsError(path: path, message: "the declared scan shape \(d.0)×\(d.1) needs \(d.0 * d.1) frames, but the file holds \(frames); fix scan_shape in the spec")
            }
            return d
        }
        if let f = fallback, f.0 * f.1 == frames { return f }
        let r = Int(Double(frames).squareRoot().rounded())
        if r * r == frames { return (r, r) }
        throw EMFormatsError(path: path, message: "\(frames) frames and no scan shape: declare scan_shape: \"Y×X\" in the spec's with:")
    }
}

func swapBytes(_ p: UnsafeMutableRawPointer, count: Int, size: Int) {
    switch size {
    case 2: let q = p.assumingMemoryBound(to: UInt16.self); for i in 0..<count { q[i] = q[i].byteSwapped }
    case 4: let q = p.assumingMemoryBound(to: UInt32.self); for i in 0..<count { q[i] = q[i].byteSwapped }
    case 8: let q = p.assumingMemoryBound(to: UInt64.self); for i in 0..<count { q[i] = q[i].byteSwapped }
    default: break
    }
}

/// Frames stored as fixed-size records: `fileHeader` bytes, then per frame `frameHeader` bytes,
/// the pixels, `frameFooter` bytes. Shared by the raw and MIB readers.
class RecordFile {
    let path: String
    let fd: Int32
    let fileSize: Int64
    let fileHeader: Int
    let frameHeader: Int
    let pixelBytes: Int
    let frameFooter: Int
    var record: Int { frameHeader + pixelBytes + frameFooter }

    init(path: String, fileHeader: Int, frameHeader: Int, pixelBytes: Int, frameFooter: Int) throws(EMFormatsError) {
        self.path = path; self.fileHeader = fileHeader; self.frameHeader = frameHeader; self.pixelBytes = pixelBytes; self.frameFooter = frameFooter
        fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw EMFormatsError(path: path, message: "cannot open: \(String(cString: strerror(errno)))") }
        var st = stat()
        fstat(fd, &st)
        fileSize = Int64(st.st_size)
    }
    deinit { close(fd) }

    /// Whole records in the file; a short last record is an error naming its size.
    func recordCount() throws(EMFormatsError) -> Int {
        let body = fileSize - Int64(fileHeader)
        guard body >= 0 else { throw EMFormatsError(path: path, message: "the file (\(fileSize) bytes) is shorter than its \(fileHeader)-byte header") }
        let rem = body % Int64(record)
        if rem != 0 {
            throw EMFormatsError(path: path, message: "truncated or mis-declared: \(body / Int64(record)) whole frame(s) of \(record) bytes and \(rem) bytes more (the last frame is short, or the declared frame shape, dtype or header size is wrong)")
        }
        return Int(body / Int64(record))
    }

    /// Reads records `first..<first+count` whole into `scratch`.
    func readRecords(_ first: Int, count: Int, into scratch: UnsafeMutableRawBufferPointer) throws(EMFormatsError) {
        let offset = Int64(fileHeader) + Int64(first) * Int64(record)
        do { try FileDescriptor.readFull(fd, path: path, into: UnsafeMutableRawBufferPointer(rebasing: scratch[0..<(count * record)]), at: offset) }
        catch { throw EMFormatsError(path: path, message: error.description) }
    }
}

/// Raw binary frames with a declared layout (EMPAD: 128×130 float32, the last 2 rows metadata).
public final class RawFrameSource: FrameSource {
    public struct Layout: Sendable, Equatable {
        public var pixelType: PixelType
        public var bigEndian = false
        public var frameHeight: Int
        public var frameWidth: Int
        public var fileHeader = 0
        public var frameHeader = 0
        public var frameFooter = 0
        public init(pixelType: PixelType, frameHeight: Int, frameWidth: Int) {
            self.pixelType = pixelType; self.frameHeight = frameHeight; self.frameWidth = frameWidth
        }
        /// EMPAD: 128 × 128 float32 little-endian pixels followed by 2 rows (1024 bytes) of metadata.
        public static var empad: Layout { var l = Layout(pixelType: .float32, frameHeight: 128, frameWidth: 128); l.frameFooter = 2 * 128 * 4; return l }
    }

    public let path: String
    public let format: String
    public var mediaType: String { "application/octet-stream" }
    public let geometry: ScanGeometry
    public let metadata: [(String, String)]
    let layout: Layout
    let file: RecordFile

    /// `scan`: declared (Y, X); else from an EMPAD-style name (`…_x256_y128…`) or a square count.
    public init(path: String, layout: Layout, scan: (Int, Int)?, format: String = "raw") throws(EMFormatsError) {
        self.path = path; self.layout = layout; self.format = format
        file = try RecordFile(path: path, fileHeader: layout.fileHeader, frameHeader: layout.frameHeader,
                              pixelBytes: layout.frameHeight * layout.frameWidth * layout.pixelType.size, frameFooter: layout.frameFooter)
        let frames = try file.recordCount()
        guard frames > 0 else { throw EMFormatsError(path: path, message: "no frames (the file is \(file.fileSize) bytes)") }
        let (y, x) = try ScanShapeHint.resolve(declared: scan, fallback: Self.scanFromName(path), frames: frames, path: path)
        geometry = ScanGeometry(scanY: y, scanX: x, frameHeight: layout.frameHeight, frameWidth: layout.frameWidth, pixelType: layout.pixelType)
        metadata = [("layout", "\(layout.frameHeight)×\(layout.frameWidth) \(layout.pixelType.rawValue) \(layout.bigEndian ? "big" : "little")-endian, file header \(layout.fileHeader) B, frame header \(layout.frameHeader) B, frame footer \(layout.frameFooter) B")]
    }

    /// EMPAD names its files `scan_x256_y256.raw`.
    static func scanFromName(_ path: String) -> (Int, Int)? {
        let name = (path as NSString).lastPathComponent
        guard let rx = name.range(of: #"_x(\d+)_y(\d+)"#, options: .regularExpression) else { return nil }
        let nums = name[rx].split(whereSeparator: { !$0.isNumber }).compactMap { Int($0) }
        return nums.count == 2 ? (nums[1], nums[0]) : nil
    }

    public func readFrames(_ first: Int, count: Int, into out: UnsafeMutableRawBufferPointer) throws(EMFormatsError) {
        let fb = geometry.frameBytes
        precondition(out.count >= count * fb && first + count <= geometry.frames)
        if layout.frameHeader == 0 && layout.frameFooter == 0 {
            try file.readRecords(first, count: count, into: out)
        } else {
            let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: count * file.record, alignment: 64)
            defer { scratch.deallocate() }
            try file.readRecords(first, count: count, into: scratch)
            for k in 0..<count {
                (out.baseAddress! + k * fb).copyMemory(from: scratch.baseAddress! + k * file.record + layout.frameHeader, byteCount: fb)
            }
        }
        if layout.bigEndian != (1.bigEndian == 1) { swapBytes(out.baseAddress!, count: count * fb / layout.pixelType.size, size: layout.pixelType.size) }
    }
}

/// Quantum Detectors Merlin `.mib`: every frame is an ASCII header (`MQ1,<seq>,<header bytes>,
/// <chips>,<width>,<height>,<depth>,<layout>,…`) followed by big-endian pixels; depth U01 (1-bit
/// counter, 8 pixels a byte, first pixel in the most significant bit), U08 (6-bit), U16 (12-bit),
/// U32 (24-bit). Raw mode (R64) is refused. An optional `.hdr` sidecar describes the acquisition.
public final class MIBFrameSource: FrameSource {
    public let path: String
    public var format: String { "mib" }
    public var mediaType: String { "application/x-merlin-mib" }
    public let geometry: ScanGeometry
    public let metadata: [(String, String)]
    public let headerBytes: Int
    public let depth: String
    let file: RecordFile

    public init(path: String, scan: (Int, Int)?, sidecar: String? = nil) throws(EMFormatsError) {
        self.path = path
        let probe = try RecordFile(path: path, fileHeader: 0, frameHeader: 0, pixelBytes: 1, frameFooter: 0)
        let n = Int(min(probe.fileSize, 4096))
        guard n > 0 else { throw EMFormatsError(path: path, message: "empty file, not a Merlin MIB") }
        var head = [UInt8](repeating: 0, count: n)
        let got = head.withUnsafeMutableBytes { pread(probe.fd, $0.baseAddress, n, 0) }
        guard got == n else { throw EMFormatsError(path: path, message: "cannot read the first frame header: \(String(cString: strerror(errno)))") }
        let h = try Self.parseHeader(head, path: path, frame: 0)
        guard h.depth != "R64" else {
            throw EMFormatsError(path: path, message: "raw-mode MIB (R64) is not supported; acquire in counting mode or export frames from the Merlin software")
        }
        headerBytes = h.headerBytes; depth = h.depth
        let type: PixelType
        let pixelBytes: Int
        switch h.depth {
        case "U01": type = .uint8; pixelBytes = (h.width * h.height + 7) / 8
        case "U08": type = .uint8; pixelBytes = h.width * h.height
        case "U16": type = .uint16; pixelBytes = h.width * h.height * 2
        case "U32": type = .uint32; pixelBytes = h.width * h.height * 4
        case "U64": type = .uint64; pixelBytes = h.width * h.height * 8
        default: throw EMFormatsError(path: path, message: "unknown MIB pixel depth '\(h.depth)' in the first frame header (expected U01, U08, U16, U32)")
        }
        file = try RecordFile(path: path, fileHeader: 0, frameHeader: h.headerBytes, pixelBytes: pixelBytes, frameFooter: 0)
        let frames = try file.recordCount()

        var md: [(String, String)] = [("frame_header", h.text)]
        var fromSidecar: (Int, Int)? = nil
        let hdrPath = sidecar ?? ((path as NSString).deletingPathExtension + ".hdr")
        if let text = try? String(contentsOfFile: hdrPath, encoding: .utf8) {
            var kv: [String: String] = [:]
            for line in text.split(whereSeparator: \.isNewline) {
                guard let c = line.firstIndex(of: ":") else { continue }
                let k = line[..<c].trimmingCharacters(in: .whitespaces), v = line[line.index(after: c)...].trimmingCharacters(in: .whitespaces)
                guard !k.isEmpty else { continue }
                kv[k] = v
                md.append(("hdr: " + k, v))
            }
            if let depthBits = kv["Counter Depth (number)"].flatMap({ Int($0) }) {
                let expected = [1: "U01", 6: "U08", 12: "U16", 24: "U32"][depthBits]
                if let expected, expected != h.depth {
                    throw EMFormatsError(path: path, message: "header/size mismatch: \(hdrPath) says a \(depthBits)-bit counter (\(expected)) but the frames are \(h.depth)")
                }
            }
            if let total = kv["Frames in Acquisition (Number)"].flatMap({ Int($0) }), total != frames {
                throw EMFormatsError(path: path, message: "header/size mismatch: \(hdrPath) says \(total) frames, the file holds \(frames) whole frames")
            }
            if let perLine = kv["Frames per Trigger (Number)"].flatMap({ Int($0) }), perLine > 0, frames % perLine == 0, perLine > 1 {
                fromSidecar = (frames / perLine, perLine)
            }
        }
        let (y, x) = try ScanShapeHint.resolve(declared: scan, fallback: fromSidecar, frames: frames, path: path)
        geometry = ScanGeometry(scanY: y, scanX: x, frameHeight: h.height, frameWidth: h.width, pixelType: type)
        metadata = md
    }

    struct Header { var text: String; var headerBytes: Int; var width: Int; var height: Int; var depth: String }

    static func parseHeader(_ bytes: some Collection<UInt8>, path: String, frame: Int) throws(EMFormatsError) -> Header {
        let prefix = bytes.prefix(while: { $0 != 0 })
        let text = String(decoding: prefix.prefix(1024), as: UTF8.self)
        let f = text.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
        guard f.count >= 7, f[0] == "MQ1", let hb = Int(f[2]), hb > 0, let w = Int(f[4]), let h = Int(f[5]), w > 0, h > 0 else {
            throw EMFormatsError(path: path, message: frame == 0 ? "not a Merlin MIB file: no 'MQ1,…' frame header at the start"
                                 : "header/size mismatch: frame \(frame) does not start with an 'MQ1,…' header where the first header's sizes put it")
        }
        return Header(text: String(text.prefix(hb)).trimmingCharacters(in: CharacterSet(charactersIn: " \0")), headerBytes: hb, width: w, height: h, depth: f[6])
    }

    public func readFrames(_ first: Int, count: Int, into out: UnsafeMutableRawBufferPointer) throws(EMFormatsError) {
        let fb = geometry.frameBytes, rec = file.record
        precondition(out.count >= count * fb && first + count <= geometry.frames)
        let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: count * rec, alignment: 64)
        defer { scratch.deallocate() }
        try file.readRecords(first, count: count, into: scratch)
        let g = geometry
        for k in 0..<count {
            let r = UnsafeRawBufferPointer(rebasing: scratch[(k * rec)..<(k * rec + headerBytes)])
            let h = try Self.parseHeader(r, path: path, frame: first + k)
            guard h.width == g.frameWidth, h.height == g.frameHeight, h.depth == depth, h.headerBytes == headerBytes else {
                throw EMFormatsError(path: path, message: "header/size mismatch: frame \(first + k) says \(h.width)×\(h.height) \(h.depth) with a \(h.headerBytes)-byte header, the first frame \(g.frameWidth)×\(g.frameHeight) \(depth) with \(headerBytes)")
            }
            let src = scratch.baseAddress! + k * rec + headerBytes
            let dst = out.baseAddress! + k * fb
            if depth == "U01" {
                let s = src.assumingMemoryBound(to: UInt8.self), d = dst.assumingMemoryBound(to: UInt8.self)
                for i in 0..<(g.frameWidth * g.frameHeight) { d[i] = (s[i >> 3] >> (7 - UInt8(i & 7))) & 1 }
            } else {
                dst.copyMemory(from: src, byteCount: fb)
            }
        }
        if g.pixelType.size > 1 && 1.littleEndian == 1 { swapBytes(out.baseAddress!, count: count * fb / g.pixelType.size, size: g.pixelType.size) }
    }
}

/// A multi-page TIFF whose pages are the frames of a scan (declared shape, else square).
public final class TIFFStackFrameSource: FrameSource {
    public let path: String
    public var format: String { "tiff-stack" }
    public var mediaType: String { "image/tiff" }
    public let geometry: ScanGeometry
    public let metadata: [(String, String)]
    let file: TIFFImageFile
    let pages: [Int]

    public init(path: String, scan: (Int, Int)?) throws(EMFormatsError) {
        self.path = path
        file = try TIFFImageFile(path: path)
        let series = file.series()
        for p in series.pages { try file.check(file.pages[p]) }
        guard series.page.samplesPerPixel == 1, let type = series.page.pixelType else {
            throw EMFormatsError(path: path, message: "a 4D-STEM TIFF stack needs one grey sample per pixel; this one has \(series.page.samplesPerPixel)")
        }
        pages = series.pages
        let (y, x) = try ScanShapeHint.resolve(declared: scan, fallback: nil, frames: pages.count, path: path)
        geometry = ScanGeometry(scanY: y, scanX: x, frameHeight: series.page.height, frameWidth: series.page.width, pixelType: type)
        metadata = [("pages", "\(pages.count) of \(file.pages.count)")]
    }

    public func readFrames(_ first: Int, count: Int, into out: UnsafeMutableRawBufferPointer) throws(EMFormatsError) {
        let fb = geometry.frameBytes
        for k in 0..<count {
            try file.read(page: pages[first + k], into: UnsafeMutableRawBufferPointer(rebasing: out[(k * fb)..<((k + 1) * fb)]))
        }
    }
}
