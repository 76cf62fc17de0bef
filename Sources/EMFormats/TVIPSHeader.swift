/// The TVIPS camera header (TIFF tag 37706), little-endian binary: a version-1 block of 32-bit
/// integers, followed for version 2 by the EM-MENU 4 block (UTF-16 strings, floats, a magic number
/// 0xAAAAAAAA at the end). Field names and order follow the layout published with tifffile
/// (`TVIPS_HEADER_V1`, `TVIPS_HEADER_V2`).
public enum TVIPSHeader {
    enum Kind { case i4, u4, f4, utf16, ascii, skip }
    struct FieldDef { let name: String; let kind: Kind; let count: Int }   // count: elements, or bytes for text/skip

    static func f(_ n: String, _ k: Kind, _ c: Int = 1) -> FieldDef { FieldDef(name: n, kind: k, count: c) }

    static let v1: [FieldDef] = [f("Version", .i4), f("CommentV1", .ascii, 80)] + [
        "HighTension", "SphericalAberration", "IlluminationAperture", "Magnification", "PostMagnification",
        "FocalLength", "Defocus", "Astigmatism", "AstigmatismDirection", "BiprismVoltage", "SpecimenTiltAngle",
        "SpecimenTiltDirection", "IlluminationTiltDirection", "IlluminationTiltAngle", "ImageMode", "EnergySpread",
        "ChromaticAberration", "ShutterType", "DefocusSpread", "CcdNumber", "CcdSize", "OffsetXV1", "OffsetYV1",
        "PhysicalPixelSize", "Binning", "ReadoutSpeed", "GainV1", "SensitivityV1", "ExposureTimeV1", "FlatCorrected",
        "DeadPxCorrected", "ImageMean", "ImageStd", "DisplacementX", "DisplacementY", "DateV1", "TimeV1", "ImageMin",
        "ImageMax", "ImageStatisticsQuality",
    ].map { f($0, .i4) }

    static let v2: [FieldDef] = [
        f("ImageName", .utf16, 160), f("ImageFolder", .utf16, 160), f("ImageSizeX", .u4), f("ImageSizeY", .u4),
        f("ImageSizeZ", .u4), f("ImageSizeE", .u4), f("ImageDataType", .u4), f("Date", .u4), f("Time", .u4),
        f("Comment", .utf16, 1024), f("ImageHistory", .utf16, 1024), f("Scaling", .f4, 16), f("ImageStatistics", .skip, 256),
        f("ImageType", .u4), f("ImageDisplaType", .u4), f("PixelSizeX", .f4), f("PixelSizeY", .f4),
        f("ImageDistanceZ", .f4), f("ImageDistanceE", .f4), f("ImageMisc", .f4, 32), f("TemType", .utf16, 160),
        f("TemHighTension", .f4), f("TemAberrations", .f4, 32), f("TemEnergy", .f4, 32), f("TemMode", .u4),
        f("TemMagnification", .f4), f("TemMagnificationCorrection", .f4), f("PostMagnification", .f4),
        f("TemStageType", .u4), f("TemStagePosition", .f4, 5), f("TemImageShift", .f4, 2), f("TemBeamShift", .f4, 2),
        f("TemBeamTilt", .f4, 2), f("TilingParameters", .f4, 7), f("TemIllumination", .f4, 3), f("TemShutter", .u4),
        f("TemMisc", .f4, 32), f("CameraType", .utf16, 160), f("PhysicalPixelSizeX", .f4), f("PhysicalPixelSizeY", .f4),
        f("OffsetX", .i4), f("OffsetY", .i4), f("BinningX", .i4), f("BinningY", .i4), f("ExposureTime", .f4),
        f("Gain", .f4), f("ReadoutRate", .f4), f("FlatfieldDescription", .utf16, 160), f("Sensitivity", .f4),
        f("Dose", .f4), f("CamMisc", .f4, 32), f("FeiMicroscopeInformation", .utf16, 1024),
        f("FeiSpecimenInformation", .utf16, 1024), f("Magic", .u4),
    ]

