import ArgumentParser
import Foundation
import Synchronization
import Engine
import POSIXFiles
import S3Stage

/// Where and how to reach S3; credentials come from the environment or the AWS files only.
struct S3Options: ParsableArguments {
    @Option(help: "S3 endpoint URL (else AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, the profile's endpoint_url, or AWS).")
    var endpoint: String?
    @Option(help: "Profile of ~/.aws/credentials and ~/.aws/config (else AWS_PROFILE, else default).")
    var profile: String?
    @Option(help: "Region for signing (else AWS_REGION, the profile's, or us-east-1).")
    var region: String?
    @Option(help: "Addressing: path (https://host/bucket/key) or virtual (https://bucket.host/key).")
    var addressing: String?
    @Flag(help: "Do not verify the server's TLS certificate (test servers only).")
    var insecure = false
    @Option(help: "Parallel requests per large object (ranged GETs, upload parts).")
    var concurrency: Int?
    @Option(name: .customLong("part-size"), help: "Part size in MiB for multipart uploads and ranged downloads (default: 16, more for huge objects).")
    var partSizeMiB: Int?
    @Option(help: "What the server's ETags are: md5 (AWS, Ceph RGW, SeaweedFS; the default) or opaque (not MD5 digests, as a server or gateway that encrypts or re-chunks objects may make them: objects without a recorded SHA-256 or CRC-32C, as metadata or server checksum, are then checked by size only).")
    var etags: String?

    func client(verbose: Bool = true) throws -> S3Client {
        var o = S3Config.Overrides()
        o.endpoint = endpoint; o.profile = profile; o.region = region
        if let a = addressing {
            guard let v = S3Config.Addressing(rawValue: a) else { throw ValidationError("--addressing must be path or virtual") }
            o.addressing = v
        }
        if insecure { o.insecure = true }
        o.concurrency = concurrency
        o.partSize = partSizeMiB.map { max(5, $0) << 20 }
        if let e = etags {
            guard let v = S3Config.ETags(rawValue: e) else { throw ValidationError("--etags must be md5 or opaque") }
            o.etags = v
        }
        let config = try S3Config.resolve(o)
        return S3Client(config: config) { op, attempt, e in
            if verbose { printError("retrying \(op) (attempt \(attempt + 1)): \(e)") }
        }
    }
}

