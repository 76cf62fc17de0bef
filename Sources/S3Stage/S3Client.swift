import Foundation
import Checksums

/// An object as a listing or HEAD shows it.
public struct S3Object: Sendable, Codable, Hashable {
    public var key: String
    public var size: Int64
    /// Without quotes. A plain 32-hex ETag is the MD5 of the content; `…-N` is a multipart upload's.
    public var etag: String
    /// Seconds since the epoch.
    public var lastModified: Double
    /// User metadata (HEAD only), keys lowercase without `x-amz-meta-`.
    public var metadata: [String: String] = [:]
    /// The server-stored SHA-256 (base64) when it keeps one and was asked (HEAD only).
    public var checksumSHA256: String? = nil
    /// The server-stored CRC-32C (base64; `…-N` for a multipart upload's composite) when it keeps
    /// one and was asked (HEAD and GET only).
    public var checksumCRC32C: String? = nil
    /// Server-side encryption as a HEAD or GET reports it (`AES256`, `aws:kms`, `aws:kms:dsse`, or
    /// `SSE-C` for a customer key); nil when none was reported or the object comes from a listing.
    public var encryption: String? = nil

    /// The SHA-256 (hex) the object's writer recorded: `x-amz-meta-sha256`, else a whole-object
    /// server checksum. nil when neither is there.
    public var recordedSHA256: String? {
        if let m = metadata["sha256"], m.count == 64, m.allSatisfy(\.isHexDigit) { return m.lowercased() }
        if let c = checksumSHA256, !c.contains("-"), let d = Self.sha256Bytes(base64: c) { return hex(d) }
        return nil
    }

    /// The CRC-32C of the whole content its writer recorded: `x-amz-meta-crc32c` (as emflow's uploads
    /// record it, in S3's base64 form), else a whole-object server checksum. nil when neither is there.
    public var recordedCRC32C: CRC32C? {
        if let m = metadata["crc32c"], let c = CRC32C(base64: m) { return c }
        if let c = checksumCRC32C, !c.contains("-") { return CRC32C(base64: c) }
        return nil
    }

    public init(key: String, size: Int64, etag: String, lastModified: Double, metadata: [String: String] = [:], checksumSHA256: String? = nil) {
        self.key = key; self.size = size; self.etag = etag; self.lastModified = lastModified
        self.metadata = metadata; self.checksumSHA256 = checksumSHA256
    }

    /// A multipart upload's composite SHA-256 checksum (`base64-N`): the SHA-256 of its N parts'
    /// SHA-256 digests, and N.
    public var compositeSHA256: (digest: [UInt8], parts: Int)? {
        guard let (value, n) = checksumSHA256.flatMap(Self.partCount), let d = Self.sha256Bytes(base64: String(value)) else { return nil }
        return (d, n)
    }

    /// `value-N` as multipart checksums and ETags write it: the value and N (at least 1).
    static func partCount(_ text: String) -> (Substring, Int)? {
        guard let dash = text.lastIndex(of: "-"), let n = Int(text[text.index(after: dash)...]), n > 0 else { return nil }
        return (text[..<dash], n)
    }

    /// The 32 bytes of a base64 SHA-256, as S3 checksum headers carry it.
    static func sha256Bytes(base64: String) -> [UInt8]? {
        guard let d = Data(base64Encoded: base64), d.count == 32 else { return nil }
        return Array(d)
    }

    /// Whether the ETag can be taken for the content's MD5 (or a multipart upload's MD5 of part MD5s):
    /// not under a KMS or customer key, with which S3 makes ETags that are not.
    var etagIsMD5: Bool { encryption == nil || encryption == "AES256" }

    /// The MD5 (hex) when the ETag is one (single-part uploads without server-side encryption).
    public var etagMD5: String? { etagIsMD5 && etag.count == 32 && etag.allSatisfy(\.isHexDigit) ? etag.lowercased() : nil }

