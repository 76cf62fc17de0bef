internal import CChecksums
import Foundation

/// CRC-32C, the checksum S3 names CRC32C: a check of transfers and storage that costs a few percent
/// of moving the bytes (about 30 GB/s a core with SSE4.2 here, against 2–3 GB/s for SHA-256), where a
/// SHA-256 is the file's identity (the catalog, SHA256SUMS). It catches what a transfer or a disk
/// does to data, not what an attacker does: an object's writer records both.
///
/// CRCs of consecutive pieces join (`combine`), so parts fetched in parallel are checked each on its
/// own thread and joined in order.
public struct CRC32C: Sendable, Equatable {
    public private(set) var value: UInt32 = 0

    public init() {}
    public init(value: UInt32) { self.value = value }

    public mutating func update(_ bytes: UnsafeRawBufferPointer) {
        guard bytes.count > 0 else { return }
        value = emflow_crc32c(value, bytes.baseAddress, bytes.count)
    }

    public mutating func update(_ bytes: [UInt8]) { bytes.withUnsafeBytes { update($0) } }

    public static func checksum(_ bytes: [UInt8]) -> CRC32C {
        var c = CRC32C()
        c.update(bytes)
        return c
    }

    /// The CRC of `first` followed by `second`, the CRC of `length` bytes.
    public static func combine(_ first: CRC32C, _ second: CRC32C, length: Int64) -> CRC32C {
        CRC32C(value: emflow_crc32c_combine(first.value, second.value, UInt64(length)))
    }

    /// As S3 headers carry it (x-amz-checksum-crc32c): base64 of its four bytes, most significant first.
    public var base64: String {
        Data([UInt8(value >> 24), UInt8((value >> 16) & 0xFF), UInt8((value >> 8) & 0xFF), UInt8(value & 0xFF)]).base64EncodedString()
    }

    /// Parses the S3 form; nil for anything that is not base64 of exactly four bytes.
    public init?(base64 text: String) {
        guard let d = Data(base64Encoded: text), d.count == 4 else { return nil }
        value = d.reduce(0) { $0 << 8 | UInt32($1) }
    }

    /// The portable computation, for checking the fast one against.
    static func portable(_ bytes: UnsafeRawBufferPointer) -> UInt32 {
        emflow_crc32c_portable(0, bytes.baseAddress, bytes.count)
    }
}
