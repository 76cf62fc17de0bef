/// A path template such as `{proposal}/{sample}/{experiment}/{file}`: each segment matches one path
/// segment; `{name}` captures non-empty text, anything else must match literally. A path with a
/// different number of segments, or whose literals differ, does not fit — it is reported, not guessed.
public struct PathTemplate: Sendable, Hashable, CustomStringConvertible {
    public let template: String
    let segments: [[Piece]]
    public var fieldNames: [String] { segments.flatMap { $0.compactMap { if case .field(let n) = $0 { n } else { nil } } } }

    enum Piece: Sendable, Hashable { case literal(String), field(String) }

    public enum ParseError: Error, Equatable {
        case unbalancedBrace, emptyField, adjacentFields(String), duplicateField(String), badFieldName(String)
    }

    public init(_ template: String) throws(ParseError) {
        self.template = template
        var segs: [[Piece]] = []
        var seen = Set<String>()
        for seg in template.split(separator: "/", omittingEmptySubsequences: true) {
            var pieces: [Piece] = []
            var lit = ""
            var i = seg.startIndex
            while i < seg.endIndex {
                let c = seg[i]
                if c == "{" {
                    guard let close = seg[i...].firstIndex(of: "}") else { throw .unbalancedBrace }
                    let name = String(seg[seg.index(after: i)..<close])
                    guard !name.isEmpty else { throw .emptyField }
                    guard name.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "_" }) else { throw .badFieldName(name) }
                    guard seen.insert(name).inserted else { throw .duplicateField(name) }
                    if !lit.isEmpty { pieces.append(.literal(lit)); lit = "" }
                    if case .field(let prev)? = pieces.last { throw .adjacentFields("\(prev)}{\(name)") }
                    pieces.append(.field(name))
                    i = seg.index(after: close)
                } else if c == "}" {
                    throw .unbalancedBrace
                } else {
                    lit.append(c); i = seg.index(after: i)
                }
            }
            if !lit.isEmpty { pieces.append(.literal(lit)) }
            segs.append(pieces)
        }
        segments = segs
    }

    public var description: String { template }

    /// The captured fields, or nil when the path does not fit.
    public func match(_ relativePath: String) -> [String: String]? {
        let parts = relativePath.split(separator: "/", omittingEmptySubsequences: true)
        guard parts.count == segments.count else { return nil }
        var out: [String: String] = [:]
        for (pieces, part) in zip(segments, parts) {
            guard PathTemplate.match(pieces[...], part[...], into: &out) else { return nil }
        }
        return out
    }

    static func match(_ pieces: ArraySlice<Piece>, _ s: Substring, into out: inout [String: String]) -> Bool {
        guard let first = pieces.first else { return s.isEmpty }
        switch first {
        case .literal(let l):
            guard s.hasPrefix(l) else { return false }
            return match(pieces.dropFirst(), s.dropFirst(l.count), into: &out)
        case .field(let name):
            // Shortest capture that lets the rest match (fields are never adjacent).
            if s.isEmpty { return false }
            var end = s.index(after: s.startIndex)
            while true {
                var trial = out
                trial[name] = String(s[s.startIndex..<end])
                if match(pieces.dropFirst(), s[end...], into: &trial) { out = trial; return true }
                if end == s.endIndex { return false }
                end = s.index(after: end)
            }
        }
    }

    /// Fills the template's fields; nil when a field is missing.
    public func render(_ fields: [String: String]) -> String? {
        var parts: [String] = []
        for pieces in segments {
            var s = ""
            for p in pieces {
                switch p {
                case .literal(let l): s += l
                case .field(let n): guard let v = fields[n] else { return nil }; s += v
                }
            }
            parts.append(s)
        }
        return parts.joined(separator: "/")
    }
}
