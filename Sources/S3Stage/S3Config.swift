import Foundation

/// Where and as whom to talk S3, resolved the way the AWS tools do, so users' existing set-up works:
/// explicit settings (spec or command line) first, then AWS_* environment variables, then the profile
/// in ~/.aws/credentials and ~/.aws/config.
public struct S3Config: Sendable {
    public enum Addressing: String, Sendable, CaseIterable {
        /// `https://host/bucket/key`: Ceph RGW, SeaweedFS, MinIO and most on-site servers.
        case path
        /// `https://bucket.host/key`: AWS's default.
        case virtual
    }

    public var scheme: String
    public var host: String
    public var port: Int?
    public var region: String
    public var addressing: Addressing
    /// What the server's ETags are. AWS (but under a KMS or customer key, which its headers say),
    /// Ceph RGW and SeaweedFS make them MD5 digests: of the content, or of the part MD5s for a
    /// multipart upload (`hex-N`). An S3-compatible server or gateway that encrypts or re-chunks
    /// objects may make them something else without a header that says so: `opaque` never takes them
    /// for digests, and an object with no recorded SHA-256 or CRC-32C (metadata or server checksum)
    /// is then checked by its size only.
    public enum ETags: String, Sendable, CaseIterable {
        case md5
        case opaque
    }

    public var credentials: Credentials
    /// Where the credentials came from, for error hints (never the credentials themselves).
    public var credentialSource: String
    public var http = HTTPSettings()
    /// Parallel requests per transfer (ranged GETs, parts) and objects in flight for many small ones.
    public var concurrency = 8
    /// Part size for multipart uploads and ranged downloads; nil = chosen from the object size.
    public var partSize: Int? = nil
    /// Attempts per request, the first included.
    public var attempts = 8
    public var etags = ETags.md5

    /// `host[:port]` as sent in the Host header.
    public var authority: String { port.map { "\(host):\($0)" } ?? host }
    public var endpoint: String { "\(scheme)://\(authority)" }

    /// What a spec or command line may set. Credentials are deliberately not here: they come from the
    /// environment or the shared credentials file, never from a spec.
    public struct Overrides: Sendable {
        public var endpoint: String? = nil
        public var region: String? = nil
        public var profile: String? = nil
        public var addressing: Addressing? = nil
        public var insecure: Bool? = nil
        public var caBundle: String? = nil
        public var concurrency: Int? = nil
        public var partSize: Int? = nil
        public var etags: ETags? = nil
        public init() {}
    }

    public init(endpoint: String, region: String = "us-east-1", credentials: Credentials, addressing: Addressing = .path) throws(S3Error) {
        let (scheme, host, port) = try Self.parseEndpoint(endpoint, source: "endpoint")
        self.scheme = scheme; self.host = host; self.port = port
        self.region = region; self.credentials = credentials; self.addressing = addressing
        self.credentialSource = "the given credentials"
    }

    static func parseEndpoint(_ text: String, source: String) throws(S3Error) -> (String, String, Int?) {
        func bad(_ why: String) -> S3Error {
            S3Error.setup("the S3 endpoint '\(text)' (from \(source)) \(why)", hint: "write it as https://host[:port] or http://127.0.0.1:PORT")
        }
        var t = text.trimmingCharacters(in: .whitespaces)
        while t.hasSuffix("/") { t.removeLast() }
        guard let sep = t.range(of: "://") else { throw bad("has no scheme") }
        let scheme = t[..<sep.lowerBound].lowercased()
        guard scheme == "http" || scheme == "https" else { throw bad("has scheme \(scheme), not http or https") }
        let rest = String(t[sep.upperBound...])
        guard !rest.isEmpty, !rest.contains("/"), !rest.contains("@") else { throw bad("must be a scheme, a host and an optional port only") }
        if let colon = rest.lastIndex(of: ":"), !rest.hasSuffix("]") {
            guard let p = Int(rest[rest.index(after: colon)...]), (1...65535).contains(p) else { throw bad("has a bad port") }
            return (scheme, String(rest[..<colon]), p)
        }
        return (scheme, rest, nil)
    }