    /// A multipart upload's ETag (`hex-N`): the MD5 of its N parts' MD5 digests, and N; nil when the
    /// ETag is not of that form or encryption makes it something else.
    public var multipartETagMD5: (digest: [UInt8], parts: Int)? {
        guard etagIsMD5, let (value, n) = Self.partCount(etag), let d = unhex(value), d.count == 16 else { return nil }
        return (d, n)
    }
}

/// An S3 client over libcurl: SigV4-signed requests on reused connections, retries with backoff and
/// jitter, and errors that name the object and what to do. Thread-safe; transfers use many threads.
public final class S3Client: Sendable {
    public let config: S3Config
    let pool = HandlePool()
    /// Called before each retry (operation, attempt, error), e.g. to log.
    let onRetry: @Sendable (String, Int, S3Error) -> Void

    public init(config: S3Config, onRetry: @escaping @Sendable (String, Int, S3Error) -> Void = { _, _, _ in }) {
        self.config = config
        self.onRetry = onRetry
    }

    // MARK: - Requests

    struct Request {
        var operation: String
        var method: String
        var bucket: String?
        var key: String?
        var query: [(String, String)] = []
        var headers: [(String, String)] = []
        /// Hex SHA-256 of the body (signed), or UNSIGNED-PAYLOAD.
        var payloadHash = SignableRequest.emptyPayloadHash
    }

    /// The path and host a request goes to, per the addressing style.
    func target(bucket: String?, key: String?) -> (host: String, path: String) {
        guard let bucket else { return (config.authority, "/") }
        let k = key ?? ""
        if config.addressing == .virtual && !bucket.contains(".") {
            return ("\(bucket).\(config.authority)", "/" + k)
        }
        return (config.authority, "/\(bucket)" + (key == nil ? "" : "/" + k))
    }

