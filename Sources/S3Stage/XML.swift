/// The little XML that S3 responses use: elements without attributes we need, no CDATA, the five
/// named entities and numeric references. Enough for ListObjectsV2, errors and multipart results,
/// without a general XML parser in the transfer path.
enum S3XML {
    /// The inner text of each `<name>…</name>` in order (not nested in itself).
    static func elements(_ xml: Substring, _ name: String) -> [Substring] {
        var out: [Substring] = []
        let open = "<\(name)>", close = "</\(name)>"
        var rest = xml[...]
        while let a = rest.range(of: open) {
            guard let b = rest[a.upperBound...].range(of: close) else { break }
            out.append(rest[a.upperBound..<b.lowerBound])
            rest = rest[b.upperBound...]
        }
        return out
    }

    static func value(_ xml: Substring, _ name: String) -> String? {
        let open = "<\(name)>"
        guard let a = xml.range(of: open) else {
            return xml.contains("<\(name)/>") ? "" : nil
        }
        guard let b = xml[a.upperBound...].range(of: "</\(name)>") else { return nil }
        return decode(xml[a.upperBound..<b.lowerBound])
    }

    static func decode(_ s: Substring) -> String {
        guard s.contains("&") else { return String(s) }
        var out = ""
        var i = s.startIndex
        while i < s.endIndex {
            if s[i] == "&", let semi = s[i...].firstIndex(of: ";"), s.distance(from: i, to: semi) <= 10 {
                let ent = s[s.index(after: i)..<semi]
                var rep: String? = nil
                switch ent {
                case "amp": rep = "&"
                case "lt": rep = "<"
                case "gt": rep = ">"
                case "quot": rep = "\""
                case "apos": rep = "'"
                default:
                    if ent.hasPrefix("#x"), let v = UInt32(ent.dropFirst(2), radix: 16), let u = Unicode.Scalar(v) { rep = String(Character(u)) }
                    else if ent.hasPrefix("#"), let v = UInt32(ent.dropFirst()), let u = Unicode.Scalar(v) { rep = String(Character(u)) }
                }
                if let rep { out += rep; i = s.index(after: semi); continue }
            }
            out.append(s[i])
            i = s.index(after: i)
        }
        return out
    }

    static func escape(_ s: String) -> String {
        var out = ""
        for c in s.unicodeScalars {
            switch c {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&apos;"
            default:
                if c.value < 0x20 { out += "&#\(c.value);" } else { out.unicodeScalars.append(c) }
            }
        }
        return out
    }
}

/// Percent-decoding for `encoding-type=url` listings.
func percentDecode(_ s: String) -> String {
    guard s.contains("%") || s.contains("+") else { return s }
    var bytes: [UInt8] = []
    var it = Array(s.utf8)[...]
    while let b = it.popFirst() {
        if b == UInt8(ascii: "%"), it.count >= 2, let v = UInt8(String(decoding: it.prefix(2), as: UTF8.self), radix: 16) {
            bytes.append(v); it = it.dropFirst(2)
        } else if b == UInt8(ascii: "+") {
            bytes.append(UInt8(ascii: " "))
        } else {
            bytes.append(b)
        }
    }
    return String(decoding: bytes, as: UTF8.self)
}
