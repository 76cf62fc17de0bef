import XCTest
import Foundation
import Synchronization
@testable import S3Stage
import Checksums
import POSIXFiles
import TestSupport

/// emflow's S3 client against a real server (SeaweedFS, signatures enforced), cross-checked with a
/// second client (aws cli from .venv), including a server killed mid-transfer.
final class S3ClientTests: XCTestCase {
    var server: S3TestServer!
    var tmp: TempDir!

    override func setUpWithError() throws {
        server = try S3TestServer.require()
        tmp = TempDir("s3client")
    }

    override func tearDown() { tmp?.cleanup() }

    func client(partSize: Int? = nil, concurrency: Int = 4, attempts: Int = 8, secret: String? = nil, key: String? = nil) throws -> S3Client {
        var c = try S3Config(endpoint: server.endpoint, credentials: Credentials(accessKeyID: key ?? server.accessKey, secretAccessKey: secret ?? server.secretKey))
        c.partSize = partSize
        c.concurrency = concurrency
        c.attempts = attempts
        return S3Client(config: c)
    }

    func random(_ n: Int) -> [UInt8] {
        guard n > 0, let h = FileHandle(forReadingAtPath: "/dev/urandom") else { return [] }
        defer { try? h.close() }
        return Array(h.readData(ofLength: n))
    }

    /// Runs the aws cli from .venv against the test server.
    func aws(_ args: [String]) throws -> ProcessOutput {
        try ProcessRunner.run(Tools.packageRoot + "/.venv/bin/aws", ["--endpoint-url", server.endpoint] + args, environment: server.childEnvironment())
    }

    func testRoundTripsOfEmptySmallMultipartAndOddKeysAgreeWithASecondClient() throws {
        let c = try client(partSize: 5 << 20)
        let bucket = S3TestServer.bucketName("rt")
        try c.createBucket(bucket)
        try c.createBucket(bucket)   // already ours: fine
        let big = random(23 << 20 + 12345)
        let files: [(key: String, bytes: [UInt8])] = [
            ("empty.bin", []),
            ("dir with space/ünïcødé µm.tif", Array("small body".utf8)),
            ("P2026-001/S01/E01/raw/big.tif", big),
            ("a+b=c&d?e#f.txt", Array("punctuation".utf8)),
            ("P2026-001/S01/E02/raw/one-put.tif", random(3 << 20 + 7)),   // one PUT, sent from the file
        ]
        for f in files {
            let path = tmp.write("up/" + f.key.replacingOccurrences(of: "/", with: "_"), f.bytes)
            let r = try c.upload(file: path, bucket: bucket, key: f.key)
            XCTAssertEqual(r.sha256, SHA256Hasher.hash(f.bytes))
            XCTAssertEqual(r.size, Int64(f.bytes.count))
        }
        // Multipart: the ETag says so, and the metadata carries the whole object's SHA-256.
        let head = try XCTUnwrap(try c.head(bucket: bucket, key: files[2].key))
        XCTAssertTrue(head.etag.hasSuffix("-5"), head.etag)
        XCTAssertEqual(head.metadata["sha256"], SHA256Hasher.hash(big))
        XCTAssertEqual(head.size, Int64(big.count))

        let listed = try c.list(bucket: bucket).objects
        XCTAssertEqual(Set(listed.map(\.key)), Set(files.map(\.key)))
        for f in files {
            let dest = tmp.file("down/" + f.key)
            let r = try c.download(bucket: bucket, key: f.key, to: dest, known: listed.first { $0.key == f.key })
            XCTAssertEqual(try readFile(dest), f.bytes, f.key)
            XCTAssertEqual(r.verifiedBy, "sha256", f.key)
        }
        // A second client sees the same bytes and metadata.
        let check = try aws(["s3api", "head-object", "--bucket", bucket, "--key", files[1].key])
        XCTAssertTrue(check.stdout.contains(SHA256Hasher.hash(files[1].bytes)), check.combined)
        let viaAWS = tmp.file("aws-big")
        let got = try aws(["s3", "cp", "--no-progress", "s3://\(bucket)/\(files[2].key)", viaAWS])
        XCTAssertEqual(got.status, 0, got.combined)
        XCTAssertEqual(try FileHasher.sha256(path: viaAWS).sha256, SHA256Hasher.hash(big))
        // And what it uploads, emflow reads (verified by its MD5 ETag: no sha256 metadata there).
        let other = tmp.write("by-aws.bin", random(100_000))
        XCTAssertEqual(try aws(["s3", "cp", "--no-progress", other, "s3://\(bucket)/by-aws.bin"]).status, 0)
        let r = try c.download(bucket: bucket, key: "by-aws.bin", to: tmp.file("by-aws-down.bin"))
        XCTAssertEqual(r.verifiedBy, "md5 (etag)")
        XCTAssertEqual(try readFile(tmp.file("by-aws-down.bin")), try readFile(other))
        // A listed object fetched in one GET by a caller that wants no SHA-256 (s3 cp) is hashed only
        // by what its reply says checks it: the recorded CRC-32C (or SHA-256), else the ETag's MD5.
        let relisted = try c.list(bucket: bucket).objects
        for (key, by) in [(files[1].key, "crc32c"), ("by-aws.bin", "md5 (etag)")] {
            let again = try c.download(bucket: bucket, key: key, to: tmp.file("again/" + key), known: relisted.first { $0.key == key }, sha256: false)
            XCTAssertEqual(again.verifiedBy, by, key)
            XCTAssertEqual(again.sha256 != nil, by == "sha256", "a SHA-256 only where it checked the object")
        }
        XCTAssertEqual(try readFile(tmp.file("again/by-aws.bin")), try readFile(other))
    }