    /// Resolves the configuration from overrides, the environment and the shared AWS files.
    public static func resolve(_ o: Overrides = Overrides(), environment env: [String: String] = ProcessInfo.processInfo.environment) throws(S3Error) -> S3Config {
        let home = env["HOME"] ?? NSHomeDirectory()
        let profileName = o.profile ?? env["AWS_PROFILE"] ?? env["AWS_DEFAULT_PROFILE"] ?? "default"
        let credFile = env["AWS_SHARED_CREDENTIALS_FILE"] ?? home + "/.aws/credentials"
        let confFile = env["AWS_CONFIG_FILE"] ?? home + "/.aws/config"
        let creds = AWSProfileFile.read(credFile)?.section(profileName, configStyle: false) ?? [:]
        let conf = AWSProfileFile.read(confFile)?.section(profileName, configStyle: true) ?? [:]
        func fromProfile(_ key: String) -> String? { creds[key] ?? conf[key] }

        // Credentials: an explicitly named profile wins; otherwise the environment, then the profile.
        var credentials: Credentials?
        var source = ""
        let envKey = env["AWS_ACCESS_KEY_ID"], envSecret = env["AWS_SECRET_ACCESS_KEY"]
        if o.profile == nil, let k = envKey, let s = envSecret, !k.isEmpty, !s.isEmpty {
            credentials = Credentials(accessKeyID: k, secretAccessKey: s, sessionToken: env["AWS_SESSION_TOKEN"])
            source = "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in the environment"
        } else if let k = fromProfile("aws_access_key_id"), let s = fromProfile("aws_secret_access_key") {
            credentials = Credentials(accessKeyID: k, secretAccessKey: s, sessionToken: fromProfile("aws_session_token"))
            source = "profile '\(profileName)' in \(creds["aws_access_key_id"] != nil ? credFile : confFile)"
        }
        guard let credentials else {
            let named = o.profile != nil || env["AWS_PROFILE"] != nil
            throw .setup(named ? "no S3 credentials for profile '\(profileName)' in \(credFile) or \(confFile)"
                               : "no S3 credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY are not set and \(credFile) has no [\(profileName)] keys",
                         hint: "export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or set AWS_PROFILE to a profile of \(credFile) with aws_access_key_id and aws_secret_access_key")
        }

        let region = o.region ?? env["AWS_REGION"] ?? env["AWS_DEFAULT_REGION"] ?? fromProfile("region") ?? "us-east-1"
        let endpointCandidates: [(String?, String)] = [
            (o.endpoint, "the spec or command line"), (env["AWS_ENDPOINT_URL_S3"], "AWS_ENDPOINT_URL_S3"),
            (env["AWS_ENDPOINT_URL"], "AWS_ENDPOINT_URL"), (conf["s3.endpoint_url"], "the s3 section of profile '\(profileName)'"),
            (fromProfile("endpoint_url"), "endpoint_url of profile '\(profileName)'"),
        ]
        let chosen = endpointCandidates.first { ($0.0 ?? "").isEmpty == false }
        let custom = chosen != nil
        let endpoint = chosen?.0 ?? "https://s3.\(region).amazonaws.com"
        if let chosen { _ = try parseEndpoint(endpoint, source: chosen.1) }
        var c = try S3Config(endpoint: endpoint, region: region, credentials: credentials,
                             addressing: o.addressing ?? (custom ? .path : .virtual))
        c.credentialSource = source
        c.http.caBundle = o.caBundle ?? env["AWS_CA_BUNDLE"] ?? fromProfile("ca_bundle")
        c.http.insecure = o.insecure ?? false
        if let n = o.concurrency { c.concurrency = max(1, n) }
        c.partSize = o.partSize
        if let e = o.etags { c.etags = e }
        return c
    }
}

/// The INI files of the AWS tools: `[name]` in credentials, `[profile name]` (or `[default]`) in
/// config, `key = value` lines, and indented sub-keys under a `s3 =` line (read as `s3.key`).
struct AWSProfileFile {
    var sections: [String: [String: String]]

    static func read(_ path: String) -> AWSProfileFile? {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return nil }
        return parse(text)
    }

    static func parse(_ text: String) -> AWSProfileFile {
        var sections: [String: [String: String]] = [:]
        var current: String? = nil
        var parent: String? = nil
        for raw in text.split(whereSeparator: \.isNewline) {
            let line = String(raw)
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            if trimmed.isEmpty || trimmed.hasPrefix("#") || trimmed.hasPrefix(";") { continue }
            if trimmed.hasPrefix("[") && trimmed.hasSuffix("]") {
                current = String(trimmed.dropFirst().dropLast()).trimmingCharacters(in: .whitespaces)
                parent = nil
                continue
            }
            guard let name = current, let eq = trimmed.firstIndex(of: "=") else { continue }
            let key = trimmed[..<eq].trimmingCharacters(in: .whitespaces).lowercased()
            let value = trimmed[trimmed.index(after: eq)...].trimmingCharacters(in: .whitespaces)
            let indented = line.first == " " || line.first == "\t"
            if indented, let p = parent {
                sections[name, default: [:]]["\(p).\(key)"] = value
            } else {
                parent = value.isEmpty ? key : nil
                if !value.isEmpty { sections[name, default: [:]][key] = value }
            }
        }
        return AWSProfileFile(sections: sections)
    }

    func section(_ profile: String, configStyle: Bool) -> [String: String]? {
        if configStyle { return sections["profile \(profile)"] ?? (profile == "default" ? sections["default"] : nil) }
        return sections[profile]
    }
}
