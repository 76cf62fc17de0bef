/// One S3 failure, said the way a user can act on: the operation, `s3://bucket/key`, the HTTP status
/// and S3 error code, the server's message, and what to do. Never carries a secret.
public struct S3Error: Error, CustomStringConvertible, Sendable {
    public var operation: String
    public var bucket: String?
    public var key: String?
    public var status: Int?
    public var code: String?
    public var message: String
    public var hint: String
    /// Whether another attempt may succeed (5xx, 408, 429, timeouts, resets).
    public var retryable = false

    public init(operation: String, bucket: String?, key: String?, status: Int?, code: String?, message: String, hint: String, retryable: Bool = false) {
        self.operation = operation; self.bucket = bucket; self.key = key; self.status = status; self.code = code
        self.message = message; self.hint = hint; self.retryable = retryable
    }

    static func setup(_ message: String, hint: String) -> S3Error {
        S3Error(operation: "configuration", bucket: nil, key: nil, status: nil, code: nil, message: message, hint: hint)
    }

    public var uri: String? {
        guard let bucket else { return nil }
        return "s3://\(bucket)/\(key ?? "")"
    }

    public var description: String {
        var s = "S3 \(operation)"
        if let uri { s += " \(uri)" }
        s += ": "
        if let status { s += "HTTP \(status)" + (code.map { " \($0)" } ?? "") + (message.isEmpty ? "" : " (\(message))") }
        else { s += message }
        if !hint.isEmpty { s += "; " + hint }
        return s
    }

    /// Whether the object or bucket is simply not there.
    public var isNotFound: Bool { status == 404 || code == "NoSuchKey" || code == "NoSuchBucket" }

    /// The advice for an S3 error code, naming where the credentials came from.
    static func hint(code: String?, status: Int, bucket: String?, config: S3Config) -> String {
        switch code {
        case "SignatureDoesNotMatch":
            return "the secret key does not match the access key: check the secret of \(config.credentialSource)"
        case "InvalidAccessKeyId":
            return "the server at \(config.endpoint) does not know this access key: check \(config.credentialSource) and the endpoint"
        case "AccessDenied", "AllAccessDisabled":
            return "these credentials (\(config.credentialSource)) may not do this here; ask the storage administrators for access" + (bucket.map { " to bucket \($0)" } ?? "")
        case "NoSuchBucket":
            return "bucket \(bucket ?? "?") does not exist at \(config.endpoint): check the name in s3://BUCKET/… or create the bucket"
        case "NoSuchKey":
            return "no such object: list what is there with `emflow s3 ls s3://\(bucket ?? "BUCKET")/PREFIX`"
        case "NoSuchUpload":
            return "the multipart upload is gone (aborted or expired); run the same command again to start a new one"
        case "RequestTimeTooSkewed":
            return "this machine's clock is off from the server's: synchronise it (NTP) and retry"
        case "ExpiredToken", "InvalidToken":
            return "the session token (AWS_SESSION_TOKEN) has expired: get new temporary credentials"
        case "BadDigest", "XAmzContentSHA256Mismatch", "InvalidDigest":
            return "the data did not arrive as sent (checksum mismatch); it was retried — check the network or the source file"
        case "InvalidBucketName":
            return "bucket names are 3-63 characters of lowercase letters, digits, '-' and '.'"
        case "BucketNotEmpty":
            return "delete the objects first"
        case "PreconditionFailed":
            return "the object changed while it was being read; run the same command again to read the new version"
        case "EntityTooSmall":
            return "a multipart part was below the server's minimum; use a larger part size"
        default:
            if status >= 500 { return "the server failed (it was retried); check the S3 service at \(config.endpoint) and run the same command again" }
            if status == 404 { return "not found: check the bucket and key" }
            return "see the server's message"
        }
    }

    /// 5xx, request timeout and throttling are worth another attempt; other 4xx are not, except for
    /// a body that arrived damaged.
    static func isRetryable(status: Int, code: String?) -> Bool {
        if status >= 500 || status == 408 || status == 429 { return true }
        return ["RequestTimeout", "SlowDown", "BadDigest", "IncompleteBody", "XAmzContentSHA256Mismatch", "InternalError"].contains(code ?? "")
    }
}