    /// The CRC-32C that emflow records is the server's own: a PUT carrying it as S3's checksum header
    /// (which SeaweedFS computes and compares) is accepted and the server reports the same value; one
    /// a bit off is refused. And what emflow uploads records it, in that form.
    func testTheRecordedCRC32CIsTheOneTheServerComputes() throws {
        let c = try client(attempts: 1)   // a refused body is not sent again
        let bucket = S3TestServer.bucketName("crc")
        try c.createBucket(bucket)
        for size in [0, 1, 9, 12_289, 300_001] {
            let body = random(size)
            let crc = CRC32C.checksum(body)
            for (value, accepted) in [(crc, true), (CRC32C(value: crc.value ^ 1), false)] {
                var r = S3Client.Request(operation: "PutObject", method: "PUT", bucket: bucket, key: "native-\(size)",
                                         payloadHash: SHA256Hasher.hash(body))
                r.headers = [("x-amz-checksum-crc32c", value.base64)]
                do {
                    _ = try c.send(r, body: body)
                    XCTAssertTrue(accepted, "size \(size): a wrong CRC-32C was accepted")
                } catch {
                    XCTAssertFalse(accepted, "size \(size): \(error)")
                    XCTAssertEqual(error.status, 400, "\(error)")
                }
            }
            let head = try XCTUnwrap(try c.head(bucket: bucket, key: "native-\(size)"))
            XCTAssertEqual(head.checksumCRC32C, crc.base64, "size \(size)")
            XCTAssertEqual(head.recordedCRC32C, crc)
            // emflow's own upload records it as metadata, and a download is checked by it.
            let path = tmp.write("crc-\(size).bin", body)
            try c.upload(file: path, bucket: bucket, key: "ours-\(size)")
            XCTAssertEqual(try c.head(bucket: bucket, key: "ours-\(size)")?.metadata["crc32c"], crc.base64)
            let r = try c.download(bucket: bucket, key: "native-\(size)", to: tmp.file("crc-down/\(size)"), sha256: false)
            XCTAssertEqual(r.verifiedBy, "crc32c")
            XCTAssertEqual(try readFile(tmp.file("crc-down/\(size)")), body)
        }
    }

