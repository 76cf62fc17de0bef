import Synchronization
import S3Stage
import WorkflowSpec

/// One S3 client per distinct `s3:` section, shared by all tasks of a process (its connections stay
/// warm across tasks). Credentials are resolved from the environment and ~/.aws, never the spec.
public enum S3Access {
    nonisolated(unsafe) private static var cache: [String: S3Client] = [:]
    private static let lock = Mutex(())
    /// Where retries are reported (the CLI sets it to its log).
    nonisolated(unsafe) public static var log: @Sendable (String) -> Void = { _ in }

    public static func overrides(_ s: S3Settings) -> S3Config.Overrides {
        var o = S3Config.Overrides()
        o.endpoint = s.endpoint; o.region = s.region; o.profile = s.profile
        o.addressing = s.addressing.flatMap(S3Config.Addressing.init(rawValue:))
        o.insecure = s.insecure; o.caBundle = s.caBundle; o.concurrency = s.concurrency
        o.partSize = s.partSizeMiB.map { $0 << 20 }
        o.etags = s.etags.flatMap(S3Config.ETags.init(rawValue:))
        return o
    }

    public static func client(_ s: S3Settings) throws(S3Error) -> S3Client {
        let id = "\(s.endpoint ?? "")|\(s.region ?? "")|\(s.profile ?? "")|\(s.addressing ?? "")|\(s.insecure ?? false)|\(s.caBundle ?? "")|\(s.concurrency ?? 0)|\(s.partSizeMiB ?? 0)|\(s.etags ?? "")"
        return try lock.withLock { _ throws(S3Error) -> S3Client in
            if let c = cache[id] { return c }
            let c = S3Client(config: try S3Config.resolve(overrides(s))) { op, attempt, e in
                S3Access.log("retrying \(op) (attempt \(attempt + 1)): \(e)")
            }
            cache[id] = c
            return c
        }
    }
}
