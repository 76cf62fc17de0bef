import Foundation
import Yams

/// What a mapping may write: NXem paths relative to the entry (infra/nxem-validator.md §4), each with
/// its kind. `calibration/*` are not NeXus fields: they calibrate the image axes.
public enum MappingTarget {
    public enum Kind: Sendable, Equatable {
        case quantity(Dimension)
        case text
        case datetime
        case choice([String])
    }

    static let ev = "measurement/event1/instrument"
    public static let all: [String: Kind] = [
        "start_time": .datetime, "end_time": .datetime,
        "measurement/event1/start_time": .datetime, "measurement/event1/end_time": .datetime,
        "sample/name": .text, "sample/description": .text, "sample/atom_types": .text,
        "sample/preparation_date": .datetime, "sample/thickness": .quantity(.length),
        "measurement/instrument/name": .text, "measurement/instrument/type": .choice(["sem", "fib", "tem"]),
        "measurement/instrument/fabrication/vendor": .text, "measurement/instrument/fabrication/model": .text,
        "measurement/instrument/fabrication/serial_number": .text,
        "measurement/instrument/ebeam_column/electron_source/emitter_type": .text,
        "measurement/instrument/program1/program": .text, "measurement/instrument/program1/program@version": .text,
        "measurement/instrument/detector1/name": .text, "measurement/instrument/detector1/type": .text,
        "\(ev)/ebeam_column/electron_source/voltage": .quantity(.voltage),
        "\(ev)/ebeam_column/electron_source/extraction_voltage": .quantity(.voltage),
        "\(ev)/ebeam_column/electron_source/emission_current": .quantity(.current),
        "\(ev)/ebeam_column/electron_source/filament_current": .quantity(.current),
        "\(ev)/ebeam_column/operation_mode": .text,
        "\(ev)/ebeam_column/scan_controller/dwell_time": .quantity(.time),
        "\(ev)/ebeam_column/scan_controller/scan_schema": .text,
        "\(ev)/optics/magnification": .quantity(.magnification),
        "\(ev)/optics/working_distance": .quantity(.length), "\(ev)/optics/field_of_view": .quantity(.length),
        "\(ev)/optics/camera_length": .quantity(.length), "\(ev)/optics/defocus": .quantity(.length),
        "\(ev)/optics/probe_current": .quantity(.current), "\(ev)/optics/semi_convergence_angle": .quantity(.angle),
        "\(ev)/stage/position/x": .quantity(.length), "\(ev)/stage/position/y": .quantity(.length),
        "\(ev)/stage/position/z": .quantity(.length),
        "\(ev)/stage/tilt1": .quantity(.angle), "\(ev)/stage/tilt2": .quantity(.angle), "\(ev)/stage/rotation": .quantity(.angle),
        "\(ev)/detector1/operation_mode": .text, "\(ev)/detector1/type": .text,
        "calibration/pixel_size_i": .quantity(.length), "calibration/pixel_size_j": .quantity(.length),
        "calibration/slice_spacing": .quantity(.length),
    ]
}

/// A value a mapping produced for a target: a number in SI, text, or a timezone-aware ISO 8601 time.
public enum MappedValue: Sendable, Equatable, Codable {
    case quantity(Double, unit: String?)
    case text(String)
    case datetime(String)

    public var number: Double? { if case .quantity(let v, _) = self { v } else { nil } }
    public var string: String? {
        switch self { case .text(let s), .datetime(let s): s; case .quantity: nil }
    }
}

/// The result of applying a mapping to one file's metadata.
public struct MappedMetadata: Sendable {
    public var values: [String: MappedValue] = [:]
    /// Source key → target path, for every source key a rule used.
    public var used: [String: String] = [:]
    public var warnings: [String] = []
    public init() {}
}

public struct MappingError: Error, CustomStringConvertible, Sendable {
    public let file: String
    public let line: Int
    public let column: Int
    public let message: String
    public var description: String { line > 0 ? "\(file):\(line):\(column): error: \(message)" : "\(file): \(message)" }
}

/// One instrument + detector mapping file (docs/mappings.md): which files it applies to and how
/// source keys land at NXem paths.
public struct MappingTable: Sendable {
    public struct Condition: Sendable {
        public var key: String
        public var equals: String?
        public var glob: String?
    }

