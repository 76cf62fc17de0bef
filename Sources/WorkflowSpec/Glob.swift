/// A shell-style glob over relative paths: `*` and `?` stay within one path segment, `**` spans any
/// number of segments (including none), `[abc]`/`[a-z]`/`[!x]` are character classes and `{a,b}`
/// alternatives. Patterns without a `/` match the file name at any depth, as `.gitignore` does.
public struct Glob: Sendable, Hashable, CustomStringConvertible {
    public let pattern: String
    private let alternatives: [[String]]

    public enum ParseError: Error, Equatable { case unbalanced(Character), emptyPattern, emptyAlternative }

    public init(_ pattern: String) throws(ParseError) {
        guard !pattern.isEmpty else { throw .emptyPattern }
        self.pattern = pattern
        let expanded = try Glob.expandBraces(pattern)
        alternatives = try expanded.map { (p) throws(ParseError) -> [String] in
            var segs = p.split(separator: "/", omittingEmptySubsequences: true).map(String.init)
            if !p.contains("/") { segs = ["**"] + segs }
            for s in segs where s != "**" { try Glob.checkClasses(s) }
            return segs
        }
    }

    public var description: String { pattern }

    public func matches(_ relativePath: String) -> Bool {
        let parts = relativePath.split(separator: "/", omittingEmptySubsequences: true).map { Array($0.utf8) }
        for alt in alternatives {
            let segs = alt.map { Array($0.utf8) }
            if Glob.matchSegments(segs[...], parts[...]) { return true }
        }
        return false
    }

    static func matchSegments(_ pat: ArraySlice<[UInt8]>, _ path: ArraySlice<[UInt8]>) -> Bool {
        guard let first = pat.first else { return path.isEmpty }
        if first == Array("**".utf8) {
            let rest = pat.dropFirst()
            var p = path
            while true {
                if matchSegments(rest, p) { return true }
                if p.isEmpty { return false }
                p = p.dropFirst()
            }
        }
        guard let seg = path.first, matchSegment(first[...], seg[...]) else { return false }
        return matchSegments(pat.dropFirst(), path.dropFirst())
    }

    static func matchSegment(_ p: ArraySlice<UInt8>, _ s: ArraySlice<UInt8>) -> Bool {
        var p = p, s = s
        // Iterative matcher with one backtrack point for `*` (linear for typical patterns).
        var starP: ArraySlice<UInt8>? = nil, starS: ArraySlice<UInt8> = s
        while true {
            if let c = p.first {
                if c == UInt8(ascii: "*") { starP = p.dropFirst(); starS = s; p = p.dropFirst(); continue }
                if let sc = s.first {
                    if c == UInt8(ascii: "?") { p = p.dropFirst(); s = s.dropFirst(); continue }
                    if c == UInt8(ascii: "[") , let (ok, rest) = matchClass(p, sc) {
                        if ok { p = rest; s = s.dropFirst(); continue }
                    } else if c == UInt8(ascii: "\\"), p.count > 1, p[p.startIndex + 1] == sc {
                        p = p.dropFirst(2); s = s.dropFirst(); continue
                    } else if c == sc { p = p.dropFirst(); s = s.dropFirst(); continue }
                }
            } else if s.isEmpty { return true }
            guard let sp = starP, !starS.isEmpty else { return false }
            starS = starS.dropFirst(); s = starS; p = sp
        }
    }

    /// Matches a `[...]` class at the start of `p` against `c`; returns the rest of the pattern.
    static func matchClass(_ p: ArraySlice<UInt8>, _ c: UInt8) -> (Bool, ArraySlice<UInt8>)? {
        var i = p.index(after: p.startIndex)
        var negate = false
        if i < p.endIndex, p[i] == UInt8(ascii: "!") || p[i] == UInt8(ascii: "^") { negate = true; i += 1 }
        var matched = false
        var first = true
        while i < p.endIndex {
            let ch = p[i]
            if ch == UInt8(ascii: "]") && !first { return (matched != negate, p[(i + 1)...]) }
            first = false
            if i + 2 < p.endIndex, p[i + 1] == UInt8(ascii: "-"), p[i + 2] != UInt8(ascii: "]") {
                if c >= ch && c <= p[i + 2] { matched = true }
                i += 3
            } else {
                if c == ch { matched = true }
                i += 1
            }
        }
        return nil
    }

    static func checkClasses(_ seg: String) throws(ParseError) {
        let b = Array(seg.utf8)
        var i = 0
        while i < b.count {
            if b[i] == UInt8(ascii: "\\") { i += 2; continue }
            if b[i] == UInt8(ascii: "[") {
                var j = i + 1
                if j < b.count && (b[j] == UInt8(ascii: "!") || b[j] == UInt8(ascii: "^")) { j += 1 }
                if j < b.count && b[j] == UInt8(ascii: "]") { j += 1 }
                while j < b.count && b[j] != UInt8(ascii: "]") { j += 1 }
                if j >= b.count { throw .unbalanced("[") }
                i = j + 1; continue
            }
            if b[i] == UInt8(ascii: "]") { throw .unbalanced("]") }
            i += 1
        }
    }

    static func expandBraces(_ p: String) throws(ParseError) -> [String] {
        let chars = Array(p)
        var depth = 0, open = -1
        for (i, ch) in chars.enumerated() {
            if ch == "{" { if depth == 0 { open = i }; depth += 1 }
            else if ch == "}" {
                depth -= 1
                if depth < 0 { throw .unbalanced("}") }
                if depth == 0 {
                    let prefix = String(chars[..<open]), suffix = String(chars[(i + 1)...])
                    var options: [String] = [], cur = "", d = 0
                    for c in chars[(open + 1)..<i] {
                        if c == "{" { d += 1 } else if c == "}" { d -= 1 }
                        if c == "," && d == 0 { options.append(cur); cur = "" } else { cur.append(c) }
                    }
                    options.append(cur)
                    if options.contains(where: \.isEmpty) && options.count > 1 && options.allSatisfy(\.isEmpty) { throw .emptyAlternative }
                    var out: [String] = []
                    for o in options { out += try expandBraces(prefix + o + suffix) }
                    return out
                }
            }
        }
        if depth != 0 { throw .unbalanced("{") }
        return [p]
    }
}
