/// A parameter value from a spec. Its canonical JSON (sorted keys, no spaces) is what task keys hash,
/// so two specs that say the same thing in different YAML styles give the same keys.
public indirect enum ParamValue: Sendable, Hashable, Codable, CustomStringConvertible {
    case string(String)
    case int(Int)
    case number(Double)
    case bool(Bool)
    case list([ParamValue])
    case map([String: ParamValue])
    case null

    public var stringValue: String? { if case .string(let s) = self { s } else { nil } }
    public var intValue: Int? { if case .int(let i) = self { i } else { nil } }
    public var boolValue: Bool? { if case .bool(let b) = self { b } else { nil } }
    public var doubleValue: Double? {
        switch self { case .number(let d): d; case .int(let i): Double(i); default: nil }
    }
    public var listValue: [ParamValue]? { if case .list(let l) = self { l } else { nil } }
    public var mapValue: [String: ParamValue]? { if case .map(let m) = self { m } else { nil } }

    public subscript(key: String) -> ParamValue? { mapValue?[key] }

    /// Scalars as text (for README context and templates).
    public var text: String? {
        switch self {
        case .string(let s): s
        case .int(let i): String(i)
        case .number(let d): String(d)
        case .bool(let b): String(b)
        default: nil
        }
    }

    public var canonicalJSON: String {
        switch self {
        case .string(let s): return ParamValue.quote(s)
        case .int(let i): return String(i)
        case .number(let d): return d.isFinite ? (d == d.rounded() && abs(d) < 1e15 ? String(Int64(d)) + ".0" : String(d)) : "null"
        case .bool(let b): return b ? "true" : "false"
        case .null: return "null"
        case .list(let l): return "[" + l.map(\.canonicalJSON).joined(separator: ",") + "]"
        case .map(let m):
            return "{" + m.keys.sorted().map { ParamValue.quote($0) + ":" + m[$0]!.canonicalJSON }.joined(separator: ",") + "}"
        }
    }

    public var description: String { canonicalJSON }

    public static func quote(_ s: String) -> String {
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if u.value < 0x20 { out += "\\u" + String(repeating: "0", count: 4 - String(u.value, radix: 16).count) + String(u.value, radix: 16) }
                else { out.unicodeScalars.append(u) }
            }
        }
        return out + "\""
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() { self = .null }
        else if let b = try? c.decode(Bool.self) { self = .bool(b) }
        else if let i = try? c.decode(Int.self) { self = .int(i) }
        else if let d = try? c.decode(Double.self) { self = .number(d) }
        else if let s = try? c.decode(String.self) { self = .string(s) }
        else if let l = try? c.decode([ParamValue].self) { self = .list(l) }
        else { self = .map(try c.decode([String: ParamValue].self)) }
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .string(let s): try c.encode(s)
        case .int(let i): try c.encode(i)
        case .number(let d): try c.encode(d)
        case .bool(let b): try c.encode(b)
        case .list(let l): try c.encode(l)
        case .map(let m): try c.encode(m)
        case .null: try c.encodeNil()
        }
    }
}

/// What a stage kind accepts under `with:`. The engine registers one per stage kind; the parser checks
/// specs against it so a typo is an error at its line, not a surprise at run time.
public struct ParameterSchema: Sendable {
    public enum FieldType: String, Sendable { case string, int, number, bool, stringList = "list of strings", map }

    public struct Field: Sendable {
        public var name: String
        public var type: FieldType
        public var required: Bool
        public var defaultValue: ParamValue?
        public var allowed: [String]?
        public var help: String
        public init(_ name: String, _ type: FieldType, required: Bool = false, default defaultValue: ParamValue? = nil,
                    allowed: [String]? = nil, help: String) {
            self.name = name; self.type = type; self.required = required; self.defaultValue = defaultValue
            self.allowed = allowed; self.help = help
        }
    }

    public var summary: String
    public var fields: [Field]
    public init(summary: String, fields: [Field]) { self.summary = summary; self.fields = fields }
}