    public struct Rule: Sendable {
        public var to: String
        public var from: [String]
        public var value: String?
        public var unit: String?
        public var parseQuantity = false
        public var scale: Double?
        public var index: Int?
        public var map: [String: String]?
        public var datetimeFormat: String?
        public var required = false
        /// `ratio`: the first source number divided by the second (e.g. FEI magnification = canvas width / HFW).
        public var ratio = false
        /// 1 / value (e.g. TIFF XResolution in pixels per unit → pixel size).
        public var reciprocal = false
        public var line: Int
    }

    public var name: String
    public var description: String
    public var file: String
    public var sha256: String
    /// The facility's own version of the mapping (`"version": "2"` or `3`), when it declares one; the
    /// catalog also knows each output's mapping by `sha256`.
    public var version: String?
    public var match: [Condition]
    public var timezone: String?
    public var rules: [Rule]

    // MARK: Loading

    static let topKeys = ["emflow_mapping", "name", "version", "description", "match", "timezone", "fields"]
    static let ruleKeys = ["to", "from", "value", "unit", "parse", "scale", "index", "map", "datetime", "required", "combine", "reciprocal", "note"]

    /// Parses and validates a mapping; every problem names the line. `sha256` is the file content's hash.
    public static func parse(text: String, file: String, sha256: String) throws(MappingError) -> MappingTable {
        func fail(_ n: Node?, _ m: String) -> MappingError {
            MappingError(file: file, line: n?.mark?.line ?? 0, column: n?.mark?.column ?? 0, message: m)
        }
        let root: Node
        do {
            guard let r = try Yams.compose(yaml: text) else { throw fail(nil, "the mapping file is empty") }
            root = r
        } catch let e as MappingError { throw e } catch let e as YamlError {
            if case let .scanner(_, problem, mark, _) = e { throw MappingError(file: file, line: mark.line, column: mark.column, message: "not valid JSON: \(problem)") }
            if case let .parser(_, problem, mark, _) = e { throw MappingError(file: file, line: mark.line, column: mark.column, message: "not valid JSON: \(problem)") }
            throw fail(nil, "not valid JSON: \(e)")
        } catch { throw fail(nil, "not valid JSON: \(error)") }
        guard case .mapping(let top) = root else { throw fail(root, "a mapping is a JSON object with name, match and fields") }
        for (k, _) in top where !topKeys.contains(k.string ?? "") {
            throw fail(k, "unknown key '\(k.string ?? "")' (known: \(topKeys.joined(separator: ", ")))")
        }
        guard let version = top["emflow_mapping"], version.int == 1 else {
            throw fail(top["emflow_mapping"] ?? root, "\"emflow_mapping\": 1 is required (the mapping format version)")
        }
        guard let nameNode = top["name"], let name = nameNode.string, !name.isEmpty else { throw fail(root, "\"name\" (text) is required") }
        var conditions: [Condition] = []
        if let m = top["match"] {
            guard case .sequence(let list) = m else { throw fail(m, "\"match\" is a list of {\"key\": ..., \"equals\"/\"glob\": ...}") }
            for c in list {
                guard case .mapping(let cm) = c, let key = cm["key"]?.string else { throw fail(c, "a match condition needs \"key\"") }
                for (k, _) in cm where !["key", "equals", "glob"].contains(k.string ?? "") {
                    throw fail(k, "unknown key '\(k.string ?? "")' in a match condition (key, equals, glob)")
                }
                conditions.append(Condition(key: key, equals: cm["equals"]?.string, glob: cm["glob"]?.string))
            }
        }
        var declared: String?
        if let v = top["version"] {
            guard case .scalar(let sc) = v, !sc.string.isEmpty else {
                throw fail(v, "\"version\" is the mapping's own version, a number or text such as \"2\" or \"2026-11\"")
            }
            declared = sc.string
        }
        var tz: String?
        if let t = top["timezone"] {
            guard let s = t.string, TimeZone(identifier: s) != nil else { throw fail(t, "unknown timezone '\(t.string ?? "")' (an IANA name such as Europe/Rome)") }
            tz = s
        }
        guard let fieldsNode = top["fields"], case .sequence(let fields) = fieldsNode else {
            throw fail(top["fields"] ?? root, "\"fields\" (a list of rules) is required")
        }
        var rules: [Rule] = []
        for f in fields {
            guard case .mapping(let fm) = f else { throw fail(f, "each field rule is an object with \"to\" and \"from\" or \"value\"") }
            for (k, _) in fm where !ruleKeys.contains(k.string ?? "") {
                let near = ruleKeys.min { editDistance($0, k.string ?? "") < editDistance($1, k.string ?? "") } ?? ""
                throw fail(k, "unknown key '\(k.string ?? "")' in a field rule (did you mean '\(near)'?)")
            }
            guard let toNode = fm["to"], let to = toNode.string else { throw fail(f, "a field rule needs \"to\" (an NXem path)") }
            guard let kind = MappingTarget.all[to] else {
                let near = MappingTarget.all.keys.min { editDistance($0, to) < editDistance($1, to) } ?? ""
                throw fail(toNode, "'\(to)' is not a target emflow writes (did you mean '\(near)'? the list is in docs/mappings.md)")
            }
            var r = Rule(to: to, from: [], line: toNode.mark?.line ?? 0)
            if let fr = fm["from"] {
                if let s = fr.string { r.from = [s] }
                else if case .sequence(let l) = fr, l.allSatisfy({ $0.string != nil }), !l.isEmpty { r.from = l.compactMap(\.string) }
                else { throw fail(fr, "\"from\" is a source key or a list of keys (joined with a space)") }
            }
            if let v = fm["value"] { r.value = v.string }
            guard r.from.isEmpty != (r.value == nil) else { throw fail(f, "a field rule needs exactly one of \"from\" and \"value\"") }
            if let u = fm["unit"] { r.unit = u.string }
            if let p = fm["parse"] {
                guard p.string == "quantity" else { throw fail(p, "\"parse\" supports \"quantity\" (a number followed by its unit, e.g. \"5.00 kV\")") }
                r.parseQuantity = true
            }
            if let s = fm["scale"] { guard let d = s.float else { throw fail(s, "\"scale\" is a number") }; r.scale = d }
            if let i = fm["index"] { guard let n = i.int, n >= 0 else { throw fail(i, "\"index\" is a non-negative integer") }; r.index = n }
            if let m = fm["map"] {
                guard case .mapping(let mm) = m else { throw fail(m, "\"map\" is an object from source value to target value") }
                var d: [String: String] = [:]
                for (k, v) in mm { d[k.string ?? ""] = v.string ?? "" }
                r.map = d
            }
            if let d = fm["datetime"] { r.datetimeFormat = d.string }
            if let q = fm["required"] { r.required = q.bool ?? false }
            if let c = fm["combine"] {
                guard c.string == "ratio", r.from.count == 2 else { throw fail(c, "\"combine\": \"ratio\" divides the first of two \"from\" keys by the second") }
                r.ratio = true
            }
            if let q = fm["reciprocal"] { r.reciprocal = q.bool ?? false }
            // Rules must say enough to produce the target's kind.
            switch kind {
            case .quantity(let dim):
                if r.parseQuantity {
                    if r.unit != nil { throw fail(fm["unit"], "\"unit\" and \"parse\": \"quantity\" exclude each other: the unit comes from the value") }
                } else if let u = r.unit {
                    do { _ = try Units.toSI(1, unit: u, expecting: dim) } catch { throw fail(fm["unit"], "\(error.message) for \(to)") }
                } else if dim != .magnification && r.map == nil {
                    throw fail(toNode, "\(to) is a \(dim.rawValue): give the source \"unit\" (e.g. \"\(dim.siUnit ?? "")\") or \"parse\": \"quantity\"")
                }
                if r.datetimeFormat != nil { throw fail(fm["datetime"], "\"datetime\" is only for time stamps, not \(to)") }
            case .datetime:
                if r.datetimeFormat == nil { throw fail(toNode, "\(to) is a time stamp: give \"datetime\": \"iso\" or a pattern such as \"MM/dd/yyyy hh:mm:ss a\"") }
            case .text, .choice:
                if r.unit != nil || r.parseQuantity || r.scale != nil { throw fail(toNode, "\(to) is text: no \"unit\", \"parse\" or \"scale\"") }
            }
            if case .choice(let allowed) = kind {
                let outs = r.value.map { [$0] } ?? Array((r.map ?? [:]).values)
                if let bad = outs.first(where: { !allowed.contains($0) }) { throw fail(toNode, "\(to) must be one of \(allowed.joined(separator: ", ")), not '\(bad)'") }
            }
            // Several rules for one target are alternatives, tried in order (see apply).
            rules.append(r)
        }
        return MappingTable(name: name, description: top["description"]?.string ?? "", file: file, sha256: sha256,
                            version: declared, match: conditions, timezone: tz, rules: rules)
    }