    static func size(_ defs: [FieldDef]) -> Int {
        defs.reduce(0) { $0 + (($1.kind == .utf16 || $1.kind == .ascii || $1.kind == .skip) ? $1.count : 4 * $1.count) }
    }
    public static var v1Size: Int { size(v1) }
    public static var v2Size: Int { size(v2) }
    public static let magic: UInt32 = 0xAAAA_AAAA

    public static func parse(_ bytes: [UInt8]) throws(MetadataError) -> [(String, MetaValue)] {
        func fail(_ m: String) -> MetadataError { MetadataError(source: "TVIPS tag 37706", message: m) }
        guard bytes.count >= v1Size else { throw fail("\(bytes.count) bytes, a TVIPS header has at least \(v1Size); the tag is damaged") }
        var out: [(String, MetaValue)] = []
        var off = 0
        decode(v1, bytes, &off, into: &out)
        guard case .int(let version)? = out.first?.1, version == 1 || version == 2 else {
            throw fail("unknown header version \(out.first?.1.text ?? "?") (1 or 2 expected); the tag is damaged or not TVIPS")
        }
        if version == 2 {
            guard bytes.count >= v1Size + v2Size else { throw fail("version 2 header truncated: \(bytes.count) of \(v1Size + v2Size) bytes") }
            decode(v2, bytes, &off, into: &out)
            if case .int(let m)? = out.last?.1, UInt32(truncatingIfNeeded: m) != magic {
                throw fail("bad magic number \(String(UInt32(truncatingIfNeeded: m), radix: 16)) (aaaaaaaa expected); the tag is damaged")
            }
            out.removeLast()
            // Date packs year<<16 | month<<8 | day; Time is seconds since midnight.
            if let d = out.first(where: { $0.0 == "Date" })?.1, case .int(let dv) = d, let t = out.first(where: { $0.0 == "Time" })?.1, case .int(let tv) = t {
                let y = dv >> 16, mo = (dv >> 8) & 0xFF, da = dv & 0xFF
                if (1990...2100).contains(y), (1...12).contains(mo), (1...31).contains(da), (0..<86400).contains(tv) {
                    func two(_ v: Int64) -> String { v < 10 ? "0\(v)" : "\(v)" }
                    out.append(("DateTime", .string("\(y)-\(two(mo))-\(two(da))T\(two(tv / 3600)):\(two(tv / 60 % 60)):\(two(tv % 60))")))
                }
            }
        }
        return out
    }

    static func decode(_ defs: [FieldDef], _ b: [UInt8], _ off: inout Int, into out: inout [(String, MetaValue)]) {
        func u32(_ o: Int) -> UInt32 { UInt32(b[o]) | UInt32(b[o + 1]) << 8 | UInt32(b[o + 2]) << 16 | UInt32(b[o + 3]) << 24 }
        for d in defs {
            switch d.kind {
            case .i4:
                let v = (0..<d.count).map { Int64(Int32(bitPattern: u32(off + 4 * $0))) }
                out.append((d.name, v.count == 1 ? .int(v[0]) : .numbers(v.map(Double.init))))
                off += 4 * d.count
            case .u4:
                let v = (0..<d.count).map { Int64(u32(off + 4 * $0)) }
                out.append((d.name, v.count == 1 ? .int(v[0]) : .numbers(v.map(Double.init))))
                off += 4 * d.count
            case .f4:
                let v = (0..<d.count).map { Double(Float(bitPattern: u32(off + 4 * $0))) }
                out.append((d.name, v.count == 1 ? .double(v[0]) : .numbers(v)))
                off += 4 * d.count
            case .utf16:
                var units: [UInt16] = []
                for i in stride(from: 0, to: d.count - 1, by: 2) {
                    let u = UInt16(b[off + i]) | UInt16(b[off + i + 1]) << 8
                    if u == 0 { break }
                    units.append(u)
                }
                let s = String(decoding: units, as: UTF16.self)
                if !s.isEmpty { out.append((d.name, .string(s))) }
                off += d.count
            case .ascii:
                let raw = b[off..<(off + d.count)].prefix { $0 != 0 }
                let s = String(decoding: raw, as: UTF8.self).trimmingCharacters(in: .whitespaces)
                if !s.isEmpty { out.append((d.name, .string(s))) }
                off += d.count
            case .skip:
                off += d.count
            }
        }
    }
}

import Foundation
