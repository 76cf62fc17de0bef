internal import CTIFF

/// The element type of decoded pixels.
public enum PixelType: String, Sendable, Codable, CaseIterable {
    case uint8, int8, uint16, int16, uint32, int32, uint64, int64, float32, float64

    public var size: Int {
        switch self {
        case .uint8, .int8: 1
        case .uint16, .int16: 2
        case .uint32, .int32, .float32: 4
        case .uint64, .int64, .float64: 8
        }
    }

    /// From TIFF BitsPerSample and SampleFormat (1 unsigned, 2 signed, 3 IEEE float); nil if unsupported.
    init?(bits: Int, sampleFormat: Int) {
        switch (sampleFormat, bits) {
        case (1, 8), (4, 8): self = .uint8
        case (1, 16), (4, 16): self = .uint16
        case (1, 32), (4, 32): self = .uint32
        case (1, 64), (4, 64): self = .uint64
        case (2, 8): self = .int8
        case (2, 16): self = .int16
        case (2, 32): self = .int32
        case (2, 64): self = .int64
        case (3, 32): self = .float32
        case (3, 64): self = .float64
        default: return nil
        }
    }
}

/// A raw TIFF tag value as stored: text, or numbers (integers, rationals as doubles), or bytes.
public enum TIFFTagValue: Sendable, Equatable {
    case text(String)
    case numbers([Double])
    case bytes([UInt8])
}

/// One image file directory (page) of a TIFF.
public struct TIFFPage: Sendable, Equatable, Codable {
    public var index: Int
    public var width: Int
    public var height: Int
    public var bitsPerSample: Int
    public var samplesPerPixel: Int
    /// 1 unsigned, 2 signed, 3 IEEE float.
    public var sampleFormat: Int
    public var compression: Int
    public var photometric: Int
    /// 1 interleaved (RGBRGB), 2 separate planes.
    public var planarConfig: Int
    public var tiled: Bool
    /// NewSubfileType: bit 0 marks a reduced-resolution copy (a thumbnail).
    public var subfileType: Int
    public var pixelType: PixelType?

    public var isThumbnail: Bool { subfileType & 1 != 0 }
    /// Bytes of one decoded page (all samples).
    public var decodedBytes: Int { width * height * samplesPerPixel * (pixelType?.size ?? bitsPerSample / 8) }
    public var shapeKey: [Int] { [width, height, samplesPerPixel, bitsPerSample, sampleFormat] }
}

/// The pages of a file that form one image or stack, and those left out.
public struct TIFFSeries: Sendable, Equatable {
    public var pages: [Int]
    /// Pages skipped: thumbnails and pages whose shape or type differs from the series.
    public var skipped: [Int]
    public var page: TIFFPage
}

/// An open TIFF file read with libtiff: strips or tiles, any byte order, classic or BigTIFF, every
/// compression libtiff was built with. Not thread-safe; open one per thread.
public final class TIFFImageFile {
    public let path: String
    public let pages: [TIFFPage]
    public let fileSize: Int64
    let tif: OpaquePointer

    /// Refuses pages that would decode to more than this many bytes per page, and more than
    /// `expansionLimit` times the file's size (a damaged header claiming a giant image).
    public static let maxPageBytes = 8 << 30
    public static let expansionLimit = 2000

