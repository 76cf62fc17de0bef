import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif
import Yams

/// A typed metadata value as the source wrote it.
public enum MetaValue: Sendable, Equatable, Codable, CustomStringConvertible {
    case int(Int64)
    case double(Double)
    case bool(Bool)
    case string(String)
    case numbers([Double])

    public var description: String {
        switch self {
        case .int(let v): "\(v)"
        case .double(let v): "\(v)"
        case .bool(let v): v ? "true" : "false"
        case .string(let s): s
        case .numbers(let a): a.map { "\($0)" }.joined(separator: " ")
        }
    }

    public var doubleValue: Double? {
        switch self {
        case .int(let v): Double(v)
        case .double(let v): v
        case .string(let s): Double(s.trimmingCharacters(in: .whitespaces))
        default: nil
        }
    }

    /// Text as written: numbers in their shortest form.
    public var text: String { description }

    /// A value from text: integers and decimals become numbers, everything else stays text.
    public static func parse(_ raw: String) -> MetaValue {
        let s = raw.trimmingCharacters(in: .whitespaces)
        if let i = Int64(s) { return .int(i) }
        if !s.isEmpty, s.first != "+", let d = Double(s), d.isFinite,
           s.allSatisfy({ $0.isASCII && ($0.isNumber || "+-.eE".contains($0)) }) { return .double(d) }
        return .string(s)
    }
}

/// A block of metadata as the file holds it (kept verbatim in the NeXus file).
public struct MetadataBlock: Sendable, Equatable {
    public var source: String       // "fei", "description", "sidecar.hdr", ...
    public var mediaType: String    // text/plain, application/json, application/xml, application/octet-stream
    public var text: String
}

/// Flattened metadata: dotted keys (`fei.Beam.HV`) with typed values, in the order found.
public struct SourceMetadata: Sendable {
    public private(set) var keys: [String] = []
    public private(set) var values: [String: MetaValue] = [:]
    public var blocks: [MetadataBlock] = []
    /// Which sources were found: tiff, description, imagej, ome, fei, zeiss, tvips, tescan, jeol, sidecar.*.
    public var sources: [String] = []
    public init() {}

    public subscript(key: String) -> MetaValue? { values[key] }

    public mutating func set(_ key: String, _ value: MetaValue) {
        if values.updateValue(value, forKey: key) == nil { keys.append(key) }
    }

    public mutating func merge(_ pairs: [(String, MetaValue)], prefix: String) {
        for (k, v) in pairs { set(prefix + "." + k, v) }
    }
}

/// Why a metadata block could not be read.
public struct MetadataError: Error, CustomStringConvertible, Sendable {
    public let source: String
    public let message: String
    public var description: String { "\(source): \(message)" }
}

/// Parsers from vendor layouts to flat (key, value) pairs. Pure functions of their input; none traps
/// on malformed input (they are fuzzed).
public enum Flatten {
    // MARK: JSON

    /// Nested objects become dotted keys, arrays of numbers stay arrays, other arrays get `.0`, `.1`.
    /// Strings stay strings (even "15000"): JSON already says what is a number.
    public static func json(_ text: String) throws(MetadataError) -> [(String, MetaValue)] {
        let node: Node
        do {
            guard let n = try Yams.compose(yaml: text) else { return [] }
            node = n
        } catch let e as YamlError {
            throw MetadataError(source: "JSON", message: "not valid JSON: \(Self.describe(e))")
        } catch {
            throw MetadataError(source: "JSON", message: "not valid JSON: \(error)")
        }
        var out: [(String, MetaValue)] = []
        walkJSON(node, prefix: "", into: &out)
        return out
    }

    static func describe(_ e: YamlError) -> String {
        switch e {
        case let .scanner(_, problem, mark, _), let .parser(_, problem, mark, _), let .composer(_, problem, mark, _):
            return "\(problem) at line \(mark.line), column \(mark.column)"
        default: return "\(e)"
        }
    }