    static func amzDate(_ t: Double = Date().timeIntervalSince1970) -> String {
        var secs = time_t(t)
        var tm = tm()
        gmtime_r(&secs, &tm)
        return String(format: "%04d%02d%02dT%02d%02d%02dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec)
    }

    /// Sends once (no retries): signs with the current time, performs, and turns a non-2xx reply into
    /// an S3Error. `body` must stay valid during the call; `start` and `sink` as for `perform`.
    func sendOnce(_ r: Request, body: RequestBody?, start: (([String: String]) -> Void)? = nil,
                  sink: ((Int, UnsafeRawBufferPointer) -> Bool)?) throws(S3Error) -> HTTPResponse {
        let (host, path) = target(bucket: r.bucket, key: r.key)
        let date = Self.amzDate()
        var headers = r.headers + [("host", host), ("x-amz-date", date), ("x-amz-content-sha256", r.payloadHash)]
        if let t = config.credentials.sessionToken { headers.append(("x-amz-security-token", t.value)) }
        let signed = SigV4.sign(SignableRequest(method: r.method, path: path, query: r.query, headers: headers, payloadHash: r.payloadHash),
                                credentials: config.credentials, region: config.region, amzDate: date)
        headers.append(("Authorization", signed.authorization))
        let query = r.query.isEmpty ? "" : "?" + SigV4.canonicalQuery(r.query)
        let url = "\(config.scheme)://\(host)\(SigV4.encode(path, keepSlash: true))\(query)"
        let sendHeaders = headers.filter { $0.0 != "host" }
        let response: HTTPResponse
        do {
            response = try pool.withHandle { (h) throws(S3Error) in
                do throws(TransportError) { return try h.perform(method: r.method, url: url, headers: sendHeaders, body: body, settings: config.http, start: start, sink: sink) }
                catch { throw S3Error(operation: r.operation, bucket: r.bucket, key: r.key, status: nil, code: nil,
                                      message: "\(error.message) (endpoint \(config.endpoint))",
                                      hint: error.retryable ? "the connection failed; it was retried — check that the S3 service at \(config.endpoint) is up"
                                                            : "check the endpoint, TLS settings (AWS_CA_BUNDLE) and network",
                                      retryable: error.retryable) }
            }
        }
        guard (200..<300).contains(response.status) else { throw error(for: response, request: r) }
        return response
    }

    func error(for response: HTTPResponse, request r: Request) -> S3Error {
        let xml = String(decoding: response.body, as: UTF8.self)[...]
        var code = S3XML.value(xml, "Code")
        var message = S3XML.value(xml, "Message") ?? ""
        if code == nil {
            // HEAD replies carry no body: name the common cases.
            switch response.status {
            case 404: code = r.key == nil ? "NoSuchBucket" : "NoSuchKey"
            case 403: code = "AccessDenied"
            case 412: code = "PreconditionFailed"
            default: break
            }
        }
        // The message must not echo request material that could hold secrets (some servers include the
        // string to sign); keep it short and single-line.
        message = message.split(whereSeparator: \.isNewline).first.map(String.init) ?? ""
        if message.count > 200 { message = String(message.prefix(200)) + "…" }
        return S3Error(operation: r.operation, bucket: r.bucket, key: r.key, status: response.status, code: code,
                       message: message, hint: S3Error.hint(code: code, status: response.status, bucket: r.bucket, config: config),
                       retryable: S3Error.isRetryable(status: response.status, code: code))
    }

    /// Runs `body` up to `config.attempts` times while it fails with a retryable error, waiting
    /// 0.2 s, 0.4 s, … (capped at 10 s) with jitter, so many workers do not retry in lockstep.
    public func retrying<T>(_ operation: String, _ body: () throws(S3Error) -> T) throws(S3Error) -> T {
        var attempt = 1
        while true {
            do { return try body() } catch {
                guard error.retryable, attempt < config.attempts else {
                    if attempt > 1 && error.retryable {
                        var e = error
                        e.message += " (after \(attempt) attempts)"
                        throw e
                    }
                    throw error
                }
                onRetry(operation, attempt, error)
                let cap = min(10.0, 0.2 * Double(1 << min(attempt - 1, 8)))
                Thread.sleep(forTimeInterval: cap / 2 + Double.random(in: 0...(cap / 2)))
                attempt += 1
            }
        }
    }

    func send(_ r: Request, body: [UInt8]? = nil) throws(S3Error) -> HTTPResponse {
        try retrying(r.operation) { () throws(S3Error) in
            if let body {
                return try body.withUnsafeBytes { b in Result { () throws(S3Error) in try sendOnce(r, body: .bytes(b), sink: nil) } }.get()
            }
            return try sendOnce(r, body: nil, sink: nil)
        }
    }

    // MARK: - Operations

    /// All buckets of the account.
    public func listBuckets() throws(S3Error) -> [String] {
        let r = try send(Request(operation: "ListBuckets", method: "GET"))
        let xml = String(decoding: r.body, as: UTF8.self)[...]
        return S3XML.elements(xml, "Bucket").compactMap { S3XML.value($0, "Name") }
    }

    public func createBucket(_ bucket: String) throws(S3Error) {
        var body: [UInt8]? = nil
        if config.region != "us-east-1" {
            body = Array("<CreateBucketConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><LocationConstraint>\(config.region)</LocationConstraint></CreateBucketConfiguration>".utf8)
        }
        var r = Request(operation: "CreateBucket", method: "PUT", bucket: bucket)
        if let body { r.payloadHash = SHA256Hasher.hash(body) }
        do { _ = try send(r, body: body) } catch where error.code == "BucketAlreadyOwnedByYou" {}
    }

    /// Every object under `prefix`, following continuation tokens (1000 keys a page). With a
    /// delimiter, also the common prefixes ("directories") at that level.
    public func list(bucket: String, prefix: String = "", delimiter: String? = nil,
                     page: ((Int) -> Void)? = nil) throws(S3Error) -> (objects: [S3Object], prefixes: [String]) {
        var objects: [S3Object] = [], prefixes: [String] = []
        try listPages(bucket: bucket, prefix: prefix, delimiter: delimiter) { o, p in
            objects += o; prefixes += p
            page?(objects.count)
            return true
        }
        return (objects, prefixes)
    }

    /// The listing one page at a time (1000 keys), in key order, so a caller can walk millions of
    /// objects in constant memory; `body` returns false to stop early. Starts after `startAfter` when given.
    public func listPages(bucket: String, prefix: String = "", delimiter: String? = nil, startAfter: String? = nil,
                          _ body: ([S3Object], [String]) throws(S3Error) -> Bool) throws(S3Error) {
        var token: String? = nil
        repeat {
            var q: [(String, String)] = [("list-type", "2"), ("encoding-type", "url"), ("max-keys", "1000")]
            if !prefix.isEmpty { q.append(("prefix", prefix)) }
            if let delimiter { q.append(("delimiter", delimiter)) }
            if let token { q.append(("continuation-token", token)) } else if let startAfter { q.append(("start-after", startAfter)) }
            let r = try send(Request(operation: "ListObjectsV2", method: "GET", bucket: bucket, key: nil, query: q))
            let xml = String(decoding: r.body, as: UTF8.self)[...]
            let encoded = S3XML.value(xml, "EncodingType") == "url"
            func k(_ s: String) -> String { encoded ? percentDecode(s) : s }
            var objects: [S3Object] = [], prefixes: [String] = []
            for c in S3XML.elements(xml, "Contents") {
                guard let key = S3XML.value(c, "Key") else { continue }
                objects.append(S3Object(key: k(key), size: Int64(S3XML.value(c, "Size") ?? "") ?? 0,
                                        etag: Self.unquote(S3XML.value(c, "ETag") ?? ""),
                                        lastModified: Self.parseISODate(S3XML.value(c, "LastModified") ?? "")))
            }
            for p in S3XML.elements(xml, "CommonPrefixes") { if let v = S3XML.value(p, "Prefix") { prefixes.append(k(v)) } }
            token = S3XML.value(xml, "IsTruncated") == "true" ? S3XML.value(xml, "NextContinuationToken") : nil
            if S3XML.value(xml, "IsTruncated") == "true" && token == nil {
                throw S3Error(operation: "ListObjectsV2", bucket: bucket, key: prefix, status: r.status, code: nil,
                              message: "the listing is truncated but gives no continuation token", hint: "the server does not speak ListObjectsV2 properly")
            }
            if try !body(objects, prefixes) { return }
        } while token != nil
    }

    /// The object's size, ETag, metadata and stored checksum; nil when it does not exist.
    public func head(bucket: String, key: String) throws(S3Error) -> S3Object? {
        do {
            let r = try send(Request(operation: "HeadObject", method: "HEAD", bucket: bucket, key: key,
                                     headers: [("x-amz-checksum-mode", "ENABLED")]))
            return Self.object(key: key, headers: r.headers)
        } catch where error.status == 404 && error.code != "NoSuchBucket" {
            return nil
        }
    }

    static func object(key: String, headers h: [String: String]) -> S3Object {
        var meta: [String: String] = [:]
        for (k, v) in h where k.hasPrefix("x-amz-meta-") { meta[String(k.dropFirst("x-amz-meta-".count))] = v }
        var o = S3Object(key: key, size: Int64(h["content-length"] ?? "") ?? 0, etag: unquote(h["etag"] ?? ""),
                         lastModified: parseHTTPDate(h["last-modified"] ?? ""), metadata: meta, checksumSHA256: h["x-amz-checksum-sha256"])
        o.checksumCRC32C = h["x-amz-checksum-crc32c"]
        o.encryption = h["x-amz-server-side-encryption-customer-algorithm"] != nil ? "SSE-C" : h["x-amz-server-side-encryption"]
        return o
    }

    /// The whole object (or a byte range) in memory: for small objects and manifests.
    public func get(bucket: String, key: String, range: ClosedRange<Int64>? = nil) throws(S3Error) -> [UInt8] {
        var r = Request(operation: "GetObject", method: "GET", bucket: bucket, key: key)
        if let range { r.headers.append(("range", "bytes=\(range.lowerBound)-\(range.upperBound)")) }
        return try send(r).body
    }

    /// Puts `body` as one object, with its SHA-256 as `x-amz-meta-sha256` and as a checksum the server
    /// verifies (a damaged body is refused, then retried), and its CRC-32C as `x-amz-meta-crc32c` (what
    /// downloads check it by). Returns the ETag.
    @discardableResult
    public func put(bucket: String, key: String, body: [UInt8], contentType: String? = nil, metadata: [String: String] = [:]) throws(S3Error) -> String {
        try body.withUnsafeBytes { b in
            Result { () throws(S3Error) in
                var crc = CRC32C()
                crc.update(b)
                return try put(bucket: bucket, key: key, body: .bytes(b), source: nil, digest: Digester.digest(.sha256, b), crc32c: crc,
                               contentType: contentType, metadata: metadata)
            }
        }.get()
    }

    /// As `put`, for a body whose SHA-256 and CRC-32C are known (read from `source` as it goes out, for
    /// a file).
    func put(bucket: String, key: String, body: RequestBody, source: String?, digest: [UInt8], crc32c: CRC32C, contentType: String?,
             metadata: [String: String]) throws(S3Error) -> String {
        var r = Request(operation: "PutObject", method: "PUT", bucket: bucket, key: key, payloadHash: hex(digest))
        var meta = metadata.merging(["sha256": hex(digest)]) { a, _ in a }
        meta["crc32c"] = crc32c.base64
        r.headers = Self.metadataHeaders(meta)
        r.headers.append(("x-amz-checksum-sha256", Data(digest).base64EncodedString()))
        if let contentType { r.headers.append(("content-type", contentType)) }
        let resp = try sendChecked(r, body: body, source: source, digest: digest, what: "the file")
        return Self.unquote(resp.headers["etag"] ?? "")
    }

    /// Sends a body the server checks against `digest`, retrying a damaged transfer. When the server
    /// refuses it and a file body no longer hashes to `digest`, the source changed since it was hashed:
    /// that fails at once as SourceChanged (retrying cannot help).
    func sendChecked(_ r: Request, body: RequestBody, source: String?, digest: [UInt8], what: String) throws(S3Error) -> HTTPResponse {
        try retrying(r.operation) { () throws(S3Error) in
            do throws(S3Error) { return try sendOnce(r, body: body, sink: nil) } catch {
                if error.code == "BadDigest" || error.code == "InvalidDigest", let source, case .file(let fd, let offset, let count) = body,
                   (try? Self.digest(of: fd, path: source, at: offset, count: count)) != digest {
                    throw S3Error(operation: r.operation, bucket: r.bucket, key: r.key, status: error.status, code: "SourceChanged",
                                  message: "\(what) no longer reads as it did when \(source) was hashed",
                                  hint: "the source file changed during the upload; the upload was aborted — run the same command again once the file is complete")
                }
                throw error
            }
        }
    }

    static func metadataHeaders(_ m: [String: String]) -> [(String, String)] {
        m.keys.sorted().map { ("x-amz-meta-\($0.lowercased())", m[$0]!) }
    }

    public func delete(bucket: String, key: String) throws(S3Error) {
        _ = try send(Request(operation: "DeleteObject", method: "DELETE", bucket: bucket, key: key))
    }

    /// Deletes up to 1000 keys per request; returns the keys the server could not delete, with why.
    @discardableResult
    public func delete(bucket: String, keys: [String]) throws(S3Error) -> [(key: String, error: String)] {
        var failed: [(String, String)] = []
        for start in stride(from: 0, to: keys.count, by: 1000) {
            let batch = keys[start..<min(keys.count, start + 1000)]
            let xml = "<Delete><Quiet>true</Quiet>" + batch.map { "<Object><Key>\(S3XML.escape($0))</Key></Object>" }.joined() + "</Delete>"
            let body = Array(xml.utf8)
            var r = Request(operation: "DeleteObjects", method: "POST", bucket: bucket, key: nil, query: [("delete", "")],
                            payloadHash: SHA256Hasher.hash(body))
            r.headers = [("content-md5", Data(Digester.digest(.md5, body)).base64EncodedString()), ("content-type", "application/xml")]
            let resp = try send(r, body: body)
            let out = String(decoding: resp.body, as: UTF8.self)[...]
            for e in S3XML.elements(out, "Error") {
                failed.append((S3XML.value(e, "Key") ?? "?", (S3XML.value(e, "Code") ?? "") + " " + (S3XML.value(e, "Message") ?? "")))
            }
        }
        return failed
    }

    /// A URL anyone can GET for `expires` seconds (1 s … 7 days, default 1 h) without credentials.
    public func presignedURL(bucket: String, key: String, expires: Int = 3600, method: String = "GET", now: Double = Date().timeIntervalSince1970) -> String {
        let (host, path) = target(bucket: bucket, key: key)
        let q = SigV4.presignQuery(method: method, path: path, host: host, credentials: config.credentials, region: config.region,
                                   amzDate: Self.amzDate(now), expires: expires)
        return "\(config.scheme)://\(host)\(SigV4.encode(path, keepSlash: true))?\(q)"
    }

    // MARK: - Multipart

    func createMultipart(bucket: String, key: String, metadata: [String: String], contentType: String?) throws(S3Error) -> String {
        var r = Request(operation: "CreateMultipartUpload", method: "POST", bucket: bucket, key: key, query: [("uploads", "")])
        r.headers = Self.metadataHeaders(metadata) + [("x-amz-checksum-algorithm", "SHA256")]
        if let contentType { r.headers.append(("content-type", contentType)) }
        let resp = try send(r)
        guard let id = S3XML.value(String(decoding: resp.body, as: UTF8.self)[...], "UploadId"), !id.isEmpty else {
            throw S3Error(operation: "CreateMultipartUpload", bucket: bucket, key: key, status: resp.status, code: nil,
                          message: "the reply has no UploadId", hint: "the server does not support multipart uploads as S3 does")
        }
        return id
    }

    /// Uploads one part (number from 1), read from `source` as it goes out, and returns its ETag and
    /// SHA-256 (base64). The part's SHA-256 (`digest`, computed by the caller) is both signed
    /// (x-amz-content-sha256) and sent as x-amz-checksum-sha256, so the server refuses a part that
    /// arrives damaged (retried) or that no longer reads as it did when hashed (not retried).
    func uploadPart(bucket: String, key: String, uploadID: String, number: Int, body: RequestBody, source: String,
                    digest: [UInt8]) throws(S3Error) -> (etag: String, checksum: String) {
        let checksum = Data(digest).base64EncodedString()
        var r = Request(operation: "UploadPart", method: "PUT", bucket: bucket, key: key,
                        query: [("partNumber", String(number)), ("uploadId", uploadID)], payloadHash: hex(digest))
        r.headers = [("x-amz-checksum-sha256", checksum)]
        let resp = try sendChecked(r, body: body, source: source, digest: digest, what: "part \(number)")
        guard let etag = resp.headers["etag"] else {
            throw S3Error(operation: "UploadPart", bucket: bucket, key: key, status: resp.status, code: nil,
                          message: "part \(number) was accepted without an ETag", hint: "the server does not support multipart uploads as S3 does")
        }
        return (Self.unquote(etag), checksum)
    }

    func completeMultipart(bucket: String, key: String, uploadID: String, parts: [(etag: String, checksum: String)]) throws(S3Error) -> String {
        let xml = "<CompleteMultipartUpload>" + parts.enumerated().map {
            "<Part><PartNumber>\($0.offset + 1)</PartNumber><ETag>\"\($0.element.etag)\"</ETag><ChecksumSHA256>\($0.element.checksum)</ChecksumSHA256></Part>"
        }.joined() + "</CompleteMultipartUpload>"
        let body = Array(xml.utf8)
        let r = Request(operation: "CompleteMultipartUpload", method: "POST", bucket: bucket, key: key,
                        query: [("uploadId", uploadID)], headers: [("content-type", "application/xml")], payloadHash: SHA256Hasher.hash(body))
        let resp = try send(r, body: body)
        let out = String(decoding: resp.body, as: UTF8.self)[...]
        // S3 may answer 200 and put an error in the body.
        if let code = S3XML.value(out, "Code"), out.contains("<Error>") {
            throw S3Error(operation: "CompleteMultipartUpload", bucket: bucket, key: key, status: resp.status, code: code,
                          message: S3XML.value(out, "Message") ?? "", hint: S3Error.hint(code: code, status: 500, bucket: bucket, config: config),
                          retryable: true)
        }
        return Self.unquote(S3XML.value(out, "ETag") ?? resp.headers["etag"] ?? "")
    }

    func abortMultipart(bucket: String, key: String, uploadID: String) throws(S3Error) {
        _ = try send(Request(operation: "AbortMultipartUpload", method: "DELETE", bucket: bucket, key: key, query: [("uploadId", uploadID)]))
    }

    /// Multipart uploads started and never completed or aborted under `prefix` (key, upload id).
    public func incompleteUploads(bucket: String, prefix: String = "") throws(S3Error) -> [(key: String, uploadID: String)] {
        var q: [(String, String)] = [("uploads", "")]
        if !prefix.isEmpty { q.append(("prefix", prefix)) }
        let r = try send(Request(operation: "ListMultipartUploads", method: "GET", bucket: bucket, key: nil, query: q))
        let xml = String(decoding: r.body, as: UTF8.self)[...]
        return S3XML.elements(xml, "Upload").compactMap { u in
            guard let k = S3XML.value(u, "Key"), let id = S3XML.value(u, "UploadId") else { return nil }
            return (k, id)
        }
    }

    // MARK: - Formats

    static func unquote(_ s: String) -> String {
        var t = s
        if t.hasPrefix("\"") { t.removeFirst() }
        if t.hasSuffix("\"") { t.removeLast() }
        return t
    }

    /// `2026-11-23T10:15:30.000Z`
    static func parseISODate(_ s: String) -> Double {
        let p = s.split(whereSeparator: { "-T:.Z".contains($0) }).compactMap { Int($0) }
        guard p.count >= 6 else { return 0 }
        return utc(p[0], p[1], p[2], p[3], p[4], p[5])
    }

    /// `Mon, 23 Nov 2026 10:15:30 GMT`
    static func parseHTTPDate(_ s: String) -> Double {
        let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        let w = s.split(whereSeparator: { $0 == " " || $0 == ":" || $0 == "," })
        guard w.count >= 7, let d = Int(w[1]), let m = months.firstIndex(of: String(w[2])), let y = Int(w[3]),
              let hh = Int(w[4]), let mm = Int(w[5]), let ss = Int(w[6]) else { return 0 }
        return utc(y, m + 1, d, hh, mm, ss)
    }

    static func utc(_ y: Int, _ mo: Int, _ d: Int, _ h: Int, _ mi: Int, _ s: Int) -> Double {
        var t = tm()
        t.tm_year = Int32(y - 1900); t.tm_mon = Int32(mo - 1); t.tm_mday = Int32(d)
        t.tm_hour = Int32(h); t.tm_min = Int32(mi); t.tm_sec = Int32(s)
        return Double(timegm(&t))
    }
}
