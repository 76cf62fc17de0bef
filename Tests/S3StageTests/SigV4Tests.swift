import XCTest
import S3Stage

/// AWS's published Signature Version 4 examples (the S3 developer guide's "examples of signature
/// calculations" and the presigned URL example), checked value for value.
final class SigV4Tests: XCTestCase {
    let s3Example = Credentials(accessKeyID: "AKIAIOSFODNN7EXAMPLE", secretAccessKey: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")

    func testS3GetObjectWithRangeExample() {
        let r = SignableRequest(method: "GET", path: "/test.txt", headers: [
            ("Host", "examplebucket.s3.amazonaws.com"), ("Range", "bytes=0-9"),
            ("x-amz-content-sha256", SignableRequest.emptyPayloadHash), ("x-amz-date", "20130524T000000Z"),
        ], payloadHash: SignableRequest.emptyPayloadHash)
        let s = SigV4.sign(r, credentials: s3Example, region: "us-east-1", amzDate: "20130524T000000Z")
        XCTAssertEqual(s.signature, "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41", s.canonicalRequest)
        XCTAssertEqual(s.authorization, "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")
    }

    func testS3PresignedURLExample() {
        let q = SigV4.presignQuery(method: "GET", path: "/test.txt", host: "examplebucket.s3.amazonaws.com", credentials: s3Example,
                                   region: "us-east-1", amzDate: "20130524T000000Z", expires: 86400)
        XCTAssertTrue(q.hasSuffix("X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"), q)
        XCTAssertTrue(q.contains("X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request"), q)
    }

    func testExpiryIsBoundedAndSecretsNeverPrint() {
        let q = SigV4.presignQuery(method: "GET", path: "/k", host: "h", credentials: s3Example, region: "r", amzDate: "20260101T000000Z", expires: 30 * 24 * 3600)
        XCTAssertTrue(q.contains("X-Amz-Expires=604800"), q)
        XCTAssertEqual("\(s3Example.secretAccessKey)", "***")
        XCTAssertFalse("\(s3Example)".contains("wJalr"), "\(s3Example)")
    }

    func testKeysAreEncodedOnceAsS3Expects() {
        XCTAssertEqual(SigV4.encode("/bucket/a b/ü+=.txt", keepSlash: true), "/bucket/a%20b/%C3%BC%2B%3D.txt")
        XCTAssertEqual(SigV4.canonicalQuery([("prefix", "a/b"), ("list-type", "2"), ("continuation-token", "x y")]),
                       "continuation-token=x%20y&list-type=2&prefix=a%2Fb")
    }
}