    static func walkJSON(_ node: Node, prefix: String, into out: inout [(String, MetaValue)]) {
        func key(_ k: String) -> String { prefix.isEmpty ? k : prefix + "." + k }
        switch node {
        case .mapping(let m):
            for (k, v) in m { walkJSON(v, prefix: key(k.string ?? "?"), into: &out) }
        case .sequence(let s):
            let nums = s.compactMap { n -> Double? in
                guard case .scalar(let sc) = n, sc.style == .plain else { return nil }
                return Double(sc.string)
            }
            if nums.count == s.count && !s.isEmpty { out.append((prefix, .numbers(nums))); return }
            for (i, v) in s.enumerated() { walkJSON(v, prefix: key(String(i)), into: &out) }
        case .scalar(let sc):
            if sc.style != .plain { out.append((prefix, .string(sc.string))); return }
            switch sc.string {
            case "true": out.append((prefix, .bool(true)))
            case "false": out.append((prefix, .bool(false)))
            case "null": out.append((prefix, .string("")))
            default: out.append((prefix, MetaValue.parse(sc.string)))
            }
        case .alias:
            break
        }
    }

    // MARK: INI and key=value

    /// `[Section]` headers and `key=value` lines → `Section.key`. Comments (`;`, `#`) and blank lines
    /// are skipped. Returns nil when the text has no `[Section]` header.
    public static func ini(_ text: String) -> [(String, MetaValue)]? {
        var section: String?
        var out: [(String, MetaValue)] = []
        var sawSection = false
        for raw in lines(text) {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.isEmpty || line.hasPrefix(";") || line.hasPrefix("#") { continue }
            if line.hasPrefix("["), line.hasSuffix("]"), line.count >= 3 {
                section = String(line.dropFirst().dropLast()).trimmingCharacters(in: .whitespaces)
                sawSection = true
                continue
            }
            guard let eq = line.firstIndex(of: "=") else { continue }
            let k = line[..<eq].trimmingCharacters(in: .whitespaces)
            guard !k.isEmpty else { continue }
            let v = line[line.index(after: eq)...].trimmingCharacters(in: .whitespaces)
            out.append(((section.map { $0 + "." } ?? "") + k, MetaValue.parse(v)))
        }
        return sawSection ? out : nil
    }

    /// `key=value` or `key: value` lines (ImageJ, simple camera headers). Nil if no line has either.
    public static func keyValueLines(_ text: String) -> [(String, MetaValue)]? {
        var out: [(String, MetaValue)] = []
        for raw in lines(text) {
            let line = raw.trimmingCharacters(in: .whitespaces)
            guard let sep = line.firstIndex(where: { $0 == "=" || $0 == ":" }) else { continue }
            let k = line[..<sep].trimmingCharacters(in: .whitespaces)
            guard !k.isEmpty, !k.contains(" ") || k.count < 40 else { continue }
            out.append((k, MetaValue.parse(String(line[line.index(after: sep)...]))))
        }
        return out.isEmpty ? nil : out
    }

    static func lines(_ text: String) -> [Substring] {
        text.split(omittingEmptySubsequences: true, whereSeparator: { $0 == "\n" || $0 == "\r" || $0 == "\r\n" })
    }

    // MARK: Zeiss SmartSEM (tag 34118)

    /// Zeiss writes label/value pairs on alternate lines: `AP_MAG` then `Mag = 5.00 K X`. Values keep
    /// their units as text; mappings parse them. Keys are the `AP_`/`DP_`/`SV_` labels.
    public static func zeissSEM(_ text: String) throws(MetadataError) -> [(String, MetaValue)] {
        var out: [(String, MetaValue)] = []
        var label: String?
        for raw in lines(text) {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if isZeissLabel(line) { label = line; continue }
            guard let l = label else { continue }
            label = nil
            // "Name = value" or "Name :value" (dates).
            if let sep = line.firstIndex(where: { $0 == "=" || $0 == ":" }) {
                let name = line[..<sep].trimmingCharacters(in: .whitespaces)
                let v = line[line.index(after: sep)...].trimmingCharacters(in: .whitespaces)
                out.append((l, MetaValue.parse(v)))
                if !name.isEmpty { out.append((l + ".name", .string(name))) }
            } else {
                out.append((l, MetaValue.parse(line)))
            }
        }
        guard !out.isEmpty else {
            throw MetadataError(source: "Zeiss tag 34118", message: "no AP_/DP_ label/value pairs; the tag is damaged or not Zeiss SmartSEM metadata")
        }
        return out
    }

