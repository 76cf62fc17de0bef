internal import CTIFF

public struct EMFormatsError: Error, CustomStringConvertible, Sendable {
    public let path: String
    public let message: String
    public var description: String { "\(path): \(message)" }
}

/// What a TIFF holds, page by page, without reading pixel data.
public struct TIFFSummary: Codable, Sendable, Equatable {
    public struct Page: Codable, Sendable, Equatable {
        public var width: Int
        public var height: Int
        public var bitsPerSample: Int
        public var samplesPerPixel: Int
        /// 1 unsigned, 2 signed, 3 IEEE float (TIFF SampleFormat).
        public var sampleFormat: Int
        public var compression: Int
        public var tiled: Bool
        public var description: String?

        /// The element type as NumPy/HDF5 users name it (uint16, float32, ...).
        public var dataType: String {
            let kind = sampleFormat == 3 ? "float" : sampleFormat == 2 ? "int" : "uint"
            return "\(kind)\(bitsPerSample)"
        }
    }
    public var pages: [Page]
}

public enum TIFFProbe {
    /// Reads every page's header. A file that is not a TIFF, is truncated or has a broken directory
    /// is an error naming the file and libtiff's reason.
    public static func inspect(path: String) throws(EMFormatsError) -> TIFFSummary {
        emflow_tiff_install_handlers()
        emflow_tiff_clear_error()
        guard let tif = TIFFOpen(path, "rm") else { throw failure(path, "not a readable TIFF") }
        defer { TIFFClose(tif) }
        var pages: [TIFFSummary.Page] = []
        repeat {
            var w: UInt32 = 0, h: UInt32 = 0
            guard emflow_tiff_get_u32(tif, UInt32(TIFFTAG_IMAGEWIDTH), &w) == 1, emflow_tiff_get_u32(tif, UInt32(TIFFTAG_IMAGELENGTH), &h) == 1 else {
                throw failure(path, "page \(pages.count) has no image size")
            }
            var bps: UInt16 = 1, spp: UInt16 = 1, fmt: UInt16 = 1, comp: UInt16 = 1
            _ = emflow_tiff_get_u16(tif, UInt32(TIFFTAG_BITSPERSAMPLE), &bps)
            _ = emflow_tiff_get_u16(tif, UInt32(TIFFTAG_SAMPLESPERPIXEL), &spp)
            _ = emflow_tiff_get_u16(tif, UInt32(TIFFTAG_SAMPLEFORMAT), &fmt)
            _ = emflow_tiff_get_u16(tif, UInt32(TIFFTAG_COMPRESSION), &comp)
            var desc: UnsafeMutablePointer<CChar>? = nil
            var text: String? = nil
            if emflow_tiff_get_string(tif, UInt32(TIFFTAG_IMAGEDESCRIPTION), &desc) == 1, let desc {
                text = String(validatingCString: desc) ?? String(decoding: UnsafeRawBufferPointer(start: desc, count: strlen(desc)), as: UTF8.self)
            }
            pages.append(.init(width: Int(w), height: Int(h), bitsPerSample: Int(bps), samplesPerPixel: Int(spp), sampleFormat: Int(fmt),
                               compression: Int(comp), tiled: TIFFIsTiled(tif) != 0, description: text))
        } while TIFFReadDirectory(tif) == 1
        let err = String(cString: emflow_tiff_last_error())
        if !err.isEmpty && pages.isEmpty { throw failure(path, err) }
        return TIFFSummary(pages: pages)
    }

    static func failure(_ path: String, _ fallback: String) -> EMFormatsError {
        let e = String(cString: emflow_tiff_last_error())
        return EMFormatsError(path: path, message: e.isEmpty ? fallback : "\(fallback): \(e)")
    }
}

#if canImport(Glibc)
import Glibc
#endif