    public init(path: String) throws(EMFormatsError) {
        self.path = path
        emflow_tiff_install_handlers()
        emflow_tiff_clear_error()
        var st = stat()
        guard stat(path, &st) == 0 else { throw EMFormatsError(path: path, message: "cannot read: \(String(cString: strerror(errno)))") }
        fileSize = Int64(st.st_size)
        guard st.st_size > 0 else { throw EMFormatsError(path: path, message: "the file is empty (0 bytes); the transfer may have failed — copy it again from the microscope") }
        guard let t = TIFFOpen(path, "rm") else { throw Self.failure(path, "not a readable TIFF (truncated, damaged, or not a TIFF)") }
        tif = t
        var list: [TIFFPage] = []
        var guardCount = 0
        repeat {
            guardCount += 1
            if guardCount > 100_000 { break }
            var w: UInt32 = 0, h: UInt32 = 0
            guard emflow_tiff_get_u32(t, UInt32(TIFFTAG_IMAGEWIDTH), &w) == 1, emflow_tiff_get_u32(t, UInt32(TIFFTAG_IMAGELENGTH), &h) == 1 else {
                TIFFClose(t)
                throw Self.failure(path, "page \(list.count) has no image size")
            }
            var bps: UInt16 = 1, spp: UInt16 = 1, fmt: UInt16 = 1, comp: UInt16 = 1, photo: UInt16 = 1, planar: UInt16 = 1
            var sub: UInt32 = 0
            _ = emflow_tiff_get_u16(t, UInt32(TIFFTAG_BITSPERSAMPLE), &bps)
            _ = emflow_tiff_get_u16(t, UInt32(TIFFTAG_SAMPLESPERPIXEL), &spp)
            _ = emflow_tiff_get_u16(t, UInt32(TIFFTAG_SAMPLEFORMAT), &fmt)
            _ = emflow_tiff_get_u16(t, UInt32(TIFFTAG_COMPRESSION), &comp)
            _ = emflow_tiff_get_u16(t, UInt32(TIFFTAG_PHOTOMETRIC), &photo)
            _ = emflow_tiff_get_u16(t, UInt32(TIFFTAG_PLANARCONFIG), &planar)
            _ = emflow_tiff_get_u32(t, UInt32(TIFFTAG_SUBFILETYPE), &sub)
            list.append(TIFFPage(index: list.count, width: Int(w), height: Int(h), bitsPerSample: Int(bps), samplesPerPixel: Int(spp),
                                 sampleFormat: Int(fmt), compression: Int(comp), photometric: Int(photo), planarConfig: Int(planar),
                                 tiled: TIFFIsTiled(t) != 0, subfileType: Int(sub), pixelType: PixelType(bits: Int(bps), sampleFormat: Int(fmt))))
        } while TIFFReadDirectory(t) == 1
        pages = list
        if list.isEmpty { TIFFClose(t); throw Self.failure(path, "no image in the file") }
    }

    deinit { TIFFClose(tif) }

    static func failure(_ path: String, _ what: String) -> EMFormatsError {
        let e = String(cString: emflow_tiff_last_error())
        return EMFormatsError(path: path, message: e.isEmpty ? what : "\(what): \(e)")
    }

    /// The full-resolution series: the most common page shape among non-thumbnail pages (the first such
    /// page decides ties). Pages of other shapes (thumbnails, previews) are listed as skipped.
    public func series() -> TIFFSeries {
        let full = pages.filter { !$0.isThumbnail }
        let candidates = full.isEmpty ? pages : full
        var counts: [[Int]: Int] = [:]
        for p in candidates { counts[p.shapeKey, default: 0] += 1 }
        // Largest image first, then the most pages: a stack of frames beats one overview.
        let best = candidates.max { a, b in
            let pa = a.width * a.height, pb = b.width * b.height
            if pa != pb { return pa < pb }
            if counts[a.shapeKey]! != counts[b.shapeKey]! { return counts[a.shapeKey]! < counts[b.shapeKey]! }
            return a.index > b.index
        }!
        let chosen = candidates.filter { $0.shapeKey == best.shapeKey }.map(\.index)
        return TIFFSeries(pages: chosen, skipped: pages.map(\.index).filter { !chosen.contains($0) }, page: best)
    }

    func select(_ index: Int) throws(EMFormatsError) {
        emflow_tiff_clear_error()
        // TIFFSetDirectory re-reads the directory (walking from the first page): skip it when already there.
        if index >= 0, index < pages.count, Int(TIFFCurrentDirectory(tif)) == index { return }
        guard index >= 0, index < pages.count, TIFFSetDirectory(tif, UInt32(index)) == 1 else {
            throw Self.failure(path, "cannot read page \(index)")
        }
    }