struct S3Command: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "s3",
        abstract: "List, copy, remove and share S3 objects with emflow's own client (verified transfers).",
        discussion: """
            Credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN), or a profile of
            ~/.aws/credentials (AWS_PROFILE or --profile). Endpoint: --endpoint, AWS_ENDPOINT_URL(_S3), or the
            profile's endpoint_url. TLS: AWS_CA_BUNDLE for a site CA.
              emflow s3 ls s3://bucket/prefix/
              emflow s3 cp --recursive s3://bucket/P2026-001/ /cephfs/staging/P2026-001/
              emflow s3 cp big.nxs s3://mirror-bucket/P2026-001/S01/E01/big.nxs
              emflow s3 presign --expires 86400 s3://bucket/key
            """,
        subcommands: [List.self, Copy.self, Remove.self, MakeBucket.self, Presign.self])

    static func uri(_ s: String) throws -> S3URI {
        guard let u = S3URI(s) else { throw ValidationError("'\(s)' is not an s3://bucket/key URI") }
        return u
    }

    /// Runs an S3 operation, turning its error into one message and exit code 1.
    static func s3<T>(_ body: () throws -> T) throws -> T {
        do { return try body() }
        catch let e as S3Error { printError("error: \(e)"); throw ExitCode(e.operation == "configuration" ? Exit.usage : Exit.environment) }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "ls", abstract: "List buckets, or objects under s3://bucket/prefix.")
        @OptionGroup var s3: S3Options
        @Flag(name: .shortAndLong, help: "Every object below the prefix (else one level, with PRE for sub-prefixes).")
        var recursive = false
        @Flag(help: "JSON for scripts.") var json = false
        @Argument(help: "s3://bucket/prefix (none: list buckets)") var target: String?

        func run() throws {
            try S3Command.s3 {
                let client = try s3.client()
                guard let target else {
                    let buckets = try client.listBuckets()
                    if json { try printJSON(buckets) } else { buckets.forEach { print($0) } }
                    return
                }
                let u = try S3Command.uri(target)
                let r = try client.list(bucket: u.bucket, prefix: u.key, delimiter: recursive ? nil : "/")
                if json {
                    struct Out: Encodable { var objects: [S3Object]; var prefixes: [String] }
                    try printJSON(Out(objects: r.objects, prefixes: r.prefixes))
                    return
                }
                for p in r.prefixes { print("                           PRE \(p)") }
                for o in r.objects {
                    let date = Date(timeIntervalSince1970: o.lastModified).ISO8601Format()
                    print("\(date) \(String(o.size).leftPad(12)) \(o.key)")
                }
            }
        }
    }

    struct Copy: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "cp", abstract: "Copy between S3 and local files (either direction), every byte verified.",
            discussion: "Downloads land under a temporary name and are renamed only once size and content check out: by the CRC-32C the object's writer recorded (emflow records one), else by its SHA-256 (whole, or part by part in parallel against a composite SHA-256 checksum), else by its ETag (MD5, or MD5 of the part MD5s). --check-sha256 checks the recorded SHA-256 instead of a CRC. The summary says how each object was checked. Uploads carry x-amz-meta-sha256 and x-amz-meta-crc32c, each part is checked by the server against its SHA-256, and any failure aborts the upload, leaving no partial object.")
        @OptionGroup var s3: S3Options
        @Flag(name: .shortAndLong, help: "Copy every object under the prefix / every file under the directory.")
        var recursive = false
        @Option(name: .shortAndLong, help: "Objects transferred at the same time with --recursive.")
        var jobs = 32
        @Option(help: "The file's SHA-256 (64 hex digits) when it is known, e.g. from a SHA256SUMS: a single-file upload then checks the file against it as the parts go out instead of hashing it first, and stores it as x-amz-meta-sha256; on a mismatch nothing is uploaded.")
        var sha256: String?
        @Flag(help: "Downloads: check each object against the SHA-256 its writer recorded (x-amz-meta-sha256) even where a CRC-32C is recorded too. The CRC catches what a network or a disk does to data at a tenth of the cost; the SHA-256 is the file's identity, hashed whole and in order (slower).")
        var checkSha256 = false
        @Flag(name: .shortAndLong, help: "No progress line.") var quiet = false
        @Flag(help: "A JSON summary for scripts.") var json = false
        @Argument(help: "source: s3://bucket/key[/] or a local path") var source: String
        @Argument(help: "destination: a local path or s3://bucket/key[/]") var destination: String

        /// `verified`: how many objects were checked against what ("crc32c", "sha256", "sha256 of parts",
        /// "md5 of parts (etag)", "md5 (etag)", "size"), so that a script can tell objects the server
        /// holds no checksum of, which only their size could check.
        struct Summary: Encodable { var objects: Int; var bytes: Int64; var seconds: Double; var verified: [String: Int]; var failed: [String] }

        func validate() throws {
            if checkSha256 && S3URI(source) == nil {
                throw ValidationError("--check-sha256 is for downloads (s3://… → a local path); uploads always record the SHA-256")
            }
            guard let sha256 else { return }
            guard sha256.count == 64, sha256.allSatisfy(\.isHexDigit) else {
                throw ValidationError("--sha256 takes the file's SHA-256 as 64 hex digits (as sha256sum prints it), not '\(sha256)'")
            }
            guard S3URI(source) == nil, S3URI(destination) != nil, !recursive else {
                throw ValidationError("--sha256 is for uploading one file (local path → s3://…)")
            }
        }

        func run() throws {
            try S3Command.s3 {
                let client = try s3.client(verbose: !quiet)
                let start = Date()
                var pairs: [(src: String, dst: String, known: S3Object?)] = []
                var refused: [String] = []
                let download = S3URI(source) != nil
                if let src = S3URI(source) {
                    guard S3URI(destination) == nil else { throw ValidationError("S3-to-S3 copies are not supported; download then upload") }
                    if recursive {
                        let listing = try client.list(bucket: src.bucket, prefix: src.key).objects.filter { !$0.key.hasSuffix("/") }
                        var rels: [(S3Object, String)] = []
                        for o in listing {
                            switch ObjectPaths.relativePath(key: o.key, prefix: src.key) {
                            case .success(let rel): rels.append((o, rel))
                            case .failure(let e): refused.append(e.description)
                            }
                        }
                        let clashes = ObjectPaths.fileDirectoryClashes(rels.map(\.1))
                        for (o, rel) in rels {
                            if clashes.contains(rel) {
                                refused.append("s3 key '\(o.key)' is both an object and a prefix of other objects; a directory cannot also be a file — rename it (it was not staged)")
                            } else {
                                pairs.append((o.key, Path.join(destination, rel), o))
                            }
                        }
                    } else {
                        let dst = destination.hasSuffix("/") || ((try? FileStatus.ifExists(path: destination))??.isDirectory ?? false)
                            ? Path.join(destination, Path.lastComponent(of: src.key)) : destination
                        pairs.append((src.key, dst, nil))
                    }
                } else {
                    guard let dst = S3URI(destination) else { throw ValidationError("one side must be an s3:// URI") }
                    let st = try FileStatus.of(path: source)
                    if st.isDirectory {
                        guard recursive else { throw ValidationError("\(source) is a directory: add --recursive") }
                        var found: [String] = []
                        Self.walk(source, "", &found)
                        let base = dst.key.isEmpty || dst.key.hasSuffix("/") ? dst.key : dst.key + "/"
                        pairs = found.map { (Path.join(source, $0), base + $0, nil) }
                    } else {
                        let key = dst.key.isEmpty || dst.key.hasSuffix("/") ? dst.key + Path.lastComponent(of: source) : dst.key
                        pairs.append((source, key, nil))
                    }
                }
                let bucket = S3URI(download ? source : destination)!.bucket
                let progress = ProgressReporter(enabled: !quiet && !json)
                progress.begin(stage: download ? "download" : "upload", total: pairs.count, skipped: 0)
                let failures = Mutex<[String]>(refused)
                let bytes = Atomic<Int>(0)
                let verified = Mutex<[String: Int]>([:])
                let work = pairs
                ParallelThreads.run(count: work.count, width: jobs) { _, i in
                    let p = work[i]
                    do {
                        let r = download
                            ? try client.download(bucket: bucket, key: p.src, to: p.dst, known: p.known, sha256: checkSha256, progress: { progress.addBytes($0) })
                            : try client.upload(file: p.src, bucket: bucket, key: p.dst, sha256: sha256?.lowercased(), progress: { progress.addBytes($0) },
                                                 hashing: { progress.addHashedBytes($0) })
                        bytes.wrappingAdd(Int(r.size), ordering: .relaxed)
                        let how = r.verifiedBy.replacingOccurrences(of: #" of \d+ parts"#, with: " of parts", options: .regularExpression)
                        verified.withLock { $0[how, default: 0] += 1 }
                        progress.taskEnded(failed: false)
                    } catch {
                        failures.withLock { $0.append("\(error)") }
                        progress.taskEnded(failed: true)
                    }
                }
                progress.end()
                let failed = failures.withLock { $0 }
                let secs = Date().timeIntervalSince(start)
                let checks = verified.withLock { $0 }
                if json {
                    try printJSON(Summary(objects: pairs.count - failed.count + refused.count, bytes: Int64(bytes.load(ordering: .relaxed)),
                                          seconds: secs, verified: checks, failed: failed))
                } else {
                    for f in failed { printError("error: \(f)") }
                    if !quiet {
                        let b = Int64(bytes.load(ordering: .relaxed))
                        printError("\(pairs.count - failed.count + refused.count) object(s), \(formatBytes(b)) in \(ProgressReporter.duration(secs)) (\(formatBytes(Int64(Double(b) / max(secs, 1e-3))))/s)" + (failed.isEmpty ? "" : ", \(failed.count) failed")
                                   + (checks.isEmpty ? "" : "; checked by " + checks.sorted { $0.key < $1.key }.map { "\($0.key) ×\($0.value)" }.joined(separator: ", ")))
                        if let n = checks["size"] {
                            printError("note: \(n) object(s) were checked by their size only: the server holds no SHA-256 or CRC-32C (metadata or checksum)"
                                       + (client.config.etags == .opaque ? " of them, and its ETags are taken for no digest (--etags opaque)" : " or MD5 ETag of them"))
                        }
                    }
                }
                if !failed.isEmpty { throw ExitCode(Exit.itemsFailed) }
            }
        }

        static func walk(_ dir: String, _ rel: String, _ out: inout [String]) {
            for e in ((try? listDirectory(dir)) ?? []).sorted(by: { $0.name < $1.name }) {
                if e.name.hasPrefix(AtomicFile.temporaryPrefix) { continue }
                let r = rel.isEmpty ? e.name : rel + "/" + e.name
                let p = Path.join(dir, e.name)
                if e.kind == .directory { walk(p, r, &out) }
                else if (try? FileStatus.of(path: p))?.isRegularFile == true { out.append(r) }
            }
        }
    }

    struct Remove: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "rm", abstract: "Remove an object, or every object under a prefix.")
        @OptionGroup var s3: S3Options
        @Flag(name: .shortAndLong, help: "Every object under the prefix.") var recursive = false
        @Argument(help: "s3://bucket/key") var target: String

        func run() throws {
            try S3Command.s3 {
                let client = try s3.client()
                let u = try S3Command.uri(target)
                if !recursive { try client.delete(bucket: u.bucket, key: u.key); return }
                let keys = try client.list(bucket: u.bucket, prefix: u.key).objects.map(\.key)
                let failed = try client.delete(bucket: u.bucket, keys: keys)
                for f in failed { printError("error: cannot delete s3://\(u.bucket)/\(f.key): \(f.error)") }
                printError("\(keys.count - failed.count) object(s) removed")
                if !failed.isEmpty { throw ExitCode(Exit.itemsFailed) }
            }
        }
    }

    struct MakeBucket: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "mb", abstract: "Create a bucket (no error if it is already yours).")
        @OptionGroup var s3: S3Options
        @Argument(help: "s3://bucket") var target: String
        func run() throws {
            try S3Command.s3 { try s3.client().createBucket(try S3Command.uri(target).bucket) }
        }
    }

    struct Presign: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "presign", abstract: "Print a URL that downloads the object without credentials.")
        @OptionGroup var s3: S3Options
        @Option(help: "Seconds the URL stays valid (1 to 604800 = 7 days).") var expires = 3600
        @Argument(help: "s3://bucket/key") var target: String
        func validate() throws {
            guard (1...604_800).contains(expires) else { throw ValidationError("--expires must be 1 to 604800 seconds (7 days)") }
        }
        func run() throws {
            try S3Command.s3 {
                let u = try S3Command.uri(target)
                print(try s3.client().presignedURL(bucket: u.bucket, key: u.key, expires: expires))
            }
        }
    }
}

extension String {
    func leftPad(_ n: Int) -> String { count >= n ? self : String(repeating: " ", count: n - count) + self }
}
