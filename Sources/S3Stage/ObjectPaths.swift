/// `s3://bucket/key-or-prefix`
public struct S3URI: Sendable, Hashable, CustomStringConvertible {
    public var bucket: String
    public var key: String

    public init(bucket: String, key: String) { self.bucket = bucket; self.key = key }

    public init?(_ text: String) {
        guard text.hasPrefix("s3://") else { return nil }
        let rest = text.dropFirst(5)
        let bucket = rest.prefix { $0 != "/" }
        guard !bucket.isEmpty else { return nil }
        self.bucket = String(bucket)
        self.key = String(rest.dropFirst(bucket.count + 1))
    }

    public var description: String { "s3://\(bucket)/\(key)" }
}

/// Object keys as relative file paths. A key is an arbitrary string; a path on CephFS is not, so keys
/// that could escape the destination or that no file system can hold are refused, one by one, with
/// the reason (the other objects go on).
public enum ObjectPaths {
    public struct Refusal: Error, CustomStringConvertible, Sendable {
        public var key: String
        public var reason: String
        public var description: String {
            "s3 key '\(printable(key))' \(reason); rename the object (it was not staged)"
        }
    }

    /// The key with control characters shown as `\u{..}`, for messages.
    public static func printable(_ key: String) -> String {
        key.unicodeScalars.map { $0.value < 0x20 || $0.value == 0x7F ? "\\u{\(String($0.value, radix: 16))}" : String($0) }.joined()
    }

    /// The relative path for `key` below `prefix`, or why there is none.
    public static func relativePath(key: String, prefix: String) -> Result<String, Refusal> {
        func refuse(_ why: String) -> Result<String, Refusal> { .failure(Refusal(key: key, reason: why)) }
        guard key.hasPrefix(prefix) else { return refuse("is not below the prefix '\(prefix)'") }
        var rel = String(key.dropFirst(prefix.count))
        // `prefix` may or may not end in '/': s3://b/dir and s3://b/dir/ mean the same directory.
        if !prefix.isEmpty && !prefix.hasSuffix("/") {
            guard rel.hasPrefix("/") || rel.isEmpty else { return .success(rel) }
            rel.removeFirst()
        }
        if rel.isEmpty { return refuse("names the prefix itself, not a file below it") }
        if rel.hasPrefix("/") { return refuse("would be an absolute path") }
        if rel.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) {
            return refuse("contains a NUL or control character, which a file name cannot safely hold")
        }
        for c in rel.split(separator: "/", omittingEmptySubsequences: false) {
            if c.isEmpty { return refuse("has an empty path component ('//')") }
            if c == "." || c == ".." { return refuse("has a '\(c)' component, which would leave the destination directory") }
            if c.utf8.count > 255 { return refuse("has a component longer than 255 bytes, which file systems refuse") }
        }
        return .success(rel)
    }

    /// Keys that are also a "directory" of other keys (`a` and `a/b`): a file system cannot hold both.
    /// Directory markers (keys ending in `/`, usually 0 bytes) are not files and are left out by callers.
    public static func fileDirectoryClashes(_ relativePaths: [String]) -> Set<String> {
        let all = Set(relativePaths)
        var clashes = Set<String>()
        for p in relativePaths {
            var parent = Substring(p)
            while let slash = parent.lastIndex(of: "/") {
                parent = parent[..<slash]
                if all.contains(String(parent)) { clashes.insert(String(parent)) }
            }
        }
        return clashes
    }
}