    static func isZeissLabel(_ s: String) -> Bool {
        (s.hasPrefix("AP_") || s.hasPrefix("DP_") || s.hasPrefix("SV_")) && s.count > 3 &&
            s.allSatisfy { $0.isASCII && ($0.isUppercase || $0.isNumber || $0 == "_") }
    }

    // MARK: JEOL text sidecar

    /// `$CM_ACCEL_VOLT 15.0` lines (JEOL SEM .txt). `$$` lines too. Keys lose the `$`s.
    public static func jeolText(_ text: String) -> [(String, MetaValue)]? {
        var out: [(String, MetaValue)] = []
        for raw in lines(text) {
            let line = raw.trimmingCharacters(in: .whitespaces)
            guard line.hasPrefix("$") else { continue }
            let body = line.drop { $0 == "$" }
            let parts = body.split(separator: " ", maxSplits: 1)
            guard let k = parts.first, !k.isEmpty else { continue }
            out.append((String(k), MetaValue.parse(parts.count > 1 ? String(parts[1]) : "")))
        }
        return out.isEmpty ? nil : out
    }

    // MARK: XML (OME, JEOL, generic)

    /// Elements become dotted paths, attributes `path.attr`, text `path`. A repeated element gets
    /// `#2`, `#3`... from its second occurrence on.
    public static func xml(_ text: String) throws(MetadataError) -> [(String, MetaValue)] {
        let delegate = XMLFlattener()
        let parser = XMLParser(data: Data(text.utf8))
        parser.delegate = delegate
        parser.shouldResolveExternalEntities = false
        guard parser.parse() else {
            let e = parser.parserError.map { "\($0.localizedDescription)" } ?? "parse error"
            throw MetadataError(source: "XML", message: "not well-formed XML at line \(parser.lineNumber), column \(parser.columnNumber): \(e)")
        }
        return delegate.out
    }

    final class XMLFlattener: NSObject, XMLParserDelegate {
        var out: [(String, MetaValue)] = []
        var stack: [String] = []
        var seen: [[String: Int]] = [[:]]
        var text = ""

        func parser(_ parser: XMLParser, didStartElement name: String, namespaceURI: String?, qualifiedName: String?, attributes: [String: String] = [:]) {
            let local = name.split(separator: ":").last.map(String.init) ?? name
            let n = (seen[seen.count - 1][local] ?? 0) + 1
            seen[seen.count - 1][local] = n
            stack.append(n == 1 ? local : "\(local)#\(n)")
            seen.append([:])
            text = ""
            let path = stack.joined(separator: ".")
            for (k, v) in attributes.sorted(by: { $0.key < $1.key }) where !k.hasPrefix("xmlns") {
                out.append((path + "." + (k.split(separator: ":").last.map(String.init) ?? k), MetaValue.parse(v)))
            }
        }

        func parser(_ parser: XMLParser, foundCharacters string: String) { text += string }

        func parser(_ parser: XMLParser, didEndElement name: String, namespaceURI: String?, qualifiedName: String?) {
            let t = text.trimmingCharacters(in: .whitespacesAndNewlines)
            if !t.isEmpty { out.append((stack.joined(separator: "."), MetaValue.parse(t))) }
            text = ""
            if !stack.isEmpty { stack.removeLast() }
            if seen.count > 1 { seen.removeLast() }
        }
    }
}