    /// Levenshtein distance, for "did you mean" suggestions (mapping keys, selection keys).
    public static func editDistance(_ a: String, _ b: String) -> Int {
        let a = Array(a), b = Array(b)
        if a.isEmpty || b.isEmpty { return max(a.count, b.count) }
        var prev = Array(0...b.count)
        for i in 1...a.count {
            var cur = [i] + Array(repeating: 0, count: b.count)
            for j in 1...b.count { cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)) }
            prev = cur
        }
        return prev[b.count]
    }

    // MARK: Matching

    /// How well the table fits the metadata: the number of conditions met, or nil if one fails.
    public func score(_ md: SourceMetadata) -> Int? {
        guard !match.isEmpty else { return nil }
        for c in match {
            guard let v = md[c.key] else { return nil }
            if let e = c.equals, v.text != e { return nil }
            if let g = c.glob, !Self.globMatch(g, v.text) { return nil }
        }
        return match.count
    }

    static func globMatch(_ pattern: String, _ text: String) -> Bool {
        fnmatch(pattern, text, 0) == 0
    }

    // MARK: Applying

    public struct ApplyError: Error, CustomStringConvertible, Sendable {
        public let message: String
        public var description: String { message }
    }

    /// Maps `md`. A rule whose source keys are absent is skipped (an error if `required`); a value that
    /// cannot be converted (unknown unit, unparsable time) is an error naming the key and the rule's line.
    public func apply(to md: SourceMetadata, defaultTimezone: String) throws(ApplyError) -> MappedMetadata {
        var out = MappedMetadata()
        for r in rules where out.values[r.to] == nil {
            var raw: MetaValue
            var keys: [String] = []
            if let v = r.value {
                raw = .string(v)
            } else {
                var parts: [MetaValue] = []
                for pattern in r.from {
                    let key = pattern.contains("*") ? md.keys.first { Self.globMatch(pattern, $0) } : (md[pattern] != nil ? pattern : nil)
                    guard let key, let v = md[key] else { break }
                    keys.append(key); parts.append(v)
                }
                guard parts.count == r.from.count else {
                    if r.required { throw ApplyError(message: "mapping \(name) (\(file):\(r.line)): required key \(r.from.joined(separator: " + ")) is missing") }
                    continue
                }
                if r.ratio {
                    guard let a = parts[0].doubleValue, let b = parts[1].doubleValue, b != 0 else {
                        throw ApplyError(message: "mapping \(name) (\(file):\(r.line)): \(keys.joined(separator: " / ")) is not a ratio of two numbers")
                    }
                    raw = .double(a / b)
                } else {
                    raw = parts.count == 1 ? parts[0] : .string(parts.map(\.text).joined(separator: " "))
                }
            }
            if let i = r.index {
                guard case .numbers(let a) = raw, i < a.count else {
                    throw ApplyError(message: "mapping \(name) (\(file):\(r.line)): \(keys.joined()) has no element \(i)")
                }
                raw = .double(a[i])
            }
            let where_ = "mapping \(name) (\(file):\(r.line)), key \(keys.isEmpty ? "(constant)" : keys.joined(separator: " + "))"
            if let m = r.map {
                guard let mapped = m[raw.text] ?? m["*"] else {
                    throw ApplyError(message: "\(where_): value '\(raw.text)' is not in the rule's map (\(m.keys.sorted().joined(separator: ", "))); add it to the mapping")
                }
                raw = .string(mapped)
            }
            let value: MappedValue
            switch MappingTarget.all[r.to]! {
            case .text, .choice:
                value = .text(raw.text)
            case .datetime:
                guard let iso = Self.isoDate(raw.text, format: r.datetimeFormat ?? "iso", timezone: timezone ?? defaultTimezone) else {
                    throw ApplyError(message: "\(where_): '\(raw.text)' is not a time of the form '\(r.datetimeFormat ?? "iso")'")
                }
                value = .datetime(iso)
            case .quantity(let dim):
                var number: Double
                var unit = r.unit
                if r.parseQuantity {
                    guard let (v, u) = Units.splitQuantity(raw.text) else {
                        throw ApplyError(message: "\(where_): '\(raw.text)' is not a number with a unit")
                    }
                    number = v; unit = u.isEmpty ? nil : u
                } else {
                    guard let v = raw.doubleValue else { throw ApplyError(message: "\(where_): '\(raw.text)' is not a number") }
                    number = v
                }
                if r.reciprocal {
                    guard number != 0 else { throw ApplyError(message: "\(where_): 1/0 for a reciprocal") }
                    number = 1 / number
                }
                if let s = r.scale { number *= s }
                if let u = unit {
                    do { number = try Units.toSI(number, unit: u, expecting: dim) } catch {
                        throw ApplyError(message: "\(where_): \(error.message)")
                    }
                } else if dim != .magnification {
                    throw ApplyError(message: "\(where_): '\(raw.text)' has no unit for a \(dim.rawValue)")
                }
                guard number.isFinite else { throw ApplyError(message: "\(where_): '\(raw.text)' is not a finite number") }
                value = .quantity(number, unit: dim.siUnit)
            }
            out.values[r.to] = value
            for k in keys { out.used[k] = r.to }
        }
        return out
    }

    static func explicitOffset(_ s: String) -> Int? {
        if s.hasSuffix("Z") { return 0 }
        let tail = s.suffix(6)
        guard tail.count == 6, let sign = tail.first, sign == "+" || sign == "-", tail.dropFirst(3).first == ":",
              let h = Int(tail.dropFirst().prefix(2)), let m = Int(tail.suffix(2)), s.contains("T") || s.contains(" ") else { return nil }
        return (sign == "-" ? -1 : 1) * (h * 3600 + m * 60)
    }

    /// A time stamp as ISO 8601 with an offset. Times without a zone are taken in `timezone`.
    public static func isoDate(_ text: String, format: String, timezone: String) -> String? {
        let tz = TimeZone(identifier: timezone) ?? TimeZone(identifier: "UTC")!
        let s = text.trimmingCharacters(in: .whitespaces)
        var date: Date?
        if format == "iso" {
            let withZone = ISO8601DateFormatter()
            withZone.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
            date = withZone.date(from: s)
            if date == nil { withZone.formatOptions = [.withInternetDateTime]; date = withZone.date(from: s) }
            if date == nil {
                for f in ["yyyy-MM-dd'T'HH:mm:ss.SSSSSS", "yyyy-MM-dd'T'HH:mm:ss.SSS", "yyyy-MM-dd'T'HH:mm:ss", "yyyy-MM-dd HH:mm:ss", "yyyy:MM:dd HH:mm:ss"] {
                    let df = DateFormatter(); df.locale = Locale(identifier: "en_US_POSIX"); df.timeZone = tz; df.dateFormat = f
                    if let d = df.date(from: s) { date = d; break }
                }
            }
        } else {
            let df = DateFormatter(); df.locale = Locale(identifier: "en_US_POSIX"); df.timeZone = tz; df.dateFormat = format
            date = df.date(from: s)
        }
        guard let date else { return nil }
        let out = DateFormatter(); out.locale = Locale(identifier: "en_US_POSIX")
        // An offset written in the source is kept as written; others get the given zone's offset.
        out.timeZone = explicitOffset(s).flatMap { TimeZone(secondsFromGMT: $0) } ?? tz
        out.dateFormat = "yyyy-MM-dd'T'HH:mm:ssxxxxx"
        return out.string(from: date)
    }
}

#if canImport(Glibc)
import Glibc
#endif
