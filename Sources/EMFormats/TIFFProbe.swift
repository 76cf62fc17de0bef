public struct EMFormatsError: Error, CustomStringConvertible, Sendable {
    public let path: String
    public let message: String
    public init(path: String, message: String) { self.path = path; self.message = message }
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
        let f = try TIFFImageFile(path: path)
        return TIFFSummary(pages: f.pages.map { p in
            .init(width: p.width, height: p.height, bitsPerSample: p.bitsPerSample, samplesPerPixel: p.samplesPerPixel,
                  sampleFormat: p.sampleFormat, compression: p.compression, tiled: p.tiled, description: f.text(270, page: p.index))
        })
    }
}
