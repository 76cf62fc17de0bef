import Checksums

/// A secret that never prints: its description is `***` in logs, errors and dumps.
public struct Secret: Sendable, CustomStringConvertible, CustomDebugStringConvertible {
    public let value: String
    public init(_ value: String) { self.value = value }
    public var description: String { "***" }
    public var debugDescription: String { "***" }
}

public struct Credentials: Sendable {
    public var accessKeyID: String
    public var secretAccessKey: Secret
    public var sessionToken: Secret?
    public init(accessKeyID: String, secretAccessKey: String, sessionToken: String? = nil) {
        self.accessKeyID = accessKeyID
        self.secretAccessKey = Secret(secretAccessKey)
        self.sessionToken = sessionToken.map(Secret.init)
    }
}

/// An HTTP request as the signer sees it. `path` is the decoded object path (`/bucket/key with space`);
/// it is percent-encoded here, once, as S3 expects.
public struct SignableRequest: Sendable {
    public var method: String
    public var path: String
    public var query: [(String, String)]
    /// Header names in any case; values as sent.
    public var headers: [(String, String)]
    /// Hex SHA-256 of the body, or `UNSIGNED-PAYLOAD`.
    public var payloadHash: String

    public init(method: String, path: String, query: [(String, String)] = [], headers: [(String, String)], payloadHash: String) {
        self.method = method; self.path = path; self.query = query; self.headers = headers; self.payloadHash = payloadHash
    }

    public static let emptyPayloadHash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
}

/// AWS Signature Version 4, as a pure function of the request, the credentials and the time
/// (`amzDate` = `YYYYMMDD'T'HHMMSS'Z'`), so it is tested against AWS's published examples.
public enum SigV4 {
    public struct Signed: Sendable {
        public var authorization: String
        public var signature: String
        public var canonicalRequest: String
        public var stringToSign: String
    }

    /// RFC 3986 unreserved characters stay; everything else is %XX (uppercase). `/` stays in paths.
    public static func encode(_ s: String, keepSlash: Bool) -> String {
        var out = ""
        for b in s.utf8 {
            let c = Character(Unicode.Scalar(b))
            if (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) || (b >= 0x30 && b <= 0x39) || c == "-" || c == "_" || c == "." || c == "~" || (keepSlash && c == "/") {
                out.append(c)
            } else {
                out += "%" + String(b, radix: 16, uppercase: true).leftPadded(2)
            }
        }
        return out
    }

    public static func canonicalQuery(_ q: [(String, String)]) -> String {
        q.map { (encode($0.0, keepSlash: false), encode($0.1, keepSlash: false)) }
            .sorted { $0.0 != $1.0 ? $0.0 < $1.0 : $0.1 < $1.1 }
            .map { "\($0.0)=\($0.1)" }.joined(separator: "&")
    }

    static func canonicalHeaders(_ h: [(String, String)]) -> (text: String, signed: String) {
        var merged: [String: [String]] = [:]
        for (k, v) in h {
            let value = v.split(whereSeparator: { $0 == " " || $0 == "\t" }).joined(separator: " ")
            merged[k.lowercased(), default: []].append(value)
        }
        let names = merged.keys.sorted()
        return (names.map { "\($0):\(merged[$0]!.joined(separator: ","))\n" }.joined(), names.joined(separator: ";"))
    }

    static func signingKey(_ secret: Secret, date: String, region: String, service: String) -> [UInt8] {
        var k = HMACSHA256.mac(key: Array("AWS4\(secret.value)".utf8), Array(date.utf8))
        k = HMACSHA256.mac(key: k, Array(region.utf8))
        k = HMACSHA256.mac(key: k, Array(service.utf8))
        return HMACSHA256.mac(key: k, Array("aws4_request".utf8))
    }

    /// Signs with the `Authorization` header. The request's headers must already include `host`,
    /// `x-amz-date` and (for S3) `x-amz-content-sha256`.
    public static func sign(_ r: SignableRequest, credentials: Credentials, region: String, service: String = "s3", amzDate: String) -> Signed {
        let date = String(amzDate.prefix(8))
        let (headerText, signedHeaders) = canonicalHeaders(r.headers)
        let canonical = [r.method, encode(r.path, keepSlash: true), canonicalQuery(r.query), headerText, signedHeaders, r.payloadHash]
            .joined(separator: "\n")
        let scope = "\(date)/\(region)/\(service)/aws4_request"
        let toSign = ["AWS4-HMAC-SHA256", amzDate, scope, SHA256Hasher.hash(canonical)].joined(separator: "\n")
        let sig = hex(HMACSHA256.mac(key: signingKey(credentials.secretAccessKey, date: date, region: region, service: service), Array(toSign.utf8)))
        return Signed(authorization: "AWS4-HMAC-SHA256 Credential=\(credentials.accessKeyID)/\(scope), SignedHeaders=\(signedHeaders), Signature=\(sig)",
                      signature: sig, canonicalRequest: canonical, stringToSign: toSign)
    }

    /// A presigned URL's query (to append to `scheme://host/path?`). Expiry is bounded: 1 s to 7 days.
    public static func presignQuery(method: String, path: String, host: String, credentials: Credentials, region: String,
                                    amzDate: String, expires: Int = 3600) -> String {
        let expires = max(1, min(expires, 7 * 24 * 3600))
        let date = String(amzDate.prefix(8))
        var q: [(String, String)] = [
            ("X-Amz-Algorithm", "AWS4-HMAC-SHA256"),
            ("X-Amz-Credential", "\(credentials.accessKeyID)/\(date)/\(region)/s3/aws4_request"),
            ("X-Amz-Date", amzDate), ("X-Amz-Expires", String(expires)), ("X-Amz-SignedHeaders", "host"),
        ]
        if let t = credentials.sessionToken { q.append(("X-Amz-Security-Token", t.value)) }
        let s = sign(SignableRequest(method: method, path: path, query: q, headers: [("host", host)], payloadHash: "UNSIGNED-PAYLOAD"),
                     credentials: credentials, region: region, amzDate: amzDate)
        return canonicalQuery(q) + "&X-Amz-Signature=" + s.signature
    }
}

extension String {
    func leftPadded(_ n: Int) -> String { count >= n ? self : String(repeating: "0", count: n - count) + self }
}