    /// Checks that a page can be decoded and is not implausibly large for the file.
    public func check(_ page: TIFFPage) throws(EMFormatsError) {
        guard page.pixelType != nil else {
            throw EMFormatsError(path: path, message: "page \(page.index): \(page.bitsPerSample)-bit samples of format \(page.sampleFormat) are not supported (8/16/32/64-bit integers, 32/64-bit floats are)")
        }
        guard page.width > 0, page.height > 0, page.samplesPerPixel >= 1, page.samplesPerPixel <= 16 else {
            throw EMFormatsError(path: path, message: "page \(page.index): implausible geometry \(page.width)×\(page.height)×\(page.samplesPerPixel)")
        }
        let bytes = page.width.multipliedReportingOverflow(by: page.height)
        guard !bytes.overflow, bytes.partialValue <= Self.maxPageBytes / (page.samplesPerPixel * page.pixelType!.size),
              Int64(page.decodedBytes) <= max(fileSize, 1 << 20) * Int64(Self.expansionLimit) else {
            throw EMFormatsError(path: path, message: "page \(page.index) claims \(page.width)×\(page.height) pixels, far more than a \(fileSize)-byte file can hold; the header is damaged")
        }
    }

    /// Decodes page `index` into `out` (at least `decodedBytes` long) as separate planes: sample 0 of
    /// every pixel, then sample 1, ... (for one-sample images simply row-major pixels), native byte order.
    public func read(page index: Int, into out: UnsafeMutableRawBufferPointer) throws(EMFormatsError) {
        let p = pages[index]
        try check(p)
        precondition(out.count >= p.decodedBytes)
        try select(index)
        let elt = p.pixelType!.size
        let spp = p.samplesPerPixel
        let separate = p.planarConfig == 2 && spp > 1
        let pixelBytes = separate ? elt : elt * spp   // bytes per pixel within one decoded block
        let planeBytes = p.width * p.height * elt
        // Interleaved multi-sample pages are decoded into a scratch image, then split into planes.
        let direct = separate || spp == 1
        let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: direct ? 0 : p.width * p.height * pixelBytes, alignment: 16)
        defer { scratch.deallocate() }
        try decodeBlocks(p, into: direct ? out : scratch, separate: separate, pixelBytes: pixelBytes, planeBytes: planeBytes)
        if !direct {
            // Interleaved samples → planes.
            let count = p.width * p.height
            for c in 0..<spp {
                for i in 0..<count {
                    (out.baseAddress! + c * planeBytes + i * elt).copyMemory(from: scratch.baseAddress! + (i * spp + c) * elt, byteCount: elt)
                }
            }
        }
    }

    private func decodeBlocks(_ p: TIFFPage, into target: UnsafeMutableRawBufferPointer, separate: Bool, pixelBytes: Int, planeBytes: Int) throws(EMFormatsError) {
        let index = p.index, spp = p.samplesPerPixel
        let planes = separate ? spp : 1
        if p.tiled {
            var tw: UInt32 = 0, th: UInt32 = 0
            guard emflow_tiff_get_u32(tif, UInt32(TIFFTAG_TILEWIDTH), &tw) == 1, emflow_tiff_get_u32(tif, UInt32(TIFFTAG_TILELENGTH), &th) == 1,
                  tw > 0, th > 0, Int(tw) * Int(th) <= 1 << 28 else { throw Self.failure(path, "page \(index): bad tile size") }
            let tileBytes = Int(TIFFTileSize(tif))
            guard tileBytes > 0, tileBytes >= Int(tw) * Int(th) * pixelBytes else { throw Self.failure(path, "page \(index): bad tile size") }
            let tile = UnsafeMutableRawBufferPointer.allocate(byteCount: tileBytes, alignment: 16)
            defer { tile.deallocate() }
            for plane in 0..<planes {
                for y0 in stride(from: 0, to: p.height, by: Int(th)) {
                    for x0 in stride(from: 0, to: p.width, by: Int(tw)) {
                        let n = TIFFReadEncodedTile(tif, TIFFComputeTile(tif, UInt32(x0), UInt32(y0), 0, UInt16(plane)), tile.baseAddress, tmsize_t(tileBytes))
                        guard n >= 0 else { throw Self.failure(path, "page \(index): tile at (\(x0), \(y0)) is damaged") }
                        let rows = min(Int(th), p.height - y0), cols = min(Int(tw), p.width - x0)
                        for r in 0..<rows {
                            let src = tile.baseAddress! + r * Int(tw) * pixelBytes
                            let dst = target.baseAddress! + plane * planeBytes + ((y0 + r) * p.width + x0) * pixelBytes
                            dst.copyMemory(from: src, byteCount: cols * pixelBytes)
                        }
                    }
                }
            }
        } else {
            var rowsPerStrip: UInt32 = 0
            if emflow_tiff_get_u32(tif, UInt32(TIFFTAG_ROWSPERSTRIP), &rowsPerStrip) != 1 || rowsPerStrip == 0 || Int(rowsPerStrip) > p.height {
                rowsPerStrip = UInt32(p.height)
            }
            let stripsPerPlane = (p.height + Int(rowsPerStrip) - 1) / Int(rowsPerStrip)
            let rowBytes = p.width * pixelBytes
            for plane in 0..<planes {
                for s in 0..<stripsPerPlane {
                    let y0 = s * Int(rowsPerStrip)
                    let rows = min(Int(rowsPerStrip), p.height - y0)
                    let dst = target.baseAddress! + plane * planeBytes + y0 * rowBytes
                    let want = rows * rowBytes
                    let n = TIFFReadEncodedStrip(tif, UInt32(plane * stripsPerPlane + s), dst, tmsize_t(want))
                    guard n >= 0 else { throw Self.failure(path, "page \(index): strip \(s) is damaged or truncated") }
                    if Int(n) < want { throw Self.failure(path, "page \(index): strip \(s) holds \(n) of \(want) bytes; the file is truncated") }
                }
            }
        }
    }

    /// Where a page's pixels already lie in the file in their decoded form — uncompressed, native byte
    /// order, one sample per pixel, strips stored one after another — so they can be used without
    /// decoding. Nil when the page needs libtiff to decode it.
    public func rawPixelRange(page index: Int) -> Range<Int64>? {
        let p = pages[index]
        guard (try? check(p)) != nil, (try? select(index)) != nil else { return nil }
        guard p.compression == 1, p.samplesPerPixel == 1, !p.tiled, TIFFIsByteSwapped(tif) == 0 else { return nil }
        var predictor: UInt16 = 1
        _ = emflow_tiff_get_u16(tif, UInt32(TIFFTAG_PREDICTOR), &predictor)
        guard predictor == 1 else { return nil }
        let strips = Int(TIFFNumberOfStrips(tif))
        guard strips > 0 else { return nil }
        let start = Int64(TIFFGetStrileOffset(tif, 0))
        var end = start
        for s in 0..<strips {
            guard Int64(TIFFGetStrileOffset(tif, UInt32(s))) == end else { return nil }
            end += Int64(TIFFGetStrileByteCount(tif, UInt32(s)))
        }
        guard start > 0, end - start == Int64(p.decodedBytes), end <= fileSize else { return nil }
        return start..<end
    }

    /// A tag of the current page (`page`), raw. Numbers of any integer, rational or float type become doubles.
    public func tag(_ id: Int, page: Int = 0) -> TIFFTagValue? {
        guard (try? select(page)) != nil else { return nil }
        var count: UInt32 = 0
        var data: UnsafeRawPointer? = nil
        var type: Int32 = 0
        guard emflow_tiff_get_raw(tif, UInt32(id), &count, &data, &type) == 1, let data else { return nil }
        let n = Int(count)
        switch UInt32(type) {
        case TIFF_ASCII.rawValue:
            var bytes = Array(UnsafeRawBufferPointer(start: data, count: n))
            while bytes.last == 0 { bytes.removeLast() }
            return .text(TIFFImageFile.decodeText(bytes))
        case TIFF_BYTE.rawValue, TIFF_UNDEFINED.rawValue, TIFF_SBYTE.rawValue:
            return .bytes(Array(UnsafeRawBufferPointer(start: data, count: n)))
        case TIFF_SHORT.rawValue: return .numbers((0..<n).map { Double(data.loadUnaligned(fromByteOffset: $0 * 2, as: UInt16.self)) })
        case TIFF_SSHORT.rawValue: return .numbers((0..<n).map { Double(data.loadUnaligned(fromByteOffset: $0 * 2, as: Int16.self)) })
        case TIFF_LONG.rawValue, TIFF_IFD.rawValue: return .numbers((0..<n).map { Double(data.loadUnaligned(fromByteOffset: $0 * 4, as: UInt32.self)) })
        case TIFF_SLONG.rawValue: return .numbers((0..<n).map { Double(data.loadUnaligned(fromByteOffset: $0 * 4, as: Int32.self)) })
        case TIFF_LONG8.rawValue, TIFF_IFD8.rawValue: return .numbers((0..<n).map { Double(data.loadUnaligned(fromByteOffset: $0 * 8, as: UInt64.self)) })
        case TIFF_SLONG8.rawValue: return .numbers((0..<n).map { Double(data.loadUnaligned(fromByteOffset: $0 * 8, as: Int64.self)) })
        // libtiff hands rationals of anonymous tags over as floats.
        case TIFF_FLOAT.rawValue, TIFF_RATIONAL.rawValue, TIFF_SRATIONAL.rawValue:
            return .numbers((0..<n).map { Double(data.loadUnaligned(fromByteOffset: $0 * 4, as: Float.self)) })
        case TIFF_DOUBLE.rawValue: return .numbers((0..<n).map { data.loadUnaligned(fromByteOffset: $0 * 8, as: Double.self) })
        default: return nil
        }
    }

    /// A known string tag (ImageDescription, Make, ...).
    public func text(_ id: Int, page: Int = 0) -> String? {
        guard (try? select(page)) != nil else { return nil }
        var p: UnsafeMutablePointer<CChar>? = nil
        guard emflow_tiff_get_string(tif, UInt32(id), &p) == 1, let p else { return nil }
        return TIFFImageFile.decodeText(Array(UnsafeRawBufferPointer(start: p, count: strlen(p))))
    }

    /// A known float tag (XResolution, YResolution).
    public func float(_ id: Int, page: Int = 0) -> Double? {
        guard (try? select(page)) != nil else { return nil }
        var f: Float = 0
        guard emflow_tiff_get_float(tif, UInt32(id), &f) == 1 else { return nil }
        return Double(f)
    }

    public func uint16(_ id: Int, page: Int = 0) -> Int? {
        guard (try? select(page)) != nil else { return nil }
        var v: UInt16 = 0
        guard emflow_tiff_get_u16(tif, UInt32(id), &v) == 1 else { return nil }
        return Int(v)
    }

    /// TIFF text is nominally ASCII; vendors write UTF-8 or Latin-1 (Zeiss's µ is byte 0xB5).
    static func decodeText(_ bytes: [UInt8]) -> String {
        if let s = String(validating: bytes, as: UTF8.self) { return s }
        return String(bytes.map { Character(Unicode.Scalar($0)) })
    }
}

#if canImport(Glibc)
import Glibc
#endif
