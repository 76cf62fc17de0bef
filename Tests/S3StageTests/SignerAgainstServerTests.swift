import XCTest
import Foundation
import S3Stage
import Checksums
import TestSupport

/// The signer against a real S3 server (SeaweedFS started by scripts/s3-server, signatures enforced).
/// Requests are sent with curl(1) carrying emflow's own Authorization header, so what is tested is
/// the signature: encoding of keys with spaces and non-ASCII, payload hashes, presigned URLs.
final class SignerAgainstServerTests: XCTestCase {
    static var env: [String: String] { S3TestServer.shared?.environment ?? [:] }

    func amzDate() -> String {
        let f = DateFormatter(); f.locale = Locale(identifier: "en_US_POSIX"); f.timeZone = TimeZone(identifier: "UTC")
        f.dateFormat = "yyyyMMdd'T'HHmmss'Z'"
        return f.string(from: Date())
    }

    /// Sends a request signed by SigV4 with curl; returns (HTTP status, body).
    func send(_ method: String, _ path: String, body: [UInt8] = [], headers extra: [(String, String)] = [], secret: String? = nil) throws -> (Int, String) {
        let endpoint = URL(string: Self.env["S3_ENDPOINT"]!)!
        let host = "\(endpoint.host!):\(endpoint.port!)"
        let date = amzDate()
        let payload = SHA256Hasher.hash(body)
        var headers = [("host", host), ("x-amz-date", date), ("x-amz-content-sha256", payload)] + extra
        let creds = Credentials(accessKeyID: Self.env["AWS_ACCESS_KEY_ID"]!, secretAccessKey: secret ?? Self.env["AWS_SECRET_ACCESS_KEY"]!)
        let s = SigV4.sign(SignableRequest(method: method, path: path, headers: headers, payloadHash: payload),
                           credentials: creds, region: "us-east-1", amzDate: date)
        headers.append(("Authorization", s.authorization))
        let t = TempDir("s3req"); defer { t.cleanup() }
        let bodyFile = t.write("body", body)
        var args = ["-s", "-o", t.file("out"), "-w", "%{http_code}", "-X", method, "--data-binary", "@" + bodyFile]
        for (k, v) in headers where k != "host" { args += ["-H", "\(k): \(v)"] }
        if body.isEmpty && method != "PUT" { args.removeAll { $0 == "--data-binary" || $0 == "@" + bodyFile } }
        args.append(endpoint.absoluteString + SigV4.encode(path, keepSlash: true))
        let r = try ProcessRunner.run("/usr/bin/curl", args)
        return (Int(r.stdout) ?? -1, t.read("out") ?? "")
    }

    func testSignedRequestsWorkOnARealServerAndAWrongSecretIsRefused() throws {
        guard S3TestServer.shared != nil else { return XCTFail(S3TestServer.startError) }
        let bucket = "emflow-sig-\(UInt32.random(in: 0...UInt32.max))"
        XCTAssertEqual(try send("PUT", "/\(bucket)").0, 200)
        let data = Array("pixels and metadata".utf8)
        for key in ["plain.tif", "with space/ü ber+plus=eq.tif", "deep/a/b/c.nxs"] {
            let put = try send("PUT", "/\(bucket)/\(key)", body: data, headers: [("x-amz-meta-sha256", SHA256Hasher.hash(data))])
            XCTAssertEqual(put.0, 200, "PUT \(key): \(put.1)")
            let get = try send("GET", "/\(bucket)/\(key)")
            XCTAssertEqual(get.0, 200, key)
            XCTAssertEqual(get.1, "pixels and metadata", key)
        }
        let denied = try send("GET", "/\(bucket)/plain.tif", secret: "not-the-secret")
        XCTAssertEqual(denied.0, 403)
        XCTAssertTrue(denied.1.contains("SignatureDoesNotMatch"), denied.1)

        // A presigned URL works with a plain client and no credentials.
        let endpoint = URL(string: Self.env["S3_ENDPOINT"]!)!
        let q = SigV4.presignQuery(method: "GET", path: "/\(bucket)/plain.tif", host: "\(endpoint.host!):\(endpoint.port!)",
                                   credentials: Credentials(accessKeyID: Self.env["AWS_ACCESS_KEY_ID"]!, secretAccessKey: Self.env["AWS_SECRET_ACCESS_KEY"]!),
                                   region: "us-east-1", amzDate: amzDate(), expires: 300)
        let r = try ProcessRunner.run("/usr/bin/curl", ["-s", endpoint.absoluteString + "/\(bucket)/plain.tif?" + q])
        XCTAssertEqual(r.stdout, "pixels and metadata")
    }
}
