import XCTest
import S3Stage
import TestSupport

final class S3ConfigTests: XCTestCase {
    func testEnvironmentThenProfileFilesLikeTheAWSTools() throws {
        let t = TempDir("awsconf"); defer { t.cleanup() }
        let creds = t.write("credentials", """
            [default]
            aws_access_key_id = DEFAULTKEY
            aws_secret_access_key = defaultsecret

            [orfeo]
            aws_access_key_id = ORFEOKEY
            aws_secret_access_key = orfeosecret
            """)
        let conf = t.write("config", """
            [default]
            region = eu-south-1
            [profile orfeo]
            region = it-ts-1
            s3 =
              endpoint_url = https://rgw.orfeo.example:8443
            ca_bundle = /etc/ssl/orfeo-ca.pem
            """)
        let base = ["HOME": t.path, "AWS_SHARED_CREDENTIALS_FILE": creds, "AWS_CONFIG_FILE": conf]

        let d = try S3Config.resolve(environment: base)
        XCTAssertEqual(d.credentials.accessKeyID, "DEFAULTKEY")
        XCTAssertEqual(d.region, "eu-south-1")
        XCTAssertEqual(d.endpoint, "https://s3.eu-south-1.amazonaws.com")
        XCTAssertEqual(d.addressing, .virtual)

        let o = try S3Config.resolve(environment: base.merging(["AWS_PROFILE": "orfeo"]) { $1 })
        XCTAssertEqual(o.credentials.accessKeyID, "ORFEOKEY")
        XCTAssertEqual(o.endpoint, "https://rgw.orfeo.example:8443")
        XCTAssertEqual(o.addressing, .path)
        XCTAssertEqual(o.region, "it-ts-1")
        XCTAssertEqual(o.http.caBundle, "/etc/ssl/orfeo-ca.pem")
        XCTAssertTrue(o.credentialSource.contains("orfeo"))
        XCTAssertFalse(o.credentialSource.contains("orfeosecret"))

        // Environment credentials win over the default profile; an explicit profile wins over them.
        let env = base.merging(["AWS_ACCESS_KEY_ID": "ENVKEY", "AWS_SECRET_ACCESS_KEY": "envsecret",
                                "AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_CA_BUNDLE": "/ca.pem"]) { $1 }
        let e = try S3Config.resolve(environment: env)
        XCTAssertEqual(e.credentials.accessKeyID, "ENVKEY")
        XCTAssertEqual(e.endpoint, "http://127.0.0.1:9000")
        XCTAssertEqual(e.http.caBundle, "/ca.pem")
        XCTAssertFalse(e.http.insecure)
        var named = S3Config.Overrides(); named.profile = "orfeo"; named.insecure = true
        let n = try S3Config.resolve(named, environment: env)
        XCTAssertEqual(n.credentials.accessKeyID, "ORFEOKEY")
        XCTAssertTrue(n.http.insecure)
        XCTAssertEqual("\(n.credentials.secretAccessKey)", "***")
    }

    func testMissingCredentialsAndBadEndpointsSayWhatToDo() {
        XCTAssertThrowsError(try S3Config.resolve(environment: ["HOME": "/nonexistent"])) { e in
            XCTAssertTrue("\(e)".contains("AWS_ACCESS_KEY_ID"), "\(e)")
        }
        let env = ["HOME": "/nonexistent", "AWS_ACCESS_KEY_ID": "K", "AWS_SECRET_ACCESS_KEY": "S"]
        for bad in ["ftp://host", "127.0.0.1:9000", "http://host:99999", "http://host/path"] {
            XCTAssertThrowsError(try S3Config.resolve(environment: env.merging(["AWS_ENDPOINT_URL": bad]) { $1 })) { e in
                XCTAssertTrue("\(e)".contains(bad) && "\(e)".contains("AWS_ENDPOINT_URL"), "\(e)")
            }
        }
    }

    func testKeysBecomePathsOnlyWhenSafe() {
        func rel(_ k: String, _ p: String = "raw/") -> String? { try? ObjectPaths.relativePath(key: k, prefix: p).get() }
        XCTAssertEqual(rel("raw/P1/S1/a b ü.tif"), "P1/S1/a b ü.tif")
        XCTAssertEqual(rel("raw/x", "raw"), "x")
        XCTAssertEqual(rel("a/b", ""), "a/b")
        for bad in ["raw/../etc/passwd", "raw/a/../../x", "raw//abs", "raw/./x", "raw/a\u{0}b", "raw/a\nb", "raw/", "raw/" + String(repeating: "x", count: 300)] {
            XCTAssertNil(rel(bad), bad)
        }
        if case .failure(let e) = ObjectPaths.relativePath(key: "raw/../x", prefix: "raw/") {
            XCTAssertTrue(e.description.contains("'..'") && e.description.contains("raw/../x"), e.description)
        }
        XCTAssertEqual(ObjectPaths.fileDirectoryClashes(["a", "a/b", "c/d", "c/e", "x/y/z", "x/y"]), ["a", "x/y"])
        XCTAssertEqual(S3URI("s3://bucket/some/key")?.key, "some/key")
        XCTAssertNil(S3URI("s3:///key"))
    }
}