    /// Uploads `parts` (of any sizes) as one multipart object with the aws cli, with SHA-256 part
    /// checksums (a composite checksum) or without (then only the ETag tells of the parts).
    func awsMultipart(_ bucket: String, _ key: String, _ parts: [[UInt8]], sha256: Bool) throws {
        var create = ["s3api", "create-multipart-upload", "--bucket", bucket, "--key", key, "--query", "UploadId", "--output", "text"]
        if sha256 { create += ["--checksum-algorithm", "SHA256"] }
        let created = try aws(create)
        XCTAssertEqual(created.status, 0, created.combined)
        let id = created.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        var done: [[String: Any]] = []
        for (i, bytes) in parts.enumerated() {
            var args = ["s3api", "upload-part", "--bucket", bucket, "--key", key, "--upload-id", id, "--part-number", "\(i + 1)",
                        "--body", tmp.write("parts/\(key)-\(i)", bytes), "--output", "json"]
            if sha256 { args += ["--checksum-algorithm", "SHA256"] }
            let sent = try aws(args)
            XCTAssertEqual(sent.status, 0, sent.combined)
            let reply = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(sent.stdout.utf8)) as? [String: Any])
            var part: [String: Any] = ["PartNumber": i + 1, "ETag": reply["ETag"] ?? ""]
            if sha256 { part["ChecksumSHA256"] = reply["ChecksumSHA256"] ?? "" }
            done.append(part)
        }
        let list = String(decoding: try JSONSerialization.data(withJSONObject: ["Parts": done]), as: UTF8.self)
        let completed = try aws(["s3api", "complete-multipart-upload", "--bucket", bucket, "--key", key, "--upload-id", id, "--multipart-upload", list])
        XCTAssertEqual(completed.status, 0, completed.combined)
    }

    /// Objects that other clients uploaded carry no x-amz-meta-sha256. emflow checks them by what the
    /// server holds of their parts: the composite SHA-256 checksum, else the ETag's MD5 of part MD5s;
    /// parts not all of one size are found out rather than failing the object; and where the server
    /// holds nothing to check against, the result says "size". Both for a caller that records the
    /// file's SHA-256 (stage-in) and one that does not (s3 cp).
    func testObjectsOtherClientsUploadedAreCheckedByTheirParts() throws {
        let c = try client(partSize: 5 << 20)
        let bucket = S3TestServer.bucketName("oth")
        try c.createBucket(bucket)
        let content = random(20 << 20 + 321)
        let file = tmp.write("other.bin", content)
        // aws s3 cp sends 8 MiB parts: 3 here.
        XCTAssertEqual(try aws(["s3", "cp", "--no-progress", "--checksum-algorithm", "SHA256", file, "s3://\(bucket)/composite.bin"]).status, 0)
        XCTAssertEqual(try aws(["s3", "cp", "--no-progress", file, "s3://\(bucket)/etag.bin"]).status, 0)
        // Uneven parts that come to the count the first part's size gives: 5, 6 MiB and 1000 bytes.
        let uneven = [random(5 << 20), random(6 << 20), random(1000)]
        try awsMultipart(bucket, "uneven-sha.bin", uneven, sha256: true)
        try awsMultipart(bucket, "uneven-md5.bin", uneven, sha256: false)
        // Uneven parts that do not (5 and 7 MiB would be 3 parts of 5): checked after the download,
        // along the sizes the server gives for each part.
        let two = [random(5 << 20), random(7 << 20)]
        try awsMultipart(bucket, "two.bin", two, sha256: false)
        let cases: [(key: String, by: String, bytes: [UInt8])] = [
            ("composite.bin", "sha256 of 3 parts", content), ("etag.bin", "md5 of 3 parts (etag)", content),
            ("uneven-sha.bin", "sha256 of 3 parts", uneven.flatMap { $0 }), ("uneven-md5.bin", "md5 of 3 parts (etag)", uneven.flatMap { $0 }),
            ("two.bin", "md5 of 2 parts (etag)", two.flatMap { $0 }),
        ]
        for t in cases {
            for wanted in [true, false] {
                let dest = tmp.file("down/\(wanted)/\(t.key)")
                let r = try c.download(bucket: bucket, key: t.key, to: dest, sha256: wanted)
                XCTAssertEqual(r.verifiedBy, t.by, t.key)
                XCTAssertEqual(r.sha256, wanted ? SHA256Hasher.hash(t.bytes) : nil, t.key)
                XCTAssertEqual(try readFile(dest), t.bytes, t.key)
            }
        }

        // A damaged part is caught: one byte off in what arrived, and the parts' MD5s do not give the
        // ETag, nor do the parts along their true sizes (which are the laid-out ones here).
        let head = try XCTUnwrap(try c.head(bucket: bucket, key: "etag.bin"))
        let layout = try XCTUnwrap(try c.partLayout(of: head, bucket: bucket, nothingElse: true))
        XCTAssertEqual(layout.algorithm, .md5)
        XCTAssertEqual(layout.partSize, 8 << 20)
        func checks(_ bytes: [UInt8], _ layout: PartLayout) -> Bool {
            let digests = PartDigests(layout, size: Int64(bytes.count))
            bytes.withUnsafeBytes { PartDigests.Cursor(digests).feed($0, at: 0) }
            return digests.verify()
        }
        var damaged = content
        damaged[9 << 20] ^= 1
        XCTAssertTrue(checks(content, layout))
        XCTAssertFalse(checks(damaged, layout))
        XCTAssertFalse(try c.checkAlongTrueParts(layout, of: head, bucket: bucket, file: tmp.write("damaged.bin", damaged)))
        // Uneven parts: the laid-out check fails, the one along the true parts holds, unless damaged.
        let unevenHead = try XCTUnwrap(try c.head(bucket: bucket, key: "uneven-md5.bin"))
        let guessed = try XCTUnwrap(try c.partLayout(of: unevenHead, bucket: bucket, nothingElse: true))
        var joined = uneven.flatMap { $0 }
        XCTAssertFalse(checks(joined, guessed))
        XCTAssertTrue(try c.checkAlongTrueParts(guessed, of: unevenHead, bucket: bucket, file: tmp.write("uneven.bin", joined)))
        joined[(5 << 20) + 7] ^= 0x80
        XCTAssertFalse(try c.checkAlongTrueParts(guessed, of: unevenHead, bucket: bucket, file: tmp.write("uneven-damaged.bin", joined)))

        let twoHead = try XCTUnwrap(try c.head(bucket: bucket, key: "two.bin"))
        XCTAssertEqual(try c.partLayout(of: twoHead, bucket: bucket, nothingElse: true)?.uniform, false)
        XCTAssertNil(try c.partLayout(of: twoHead, bucket: bucket, nothingElse: false), "with a recorded SHA-256, no HEADs for uneven parts")

        // Under a KMS or customer key an ETag is no MD5, and emflow does not take it for one: such an
        // object (as a listing shows it, fetched in one GET) is checked by its size only, and says so.
        XCTAssertNotNil(head.multipartETagMD5)
        var kms = head
        kms.encryption = "aws:kms"
        XCTAssertNil(kms.multipartETagMD5)
        XCTAssertNil(try c.partLayout(of: kms, bucket: bucket, nothingElse: true).map { _ in "a layout by the ETag" })
        var listedKMS = try XCTUnwrap(try c.list(bucket: bucket, prefix: "uneven-md5").objects.first)
        listedKMS.encryption = "aws:kms"
        let sizeOnly = try client().download(bucket: bucket, key: listedKMS.key, to: tmp.file("down/kms.bin"), known: listedKMS, sha256: false)
        XCTAssertEqual(sizeOnly.verifiedBy, "size")
        XCTAssertEqual(try readFile(tmp.file("down/kms.bin")), uneven.flatMap { $0 })
        let md5 = String(repeating: "0123456789abcdef", count: 2)
        XCTAssertNil(S3Client.object(key: "k", headers: ["etag": "\"\(md5)\"", "x-amz-server-side-encryption-customer-algorithm": "AES256"]).etagMD5)
        XCTAssertNil(S3Client.object(key: "k", headers: ["etag": "\"\(md5)\"", "x-amz-server-side-encryption": "aws:kms"]).etagMD5)
        XCTAssertEqual(S3Client.object(key: "k", headers: ["etag": "\"\(md5)\"", "x-amz-server-side-encryption": "AES256"]).etagMD5, md5)
    }

    /// A server whose ETags are no MD5 digests and that says nothing of it (here the test server
    /// behind scripts/etag-proxy, which makes every ETag opaque): objects
    /// that other clients uploaded fail their ETag check, with a hint that names the setting; with
    /// `etags: opaque` they are checked by size, while emflow's own objects are still checked by their
    /// SHA-256.
    func testAServerWhoseETagsAreNoMD5DigestsNeedsSayingSoAndChecksTheRest() throws {
        let bucket = S3TestServer.bucketName("opq")
        try client(partSize: 5 << 20).createBucket(bucket)
        let small = random(1000), large = random(12 << 20)
        XCTAssertEqual(try aws(["s3", "cp", "--no-progress", tmp.write("small.bin", small), "s3://\(bucket)/small.bin"]).status, 0)
        XCTAssertEqual(try aws(["s3", "cp", "--no-progress", tmp.write("large.bin", large), "s3://\(bucket)/large.bin"]).status, 0)
        try client(partSize: 5 << 20).upload(file: tmp.file("large.bin"), bucket: bucket, key: "ours.bin")

        let proxy = try OpaqueETagProxy(server)
        defer { proxy.stop() }
        func behind(_ etags: S3Config.ETags) throws -> S3Client {
            var c = try S3Config(endpoint: proxy.endpoint, credentials: Credentials(accessKeyID: server.accessKey, secretAccessKey: server.secretKey))
            c.partSize = 5 << 20; c.concurrency = 4; c.etags = etags
            return S3Client(config: c)
        }
        let listed = try behind(.md5).list(bucket: bucket).objects
        let upstream = try client().list(bucket: bucket).objects
        XCTAssertEqual(listed.count, 3)
        for (a, b) in zip(listed, upstream) { XCTAssertNotEqual(a.etag, b.etag, "the proxy passes no true ETag") }
        XCTAssertNotNil(listed.first { $0.key == "large.bin" }?.multipartETagMD5, "shaped as a multipart ETag")

        for key in ["small.bin", "large.bin"] {
            let e = failure { try behind(.md5).download(bucket: bucket, key: key, to: tmp.file("md5/\(key)"), sha256: false) }
            XCTAssertEqual(e.code, "ChecksumMismatch", key)
            XCTAssertTrue(e.description.contains("ETag") && e.description.contains("etags: opaque") && e.description.contains("--etags opaque"), e.description)
        }
        XCTAssertEqual(((try? listDirectory(tmp.file("md5"))) ?? []).count, 0, "nothing written")

        let opaque = try behind(.opaque)
        for (key, bytes, by) in [("small.bin", small, "size"), ("large.bin", large, "size"), ("ours.bin", large, "crc32c")] {
            for wanted in [false, true] {
                let dest = tmp.file("opaque/\(wanted)/\(key)")
                let r = try opaque.download(bucket: bucket, key: key, to: dest, sha256: wanted)
                XCTAssertEqual(r.verifiedBy, wanted && key == "ours.bin" ? "sha256" : by, "\(key), sha256 wanted: \(wanted)")
                if wanted || r.sha256 != nil { XCTAssertEqual(r.sha256, SHA256Hasher.hash(bytes), key) }
                XCTAssertEqual(try readFile(dest), bytes, key)
            }
        }
        // Listed (the single GET learns from its reply what checks it): the same.
        for o in try opaque.list(bucket: bucket).objects where o.key == "small.bin" {
            XCTAssertEqual(try opaque.download(bucket: bucket, key: o.key, to: tmp.file("listed.bin"), known: o, sha256: false).verifiedBy, "size")
        }
    }

    /// A large object goes both ways in bounded memory: parts stream between the file and the network,
    /// and the in-order hash holds at most its window of blocks (32 MiB), whatever the object's size.
    /// Holding whole 16 MiB parts, 8 requests at a time, took 128 MiB and more.
    func testLargeTransfersRunInBoundedMemory() throws {
        let c = try client(concurrency: 8)   // default 16 MiB parts
        let bucket = S3TestServer.bucketName("mem")
        try c.createBucket(bucket)
        let src = tmp.file("big.bin")
        let size = 320 << 20
        do {
            let out = try XCTUnwrap(FileHandle(forWritingAtPath: { FileManager.default.createFile(atPath: src, contents: nil); return src }()))
            let urandom = try XCTUnwrap(FileHandle(forReadingAtPath: "/dev/urandom"))
            for _ in 0..<(size >> 20) { try out.write(contentsOf: urandom.readData(ofLength: 1 << 20)) }
            try out.close(); try urandom.close()
        }
        let sha = try FileHasher.sha256(path: src).sha256
        /// How much the resident set grew at its peak while `body` ran.
        func peakGrowth(_ what: String, _ body: () throws -> Void) throws -> Int {
            func kib(_ field: String) throws -> Int {
                let status = try String(contentsOfFile: "/proc/self/status", encoding: .utf8)
                let line = try XCTUnwrap(status.split(separator: "\n").first { $0.hasPrefix(field + ":") })
                return try XCTUnwrap(Int(line.split(separator: " ", omittingEmptySubsequences: true)[1]))
            }
            // Memory freed by earlier work goes back to the system first, so that reusing it cannot
            // hide growth (glibc's malloc_trim, not in Swift's Glibc module).
            if let trim = dlsym(nil, "malloc_trim") { _ = unsafeBitCast(trim, to: (@convention(c) (Int) -> Int32).self)(0) }
            try "5".write(toFile: "/proc/self/clear_refs", atomically: false, encoding: .utf8)   // peak := now
            let before = try kib("VmRSS")
            try body()
            let growth = (try kib("VmHWM") - before) << 10
            print("\(what): resident set grew by \(growth >> 20) MiB at its peak")
            return growth
        }
        let limit = 96 << 20
        XCTAssertLessThan(try peakGrowth("upload") { XCTAssertEqual(try c.upload(file: src, bucket: bucket, key: "big.bin").sha256, sha) }, limit)
        XCTAssertLessThan(try peakGrowth("upload, sha256 known") {
            XCTAssertEqual(try c.upload(file: src, bucket: bucket, key: "again.bin", sha256: sha).sha256, sha)
        }, limit)
        let dest = tmp.file("down/big.bin")
        XCTAssertLessThan(try peakGrowth("download") {
            let r = try c.download(bucket: bucket, key: "big.bin", to: dest)
            XCTAssertEqual(r.sha256, sha); XCTAssertEqual(r.verifiedBy, "sha256")
        }, limit)
        XCTAssertEqual(try FileHasher.sha256(path: dest).sha256, sha)
        // Without a whole SHA-256 wanted, the recorded CRC-32C checks the content, or for the object
        // uploaded with its SHA-256 known (no CRC recorded) the 20 parts are checked against the
        // composite checksum; fetched in larger ranges (about two per request, up to 64 MiB: 4 parts
        // each here, 2 at once).
        let wide = try client(concurrency: 2)
        XCTAssertEqual(wide.rangeSize(for: Int64(size), ordered: false), 64 << 20)
        XCTAssertEqual(wide.rangeSize(for: Int64(size), ordered: true), 16 << 20, "the ordered hash keeps part-sized ranges")
        XCTAssertEqual(try client(partSize: 5 << 20).rangeSize(for: Int64(size), ordered: false), 5 << 20, "as --part-size says")
        XCTAssertEqual(c.rangeSize(for: 100 << 20, ordered: false), 16 << 20, "never below the part size")
        XCTAssertNotNil(try c.head(bucket: bucket, key: "big.bin")?.recordedCRC32C)
        XCTAssertNil(try c.head(bucket: bucket, key: "again.bin")?.recordedCRC32C)
        for (key, by) in [("big.bin", "crc32c"), ("again.bin", "sha256 of 20 parts")] {
            let cheap = tmp.file("down/cheap-" + key)
            XCTAssertLessThan(try peakGrowth("download, checked by \(by)") {
                let r = try wide.download(bucket: bucket, key: key, to: cheap, sha256: false)
                XCTAssertNil(r.sha256); XCTAssertEqual(r.verifiedBy, by)
            }, limit)
            XCTAssertEqual(try FileHasher.sha256(path: cheap).sha256, sha)
        }
        XCTAssertEqual(try listDirectory(tmp.file("down")).map(\.name).sorted(), ["big.bin", "cheap-again.bin", "cheap-big.bin"], "no temporary left")
    }

    func testListingPaginatesPastOneThousandKeysAndBatchDeleteRemovesThem() throws {
        let c = try client()
        let bucket = S3TestServer.bucketName("page")
        try c.createBucket(bucket)
        let keys = (0..<1105).map { String(format: "frames/f%05d.tif", $0) } + ["other/x"]
        let failures = Mutex<[String]>([])
        ParallelThreads.run(count: keys.count, width: 16) { _, i in
            do { try c.put(bucket: bucket, key: keys[i], body: Array(keys[i].utf8)) } catch { failures.withLock { $0.append("\(error)") } }
        }
        XCTAssertEqual(failures.withLock { $0 }, [])
        var pages = 0
        let listed = try c.list(bucket: bucket, prefix: "frames/", page: { _ in pages += 1 })
        XCTAssertEqual(pages, 2)
        XCTAssertEqual(listed.objects.map(\.key), keys.filter { $0.hasPrefix("frames/") }.sorted())
        let top = try c.list(bucket: bucket, delimiter: "/")
        XCTAssertEqual(top.prefixes, ["frames/", "other/"])
        XCTAssertTrue(top.objects.isEmpty)
        XCTAssertEqual(try c.delete(bucket: bucket, keys: keys).count, 0)
        XCTAssertEqual(try c.list(bucket: bucket).objects.count, 0)
    }

    func testErrorsNameTheObjectAndWhatToDoAndNeverTheSecret() throws {
        let c = try client()
        let bucket = S3TestServer.bucketName("err")
        try c.createBucket(bucket)
        try c.put(bucket: bucket, key: "k", body: [1, 2, 3])

        let wrongSecret = "not-the-secret-\(UInt32.random(in: 0...UInt32.max))"
        do {
            let e = failure { _ = try client(attempts: 1, secret: wrongSecret).list(bucket: bucket) }
            XCTAssertEqual(e.status, 403); XCTAssertEqual(e.code, "SignatureDoesNotMatch")
            XCTAssertTrue(e.description.contains("secret"), e.description)
            XCTAssertFalse(e.description.contains(wrongSecret)); XCTAssertFalse(e.description.contains(server.secretKey))
            XCTAssertFalse(e.retryable)
        }
        do {
            let e = failure { _ = try client(attempts: 1, key: "NOSUCHKEYID").list(bucket: bucket) }
            XCTAssertEqual(e.code, "InvalidAccessKeyId"); XCTAssertTrue(e.description.contains(server.endpoint)) }

        do {
            let e = failure { _ = try c.list(bucket: bucket + "-missing") }
            XCTAssertEqual(e.code, "NoSuchBucket"); XCTAssertTrue(e.description.contains("s3://\(bucket)-missing/"), e.description)
        }
        let dest = tmp.file("never.bin")
        do {
            let e = failure { try c.download(bucket: bucket, key: "no/such key", to: dest) }
            XCTAssertEqual(e.status, 404); XCTAssertTrue(e.description.contains("s3://\(bucket)/no/such key"), e.description)
        }
        XCTAssertFalse(tmp.exists(dest))
        XCTAssertNil(try c.head(bucket: bucket, key: "no/such key"))
        // Through the command line too: one error line, non-zero exit, no secret.
        let out = try ProcessRunner.run(Tools.emflow, ["s3", "ls", "s3://\(bucket)/"],
                                        environment: server.childEnvironment(extra: ["AWS_SECRET_ACCESS_KEY": wrongSecret]))
        XCTAssertNotEqual(out.status, 0)
        XCTAssertTrue(out.stderr.contains("SignatureDoesNotMatch") && out.stderr.contains("AWS_SECRET_ACCESS_KEY"), out.stderr)
        XCTAssertFalse(out.combined.contains(wrongSecret))
    }

    func testADamagedObjectIsNeverWrittenToTheDestination() throws {
        let c = try client(partSize: 5 << 20)
        let bucket = S3TestServer.bucketName("bad")
        try c.createBucket(bucket)
        // Recorded SHA-256 that the content does not have (as if the object were corrupted at rest).
        try c.put(bucket: bucket, key: "k", body: random(1000), metadata: ["sha256": String(repeating: "ab", count: 32)])
        let dest = tmp.file("out/k")
        do {
            let e = failure { try c.download(bucket: bucket, key: "k", to: dest) }
            XCTAssertEqual(e.code, "ChecksumMismatch"); XCTAssertTrue(e.description.contains("s3://\(bucket)/k")) }
        XCTAssertEqual(try listDirectory(tmp.file("out")).count, 0, "no file, no temporary left")

        // A multipart object checked by its parts: a composite checksum that its parts do not give
        // (as if a part were damaged) fails the same way.
        let three = random(12 << 20)
        try c.upload(file: tmp.write("three.bin", three), bucket: bucket, key: "three.bin")
        let head = try XCTUnwrap(try c.head(bucket: bucket, key: "three.bin"))
        XCTAssertEqual(head.compositeSHA256?.parts, 3)
        // A recorded CRC-32C that the content does not give fails (the object has a good one).
        var forged = head
        XCTAssertEqual(head.recordedCRC32C, CRC32C.checksum(three))
        forged.metadata["crc32c"] = CRC32C(value: ~CRC32C.checksum(three).value).base64
        do {
            let e = failure { try c.download(bucket: bucket, key: "three.bin", to: tmp.file("out/three.bin"), known: forged, sha256: false) }
            XCTAssertEqual(e.code, "ChecksumMismatch"); XCTAssertTrue(e.description.contains("crc32c"), e.description) }
        XCTAssertEqual(try listDirectory(tmp.file("out")).count, 0, "no file, no temporary left")
        forged.metadata["crc32c"] = nil   // as if uploaded without one: checked by its parts
        forged.checksumSHA256 = Data(repeating: 7, count: 32).base64EncodedString() + "-3"
        do {
            let e = failure { try c.download(bucket: bucket, key: "three.bin", to: tmp.file("out/three.bin"), known: forged, sha256: false) }
            XCTAssertEqual(e.code, "ChecksumMismatch"); XCTAssertTrue(e.description.contains("3 parts"), e.description) }
        XCTAssertEqual(try listDirectory(tmp.file("out")).count, 0, "no file, no temporary left")
        // Parts that cannot be laid out (the count does not fit the first part's size): the whole
        // content is hashed and checked against x-amz-meta-sha256 instead.
        forged.checksumSHA256 = String(head.checksumSHA256!.split(separator: "-")[0]) + "-4"
        let whole = try c.download(bucket: bucket, key: "three.bin", to: tmp.file("out/three.bin"), known: forged, sha256: false)
        XCTAssertEqual(whole.verifiedBy, "sha256")
        XCTAssertEqual(try readFile(tmp.file("out/three.bin")), three)

        // An upload whose source does not match the sha256 it is said to have is aborted: no object, no parts.
        let src = tmp.write("src.bin", random(12 << 20))
        do {
            let e = failure { try c.upload(file: src, bucket: bucket, key: "changed.bin", sha256: String(repeating: "0", count: 64)) }
            XCTAssertEqual(e.code, "SourceChanged") }
        XCTAssertNil(try c.head(bucket: bucket, key: "changed.bin"))
        XCTAssertEqual(try c.incompleteUploads(bucket: bucket).count, 0)

        // A file that changes after its whole and part digests were taken, while its parts go out
        // (one at a time here): the server refuses the changed part, emflow tells that from a damaged
        // transfer at once (no retries) and aborts. The metadata's sha256 would otherwise be a lie.
        let seq = try client(partSize: 5 << 20, concurrency: 1, attempts: 8)
        let growing = tmp.write("growing.bin", random(12 << 20))
        let changedOnce = Mutex(false)
        let started = Date()
        do {
            let e = failure {
                try seq.upload(file: growing, bucket: bucket, key: "growing.bin", progress: { _ in
                    guard changedOnce.withLock({ let first = !$0; $0 = true; return first }) else { return }
                    // After part 1 is in: rewrite a byte of part 3.
                    let h = FileHandle(forUpdatingAtPath: growing)!
                    try? h.seek(toOffset: 11 << 20)
                    try? h.write(contentsOf: Data([0xEE, 0xFF]))
                    try? h.close()
                })
            }
            XCTAssertEqual(e.code, "SourceChanged", e.description)
            XCTAssertTrue(e.description.contains("part 3"), e.description)
            XCTAssertFalse(e.description.contains("attempts"), e.description)
        }
        XCTAssertLessThan(Date().timeIntervalSince(started), 20, "no backoff for a source that changed")
        XCTAssertNil(try c.head(bucket: bucket, key: "growing.bin"))
        XCTAssertEqual(try c.incompleteUploads(bucket: bucket).count, 0)
    }

    func testDownloadAndMultipartUploadSurviveTheServerBeingKilledMidTransfer() throws {
        let server = self.server!
        let c = try client(partSize: 5 << 20, concurrency: 2)
        let bucket = S3TestServer.bucketName("crash")
        try c.createBucket(bucket)
        let data = random(31 << 20)
        let src = tmp.write("src.bin", data)
        try c.upload(file: src, bucket: bucket, key: "stack.bin")

        // Download: the first finished part waits while the server is killed, then restarted.
        let killed = Atomic<Bool>(false)
        let dest = tmp.file("down/stack.bin")
        let r = try c.download(bucket: bucket, key: "stack.bin", to: dest, progress: { _ in
            if killed.compareExchange(expected: false, desired: true, ordering: .relaxed).exchanged {
                server.crash()
                Thread { Thread.sleep(forTimeInterval: 1.5); server.restart() }.start()
            }
        })
        XCTAssertTrue(killed.load(ordering: .relaxed))
        XCTAssertEqual(r.sha256, SHA256Hasher.hash(data))
        XCTAssertEqual(try FileHasher.sha256(path: dest).sha256, SHA256Hasher.hash(data))
        waitForServer(c, bucket)

        // The same without a SHA-256 wanted, checked by the recorded CRC-32C (each range's CRC goes
        // on where the cut-off left it); and, for an object uploaded with its SHA-256 known (no CRC
        // recorded), part by part (each part's hash goes on likewise).
        try c.upload(file: src, bucket: bucket, key: "known.bin", sha256: SHA256Hasher.hash(data))
        for (key, by) in [("stack.bin", "crc32c"), ("known.bin", "sha256 of 7 parts")] {
            let killedCheap = Atomic<Bool>(false)
            let cheap = tmp.file("down/cheap-" + key)
            let p = try c.download(bucket: bucket, key: key, to: cheap, sha256: false, progress: { _ in
                if killedCheap.compareExchange(expected: false, desired: true, ordering: .relaxed).exchanged {
                    server.crash()
                    Thread { Thread.sleep(forTimeInterval: 1.5); server.restart() }.start()
                }
            })
            XCTAssertTrue(killedCheap.load(ordering: .relaxed))
            XCTAssertEqual(p.verifiedBy, by)
            XCTAssertEqual(try FileHasher.sha256(path: cheap).sha256, SHA256Hasher.hash(data))
            waitForServer(c, bucket)
        }

        // Multipart upload: killed after the first part; the others are retried; one whole object results.
        let killed2 = Atomic<Bool>(false)
        let u = try c.upload(file: src, bucket: bucket, key: "again.bin", progress: { _ in
            if killed2.compareExchange(expected: false, desired: true, ordering: .relaxed).exchanged {
                server.crash()
                Thread { Thread.sleep(forTimeInterval: 1.5); server.restart() }.start()
            }
        })
        XCTAssertTrue(killed2.load(ordering: .relaxed))
        waitForServer(c, bucket)
        XCTAssertEqual(u.sha256, SHA256Hasher.hash(data))
        let again = tmp.file("down/again.bin")
        try c.download(bucket: bucket, key: "again.bin", to: again)
        XCTAssertEqual(try readFile(again), data)
        let viaAWS = tmp.file("aws-again")
        XCTAssertEqual(try aws(["s3", "cp", "--no-progress", "s3://\(bucket)/again.bin", viaAWS]).status, 0)
        XCTAssertEqual(try FileHasher.sha256(path: viaAWS).sha256, SHA256Hasher.hash(data))

        // A server that stays down: the upload fails clearly and leaves no object behind.
        server.crash()
        let quick = try client(partSize: 5 << 20, concurrency: 2, attempts: 2)
        do {
            let e = failure { try quick.upload(file: src, bucket: bucket, key: "never.bin") }
            XCTAssertNil(e.status); XCTAssertTrue(e.description.contains("s3://\(bucket)/never.bin"), e.description) }
        XCTAssertTrue(server.restart())
        waitForServer(c, bucket)
        XCTAssertNil(try c.head(bucket: bucket, key: "never.bin"))
    }

    /// The S3Error `body` fails with; a test failure if it succeeds or fails otherwise.
    func failure(file: StaticString = #filePath, line: UInt = #line, _ body: () throws -> Void) -> S3Error {
        do { try body() } catch let e as S3Error { return e } catch { XCTFail("not an S3Error: \(error)", file: file, line: line) }
        XCTFail("expected a failure, it succeeded", file: file, line: line)
        return S3Error(operation: "", bucket: nil, key: nil, status: nil, code: nil, message: "", hint: "")
    }

    func waitForServer(_ c: S3Client, _ bucket: String) {
        for _ in 0..<100 {
            if (try? c.list(bucket: bucket)) != nil { return }
            Thread.sleep(forTimeInterval: 0.2)
        }
    }
}
