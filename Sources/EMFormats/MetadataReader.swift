import Foundation

/// Collects every metadata source of a microscope TIFF into one flat, typed key space:
/// `tiff.*` (baseline tags), `description.*` (ImageDescription as JSON, XML, INI, key=value or text),
/// `imagej.*`, `ome.*`, `fei.*` (34682), `zeiss.*` (34118), `tvips.*` (37706), `tescan.*` (50431),
/// `jeol.*` and `sidecar.<ext>.*` (files next to the image).
public enum MetadataReader {
    public enum Tag {
        public static let imageDescription = 270, make = 271, model = 272, software = 305, dateTime = 306
        public static let artist = 315, hostComputer = 316, xResolution = 282, yResolution = 283, resolutionUnit = 296
        public static let fei = 34682, zeissSEM = 34118, tvips = 37706, tescan = 50431
    }

    /// Sidecar names tried next to `image.tif`: image.hdr, image.txt, image.xml, image.tif.hdr.
    public static func sidecarCandidates(for imagePath: String) -> [String] {
        let dir = (imagePath as NSString).deletingLastPathComponent
        let name = (imagePath as NSString).lastPathComponent
        let stem = (name as NSString).deletingPathExtension
        let join = { (n: String) in dir.isEmpty ? n : dir + "/" + n }
        return [join(stem + ".hdr"), join(stem + ".txt"), join(stem + ".xml"), join(name + ".hdr")]
    }

    public static func read(_ file: TIFFImageFile, page: Int = 0, sidecars: [String] = []) throws(MetadataError) -> SourceMetadata {
        var md = SourceMetadata()
        // Baseline tags.
        var baseline: [(String, MetaValue)] = []
        for (name, id) in [("Make", Tag.make), ("Model", Tag.model), ("Software", Tag.software), ("DateTime", Tag.dateTime),
                           ("Artist", Tag.artist), ("HostComputer", Tag.hostComputer)] {
            if let t = file.text(id, page: page), !t.isEmpty { baseline.append((name, .string(t))) }
        }
        if let x = file.float(Tag.xResolution, page: page) { baseline.append(("XResolution", .double(x))) }
        if let y = file.float(Tag.yResolution, page: page) { baseline.append(("YResolution", .double(y))) }
        if let u = file.uint16(Tag.resolutionUnit, page: page) { baseline.append(("ResolutionUnit", .int(Int64(u)))) }
        if !baseline.isEmpty { md.merge(baseline, prefix: "tiff"); md.sources.append("tiff") }

        if let d = file.text(Tag.imageDescription, page: page) { try description(d, into: &md) }
        try vendorTags(file, page: page, into: &md)
        for path in sidecars { try sidecar(path, into: &md) }
        return md
    }

    static func text(of v: TIFFTagValue) -> String? {
        switch v {
        case .text(let s): return s
        case .bytes(let b):
            var b = b
            while b.last == 0 { b.removeLast() }
            return TIFFImageFile.decodeText(b)
        case .numbers: return nil
        }
    }

    /// Text a vendor wrote as a printable block; binary noise is refused rather than misread.
    static func printable(_ s: String, _ source: String) throws(MetadataError) -> String {
        let bad = s.unicodeScalars.filter { $0.value < 0x20 && $0 != "\n" && $0 != "\r" && $0 != "\t" }.count
        if bad > 0 || s.contains("\u{FFFD}") {
            throw MetadataError(source: source, message: "holds \(bad) control byte(s): the tag is damaged or not the vendor's text layout")
        }
        return s
    }

