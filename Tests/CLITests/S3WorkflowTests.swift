import XCTest
import Foundation
import TestSupport

/// workflows with s3:// inputs, as users run them against a real S3 server: stage-in → checksum →
/// convert → publish; bad objects fail alone; re-runs redo nothing; a replaced object is staged again;
/// the raw bucket is never written; the secret appears nowhere a run leaves things.
final class S3WorkflowTests: XCTestCase {
    var t: TempDir!
    var server: S3TestServer!
    override func setUpWithError() throws {
        server = try S3TestServer.require()
        t = TempDir("emflow-s3wf")
    }
    override func tearDown() { t?.cleanup() }

    func emflow(_ args: [String], env: [String: String] = [:]) throws -> ProcessOutput {
        try ProcessRunner.run(Tools.emflow, args, environment: server.childEnvironment(extra: env), cwd: t.path)
    }

    func sha256(_ path: String) throws -> String {
        let out = try ProcessRunner.run("/usr/bin/sha256sum", [path])
        return String(out.stdout.prefix(64))
    }

    /// `s3 cp --sha256`: a known digest replaces the pass over the file before a multipart upload;
    /// the file is checked against it as its parts go out, and a wrong one uploads nothing.
    func testCopyWithAKnownSHA256ChecksTheFileAgainstItAndStoresIt() throws {
        let bucket = "emflow-sha-" + String(UInt32.random(in: 0...UInt32.max), radix: 36)
        XCTAssertEqual(try emflow(["s3", "mb", "s3://\(bucket)"]).status, 0)
        var bytes = [UInt8](repeating: 0, count: 20 << 20)   // 16 MiB parts: a multipart upload of 2
        for i in stride(from: 0, to: bytes.count, by: 4096) { bytes[i] = UInt8.random(in: 0...255) }
        let file = t.write("big.bin", bytes)
        let sha = try sha256(file)
        func headObject(_ key: String) throws -> ProcessOutput {
            try ProcessRunner.run(Tools.packageRoot + "/.venv/bin/aws", ["--endpoint-url", server.endpoint, "s3api", "head-object",
                                  "--bucket", bucket, "--key", key], environment: server.childEnvironment())
        }
        let ok = try emflow(["s3", "cp", "--quiet", "--sha256", sha.uppercased(), file, "s3://\(bucket)/big.bin"])
        XCTAssertEqual(ok.status, 0, ok.combined)
        let head = try headObject("big.bin")
        XCTAssertTrue(head.stdout.contains("\"sha256\": \"\(sha)\""), head.combined)
        // Downloaded again, it is checked by its parts' SHA-256 digests, and --json says so.
        let down = try emflow(["s3", "cp", "--json", "s3://\(bucket)/big.bin", t.file("big-down.bin")])
        XCTAssertEqual(down.status, 0, down.combined)
        let summary = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(down.stdout.utf8)) as? [String: Any])
        XCTAssertEqual(summary["verified"] as? [String: Int], ["sha256 of parts": 1], down.stdout)
        XCTAssertEqual(try sha256(t.file("big-down.bin")), sha)

        let wrong = String(repeating: "0", count: 64)
        let bad = try emflow(["s3", "cp", "--quiet", "--sha256", wrong, file, "s3://\(bucket)/wrong.bin"])
        XCTAssertEqual(bad.status, 1, bad.combined)
        XCTAssertTrue(bad.stderr.contains("reads as sha256 \(sha), not the recorded \(wrong)"), bad.stderr)
        XCTAssertNotEqual(try headObject("wrong.bin").status, 0, "no object")

        let notHex = try emflow(["s3", "cp", "--sha256", "abc", file, "s3://\(bucket)/x.bin"])
        XCTAssertEqual(notHex.status, 2, notHex.combined)
        XCTAssertTrue(notHex.stderr.contains("64 hex digits"), notHex.stderr)
        let download = try emflow(["s3", "cp", "--sha256", sha, "s3://\(bucket)/big.bin", t.file("down.bin")])
        XCTAssertEqual(download.status, 2, download.combined)
        XCTAssertTrue(download.stderr.contains("for uploading one file"), download.stderr)
        XCTAssertEqual(try emflow(["s3", "cp", "--no-such-option", file, "s3://\(bucket)/x.bin"]).status, 2, "usage errors exit 2, as documented")
    }

    /// `s3 cp` records a CRC-32C with what it uploads, and a download is checked by it (the summary
    /// says so); `--check-sha256` checks the recorded SHA-256 instead, and is refused for an upload.
    func testDownloadsAreCheckedByTheRecordedCRC32COrOnRequestTheSHA256() throws {
        let bucket = "emflow-crc-" + String(UInt32.random(in: 0...UInt32.max), radix: 36)
        XCTAssertEqual(try emflow(["s3", "mb", "s3://\(bucket)"]).status, 0)
        var bytes = [UInt8](repeating: 0, count: 20 << 20)   // a multipart upload of 2
        for i in stride(from: 0, to: bytes.count, by: 4096) { bytes[i] = UInt8.random(in: 0...255) }
        let file = t.write("plain.bin", bytes)
        let sha = try sha256(file)
        XCTAssertEqual(try emflow(["s3", "cp", "--quiet", file, "s3://\(bucket)/plain.bin"]).status, 0)
        for (flags, by) in [([String](), "crc32c"), (["--check-sha256"], "sha256")] {
            let dest = t.file("down\(flags.count)/plain.bin")
            let down = try emflow(["s3", "cp", "--json"] + flags + ["s3://\(bucket)/plain.bin", dest])
            XCTAssertEqual(down.status, 0, down.combined)
            let summary = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(down.stdout.utf8)) as? [String: Any])
            XCTAssertEqual(summary["verified"] as? [String: Int], [by: 1], down.stdout)
            XCTAssertEqual(try sha256(dest), sha)
        }
        let text = try emflow(["s3", "cp", "s3://\(bucket)/plain.bin", t.file("down-text/plain.bin")])
        XCTAssertTrue(text.stderr.contains("checked by crc32c ×1"), text.stderr)
        let upload = try emflow(["s3", "cp", "--check-sha256", file, "s3://\(bucket)/again.bin"])
        XCTAssertEqual(upload.status, 2, upload.combined)
        XCTAssertTrue(upload.stderr.contains("--check-sha256 is for downloads"), upload.stderr)
    }

    /// `s3 cp --etags opaque` for a server whose ETags are no MD5 digests (scripts/etag-proxy makes
    /// the test server one): without it, an object another client uploaded fails its ETag check and
    /// the error names the option; with it, the object is checked by size, and the summary says why.
    func testCopyFromAServerWithOpaqueETagsNeedsSayingSo() throws {
        let bucket = "emflow-opq-" + String(UInt32.random(in: 0...UInt32.max), radix: 36)
        XCTAssertEqual(try emflow(["s3", "mb", "s3://\(bucket)"]).status, 0)
        let file = t.write("other.bin", (0..<5000).map { UInt8(truncatingIfNeeded: $0 &* 7) })
        let aws = try ProcessRunner.run(Tools.packageRoot + "/.venv/bin/aws", ["--endpoint-url", server.endpoint, "s3", "cp", "--no-progress",
                                        file, "s3://\(bucket)/other.bin"], environment: server.childEnvironment())
        XCTAssertEqual(aws.status, 0, aws.combined)
        let proxy = try OpaqueETagProxy(server)
        defer { proxy.stop() }
        let env = ["AWS_ENDPOINT_URL": proxy.endpoint]
        let refused = try emflow(["s3", "cp", "s3://\(bucket)/other.bin", t.file("md5/other.bin")], env: env)
        XCTAssertEqual(refused.status, 1, refused.combined)
        XCTAssertTrue(refused.stderr.contains("ChecksumMismatch") || refused.stderr.contains("does not verify"), refused.stderr)
        XCTAssertTrue(refused.stderr.contains("--etags opaque"), refused.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: t.file("md5/other.bin")))
        let ok = try emflow(["s3", "cp", "--etags", "opaque", "s3://\(bucket)/other.bin", t.file("opaque/other.bin")], env: env)
        XCTAssertEqual(ok.status, 0, ok.combined)
        XCTAssertTrue(ok.stderr.contains("checked by size") && ok.stderr.contains("taken for no digest (--etags opaque)"), ok.stderr)
        XCTAssertEqual(FileManager.default.contents(atPath: t.file("opaque/other.bin")), FileManager.default.contents(atPath: file))
        XCTAssertEqual(try emflow(["s3", "cp", "--etags", "sha1", "s3://\(bucket)/other.bin", t.file("x.bin")], env: env).status, 2)
    }

    func testS3WorkflowStagesConvertsPublishesAndNeverLeaksTheSecret() throws {
        let tag = String(UInt32.random(in: 0...UInt32.max), radix: 36)
        let raw = "lame-raw-test-\(tag)", mirror = "lame-ofed-test-\(tag)"
        XCTAssertEqual(try emflow(["s3", "mb", "s3://\(raw)"]).status, 0)
        XCTAssertEqual(try emflow(["s3", "mb", "s3://\(mirror)"]).status, 0)
        let fixtures = try Fixtures.vendorSet(in: t.file("fixtures"), size: 64)
        let bad = try Fixtures.badSet(in: t.file("fixtures"))
        let good = ["fei_helios.tif", "zeiss_sigma.tif", "jeol_jsm.tif", "tvips_camera.tif"]
        for name in good {
            XCTAssertEqual(try emflow(["s3", "cp", "--quiet", fixtures[name]!, "s3://\(raw)/P1/S1/E1/raw/\(name)"]).status, 0)
        }
        XCTAssertEqual(try emflow(["s3", "cp", "--quiet", t.file("fixtures/jeol_jsm.txt"), "s3://\(raw)/P1/S1/E1/raw/jeol_jsm.txt"]).status, 0)
        let badName = bad.keys.sorted()[0]
        XCTAssertEqual(try emflow(["s3", "cp", "--quiet", bad[badName]!, "s3://\(raw)/P1/S2/E1/raw/\(badName)"]).status, 0)
        // A key that is also a "directory" of another key: reported, not staged; the rest goes on.
        XCTAssertEqual(try emflow(["s3", "cp", "--quiet", fixtures["fei_helios.tif"]!, "s3://\(raw)/P1/S3/E1/raw/x.tif"]).status, 0)
        XCTAssertEqual(try emflow(["s3", "cp", "--quiet", fixtures["fei_helios.tif"]!, "s3://\(raw)/P1/S3/E1/raw/x.tif/y.tif"]).status, 0)

        _ = try ProcessRunner.run("/bin/cp", ["-r", Tools.packageRoot + "/Mappings", t.file("mappings")])
        let spec = t.write("spec.yaml", """
            name: s3-test
            inputs: [{path: "s3://\(raw)/", include: ["**/*.tif"], layout: "{proposal}/{sample}/{experiment}/raw/{file}"}]
            outputs: {root: managed}
            s3: {concurrency: 4}
            context: {samples: {S1: {atom_types: "Fe, C"}}}
            stages:
              stage-in: {uses: stage-in, with: {to: staging}}
              checksum: {uses: checksum, needs: [stage-in]}
              convert: {uses: convert, needs: [checksum], with: {to: nxem, mappings: mappings, timezone: Europe/Rome}, retry: {tries: 1}}
              publish: {uses: publish, needs: [convert], with: {url_expiry: 600}}
            """)
        var outputs: [ProcessOutput] = []
        let first = try emflow(["run", "--quiet", spec]); outputs.append(first)
        XCTAssertEqual(first.status, 1, "the bad TIFF and the clashing key fail alone: \(first.combined)")
        XCTAssertTrue(first.combined.contains("P1/S3/E1/raw/x.tif is both an object and the prefix"), first.combined)
        XCTAssertTrue(first.combined.contains(badName), first.combined)

        // Every good file: staged (read-only), converted, published with its SHA-256 under the same key.
        let listing = try emflow(["s3", "ls", "-r", "--json", "s3://\(mirror)/"])
        for name in good {
            let stem = String(name.dropLast(4))
            let local = t.file("managed/P1/S1/E1/nexus/\(stem).nxs")
            XCTAssertTrue(t.exists(local), name)
            XCTAssertTrue(listing.stdout.contains("P1/S1/E1/raw/\(stem).nxs"), listing.stdout)
            let head = try ProcessRunner.run(Tools.packageRoot + "/.venv/bin/aws",
                                             ["--endpoint-url", server.endpoint, "s3api", "head-object", "--bucket", mirror, "--key", "P1/S1/E1/raw/\(stem).nxs"],
                                             environment: server.childEnvironment())
            XCTAssertTrue(head.stdout.contains(try sha256(local)), head.combined)
            let staged = t.file("staging/\(raw)/P1/S1/E1/raw/\(name)")
            XCTAssertEqual(try sha256(staged), try sha256(fixtures[name]!))
            XCTAssertEqual(try FileManager.default.attributesOfItem(atPath: staged)[.posixPermissions] as? Int, 0o444)
        }
        XCTAssertTrue(t.exists("staging/\(raw)/P1/S1/E1/raw/jeol_jsm.txt"), "the JEOL sidecar came along")
        XCTAssertFalse(listing.stdout.contains(badName.replacingOccurrences(of: ".tif", with: ".nxs")))
        XCTAssertEqual(try NexusValidator.problems(good.map { t.file("managed/P1/S1/E1/nexus/\($0.dropLast(4)).nxs") }), [:])

        // Manifests: SHA256SUMS matches the local files; the aria2 manifest's presigned URLs work without credentials.
        let sums = t.file("SHA256SUMS")
        XCTAssertEqual(try emflow(["s3", "cp", "--quiet", "s3://\(mirror)/P1/SHA256SUMS", sums]).status, 0)
        let sumsText = t.read("SHA256SUMS") ?? ""
        XCTAssertEqual(sumsText.split(separator: "\n").count, good.count)
        XCTAssertTrue(sumsText.contains("\(try sha256(t.file("managed/P1/S1/E1/nexus/fei_helios.nxs")))  S1/E1/raw/fei_helios.nxs"), sumsText)
        XCTAssertEqual(try emflow(["s3", "cp", "--quiet", "s3://\(mirror)/P1/download.aria2", t.file("download.aria2")]).status, 0)
        let aria = t.read("download.aria2") ?? ""
        let url = try XCTUnwrap(aria.split(separator: "\n").first { $0.hasPrefix("http") })
        XCTAssertTrue(aria.contains("  out=S1/E1/raw/") && aria.contains("  checksum=sha-256="), aria)
        let fetched = try ProcessRunner.run("/usr/bin/curl", ["-sf", "-o", t.file("fetched.nxs"), String(url)], environment: ["AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""])
        XCTAssertEqual(fetched.status, 0)
        XCTAssertTrue(sumsText.contains(try sha256(t.file("fetched.nxs"))))
        XCTAssertEqual(try emflow(["s3", "cp", "--quiet", "s3://\(mirror)/P1/S1/E1/README.txt", t.file("README.txt")]).status, 0)
        XCTAssertTrue((t.read("README.txt") ?? "").contains("fei_helios.nxs"))

        // Again: nothing is fetched, converted or uploaded twice.
        let second = try emflow(["run", spec]); outputs.append(second)
        XCTAssertTrue(second.combined.contains("stage stage-in: 0 done"), second.combined)
        XCTAssertTrue(second.combined.contains("stage publish: 0 done"), second.combined)

        // A replaced raw object (new ETag) is staged and converted again; the old NeXus file stays.
        XCTAssertEqual(try emflow(["s3", "cp", "--quiet", fixtures["zeiss_sigma.tif"]!, "s3://\(raw)/P1/S1/E1/raw/fei_helios.tif"]).status, 0)
        let third = try emflow(["run", spec]); outputs.append(third)
        XCTAssertTrue(third.combined.contains("stage stage-in: 1 done"), third.combined)
        XCTAssertEqual(try sha256(t.file("staging/\(raw)/P1/S1/E1/raw/fei_helios.tif")), try sha256(fixtures["zeiss_sigma.tif"]!))

        // The raw bucket is never a publishing target.
        let rawSpec = t.write("raw.yaml", (t.read("spec.yaml") ?? "").replacingOccurrences(of: "with: {url_expiry: 600}", with: "with: {bucket: \(raw)}")
            .replacingOccurrences(of: "name: s3-test", with: "name: s3-raw"))
        let refused = try emflow(["run", rawSpec]); outputs.append(refused)
        XCTAssertNotEqual(refused.status, 0)
        XCTAssertTrue(refused.combined.contains("refusing to write into s3://\(raw)"), refused.combined)
        XCTAssertFalse((try emflow(["s3", "ls", "-r", "s3://\(raw)/"])).stdout.contains(".nxs"))

        // Wrong credentials: one clear error naming the bucket and what to check, exit 3, nothing run.
        let wrong = try emflow(["run", spec], env: ["AWS_SECRET_ACCESS_KEY": "wrong-" + server.secretKey]); outputs.append(wrong)
        XCTAssertEqual(wrong.status, 3, wrong.combined)
        XCTAssertTrue(wrong.combined.contains("SignatureDoesNotMatch") && wrong.combined.contains("s3://\(raw)/"), wrong.combined)

        // The secret is nowhere: not in any file the runs left (catalog, results, logs, outputs, manifests) nor in their output.
        let secret = server.secretKey
        for o in outputs { XCTAssertFalse(o.combined.contains(secret)) }
        let grep = try ProcessRunner.run("/bin/grep", ["-rl", "--binary-files=text", secret, t.path])
        XCTAssertEqual(grep.stdout, "", "files holding the secret: \(grep.stdout)")
        XCTAssertFalse(aria.contains(secret))
    }
}