    static func vendorTags(_ file: TIFFImageFile, page: Int, into md: inout SourceMetadata) throws(MetadataError) {
        if let v = file.tag(Tag.fei, page: page), let raw = text(of: v) {
            let s = try printable(raw, "FEI tag 34682")
            guard let pairs = Flatten.ini(s), !pairs.isEmpty else {
                throw MetadataError(source: "FEI tag 34682", message: "no [Section] key=value lines; the tag is damaged")
            }
            md.merge(pairs, prefix: "fei"); md.sources.append("fei")
            md.blocks.append(.init(source: "fei", mediaType: "text/plain", text: s))
        }
        if let v = file.tag(Tag.zeissSEM, page: page), let raw = text(of: v) {
            let s = try printable(raw, "Zeiss tag 34118")
            md.merge(try Flatten.zeissSEM(s), prefix: "zeiss"); md.sources.append("zeiss")
            md.blocks.append(.init(source: "zeiss", mediaType: "text/plain", text: s))
        }
        if let v = file.tag(Tag.tvips, page: page) {
            let bytes: [UInt8]
            switch v {
            case .bytes(let b): bytes = b
            case .numbers(let n): bytes = n.flatMap { x -> [UInt8] in let u = UInt32(truncatingIfNeeded: Int64(x)); return [UInt8(u & 0xFF), UInt8(u >> 8 & 0xFF), UInt8(u >> 16 & 0xFF), UInt8(u >> 24)] }
            case .text(let t): bytes = Array(t.utf8)
            }
            md.merge(try TVIPSHeader.parse(bytes), prefix: "tvips"); md.sources.append("tvips")
        }
        if let v = file.tag(Tag.tescan, page: page), let raw = text(of: v) {
            let s = try printable(raw, "Tescan tag 50431")
            guard let pairs = Flatten.ini(s) ?? Flatten.keyValueLines(s) else {
                throw MetadataError(source: "Tescan tag 50431", message: "no key=value lines; the tag is damaged")
            }
            md.merge(pairs, prefix: "tescan"); md.sources.append("tescan")
            md.blocks.append(.init(source: "tescan", mediaType: "text/plain", text: s))
        }
    }

    /// ImageDescription: JSON, OME-XML, other XML, ImageJ, INI, key=value, or plain text — in that order.
    public static func description(_ d: String, into md: inout SourceMetadata) throws(MetadataError) {
        let t = d.trimmingCharacters(in: .whitespacesAndNewlines)
        guard !t.isEmpty else { return }
        if t.hasPrefix("{") || t.hasPrefix("[") {
            do {
                md.merge(try Flatten.json(t), prefix: "description")
            } catch {
                throw MetadataError(source: "ImageDescription (tag 270)", message: "starts like JSON but \(error.message); fix the camera's export or remove the tag")
            }
            md.sources.append("description")
            md.blocks.append(.init(source: "description", mediaType: "application/json", text: t))
        } else if t.hasPrefix("<") {
            let pairs: [(String, MetaValue)]
            do { pairs = try Flatten.xml(t) } catch {
                throw MetadataError(source: "ImageDescription (tag 270)", message: "starts like XML but is \(error.message)")
            }
            let isOME = pairs.first.map { $0.0.hasPrefix("OME.") || $0.0 == "OME" } ?? false
            if isOME {
                md.merge(pairs.map { (String($0.0.dropFirst(min(4, $0.0.count))), $0.1) }.filter { !$0.0.isEmpty }, prefix: "ome")
                md.sources.append("ome")
            } else {
                md.merge(pairs, prefix: "description"); md.sources.append("description")
            }
            md.blocks.append(.init(source: isOME ? "ome" : "description", mediaType: "application/xml", text: t))
        } else if t.hasPrefix("ImageJ=") {
            md.merge(Flatten.keyValueLines(t) ?? [], prefix: "imagej"); md.sources.append("imagej")
            md.blocks.append(.init(source: "imagej", mediaType: "text/plain", text: t))
        } else if let pairs = Flatten.ini(t) ?? Flatten.keyValueLines(t) {
            md.merge(pairs, prefix: "description"); md.sources.append("description")
            md.blocks.append(.init(source: "description", mediaType: "text/plain", text: t))
        } else {
            md.set("description.text", .string(t)); md.sources.append("description")
        }
    }

    static func sidecar(_ path: String, into md: inout SourceMetadata) throws(MetadataError) {
        guard let data = FileManager.default.contents(atPath: path), data.count < 16 << 20 else { return }
        let ext = (path as NSString).pathExtension.lowercased()
        let name = (path as NSString).lastPathComponent
        let text = TIFFImageFile.decodeText(Array(data))
        let source = "sidecar \(name)"
        let t = try printable(text, source)
        var pairs: [(String, MetaValue)]? = nil
        var prefix = "sidecar.\(ext)"
        var media = "text/plain"
        if ext == "xml" || t.hasPrefix("<") {
            do { pairs = try Flatten.xml(t) } catch { throw MetadataError(source: source, message: error.message) }
            media = "application/xml"
        } else if let j = Flatten.jeolText(t) {
            pairs = j; prefix = "jeol"
        } else {
            pairs = Flatten.ini(t) ?? Flatten.keyValueLines(t)
        }
        guard let pairs, !pairs.isEmpty else { return }
        md.merge(pairs, prefix: prefix); md.sources.append(prefix)
        md.blocks.append(.init(source: prefix, mediaType: media, text: t))
    }
}
