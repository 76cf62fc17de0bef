internal import CCurl
import Foundation
import Synchronization

/// TLS and timeout settings every request of a client shares.
public struct HTTPSettings: Sendable {
    /// A PEM bundle of CA certificates (AWS_CA_BUNDLE); nil = the system's.
    public var caBundle: String? = nil
    /// Skips TLS verification: only when a spec says `insecure: true`.
    public var insecure = false
    public var connectTimeout = 10
    /// A transfer slower than 1 byte/s for this long is a stall (then retried).
    public var stallSeconds = 60
    public init() {}
}

/// One HTTP exchange's outcome. Header names are lowercase.
struct HTTPResponse {
    var status: Int
    var headers: [String: String]
    /// The body, unless a sink took it (error bodies are always kept here).
    var body: [UInt8]
}

/// A failure below HTTP: refused or reset connection, timeout, TLS.
struct TransportError: Error {
    var code: Int
    var message: String
    /// Connection-level failures that a new attempt may not meet.
    var retryable: Bool {
        // couldn't resolve/connect, HTTP/2 errors, partial file, timeout, TLS connect, got nothing,
        // send/recv errors (resets), rewind failed, HTTP/2 stream
        [6, 7, 16, 18, 28, 35, 52, 55, 56, 65, 92].contains(code)
    }
}

/// What a request sends: bytes in memory, or a range of an open file that is read as it goes out
/// (an upload part never sits whole in memory).
enum RequestBody {
    case bytes(UnsafeRawBufferPointer)
    case file(descriptor: Int32, offset: Int64, count: Int)

    var count: Int {
        switch self {
        case .bytes(let b): b.count
        case .file(_, _, let n): n
        }
    }
}

/// State the C callbacks reach through their user pointer.
private final class Exchange {
    var body: RequestBody
    var sent = 0
    /// errno of a failed read of a file body (the request is aborted).
    var readErrno: Int32 = 0
    var status = 0
    var headers: [String: String] = [:]
    var sink: ((Int, UnsafeRawBufferPointer) -> Bool)?
    /// Sees the headers of a 2xx reply once, before its first bytes go to `sink`.
    var start: (([String: String]) -> Void)?
    var collected: [UInt8] = []
    var sinkRefused = false
    init(body: RequestBody, start: (([String: String]) -> Void)?, sink: ((Int, UnsafeRawBufferPointer) -> Bool)?) {
        self.body = body; self.start = start; self.sink = sink
    }
}

private let headerCallback: @convention(c) (UnsafeMutablePointer<CChar>?, Int, Int, UnsafeMutableRawPointer?) -> Int = { ptr, size, n, user in
    let ex = Unmanaged<Exchange>.fromOpaque(user!).takeUnretainedValue()
    let count = size * n
    // Parsed as bytes: Foundation's trimming took a tenth of the CPU of many small downloads.
    let line = trimmed(UnsafeRawBufferPointer(start: ptr, count: count)[...])
    if line.starts(with: "HTTP/".utf8) {
        // A new response (after 100 Continue or a redirect): start over.
        let parts = line.split(separator: 0x20)
        ex.status = parts.count > 1 ? Int(String(decoding: parts[1], as: UTF8.self)) ?? 0 : 0
        ex.headers = [:]
    } else if let colon = line.firstIndex(of: 0x3A) {
        let name = String(decoding: line[..<colon].map { $0 >= 0x41 && $0 <= 0x5A ? $0 | 0x20 : $0 }, as: UTF8.self)
        let value = String(decoding: trimmed(line[(colon + 1)...]), as: UTF8.self)
        ex.headers[name] = ex.headers[name].map { $0 + "," + value } ?? value
    }
    return count
}

/// `bytes` without leading and trailing spaces, tabs, CRs and LFs.
private func trimmed(_ bytes: Slice<UnsafeRawBufferPointer>) -> Slice<UnsafeRawBufferPointer> {
    func space(_ b: UInt8) -> Bool { b == 0x20 || b == 0x09 || b == 0x0D || b == 0x0A }
    guard let first = bytes.firstIndex(where: { !space($0) }), let last = bytes.lastIndex(where: { !space($0) }) else { return bytes[bytes.startIndex..<bytes.startIndex] }
    return bytes[first...last]
}

private let writeCallback: @convention(c) (UnsafeMutablePointer<CChar>?, Int, Int, UnsafeMutableRawPointer?) -> Int = { ptr, size, n, user in
    let ex = Unmanaged<Exchange>.fromOpaque(user!).takeUnretainedValue()
    let count = size * n
    let chunk = UnsafeRawBufferPointer(start: ptr, count: count)
    if (200..<300).contains(ex.status), let sink = ex.sink {
        if let start = ex.start { ex.start = nil; start(ex.headers) }
        if !sink(ex.status, chunk) { ex.sinkRefused = true; return 0 }
    } else if ex.collected.count < 1 << 20 {
        ex.collected.append(contentsOf: chunk)
    }
    return count
}

private let readCallback: @convention(c) (UnsafeMutablePointer<CChar>?, Int, Int, UnsafeMutableRawPointer?) -> Int = { ptr, size, n, user in
    let ex = Unmanaged<Exchange>.fromOpaque(user!).takeUnretainedValue()
    let want = min(size * n, ex.body.count - ex.sent)
    guard want > 0 else { return 0 }
    switch ex.body {
    case .bytes(let b):
        UnsafeMutableRawPointer(ptr!).copyMemory(from: b.baseAddress! + ex.sent, byteCount: want)
        ex.sent += want
        return want
    case .file(let fd, let offset, _):
        var got: Int
        repeat { got = pread(fd, ptr!, want, off_t(offset) + off_t(ex.sent)) } while got < 0 && errno == EINTR
        // A file that shrank under the upload reads short: that is a failure, not an early end.
        guard got > 0 else { ex.readErrno = got == 0 ? EIO : errno; return emflow_curl_readfunc_abort() }
        ex.sent += got
        return got
    }
}

/// libcurl resends a body when a reused connection turns out dead: start the body over.
private let seekCallback: @convention(c) (UnsafeMutableRawPointer?, curl_off_t, Int32) -> Int32 = { user, offset, origin in
    let ex = Unmanaged<Exchange>.fromOpaque(user!).takeUnretainedValue()
    guard origin == SEEK_SET, offset >= 0, Int(offset) <= ex.body.count else { return 2 }  // CURL_SEEKFUNC_CANTSEEK
    ex.sent = Int(offset)
    return 0
}

private let curlReady: Bool = emflow_curl_global_init() == CURLE_OK

/// One libcurl easy handle. Reusing it between requests keeps its connection alive (no new TCP or TLS
/// handshake per object). Used by one thread at a time (the pool hands it out).
final class CurlHandle: @unchecked Sendable {
    private let h: UnsafeMutableRawPointer
    private var errorBuffer = [CChar](repeating: 0, count: Int(CURL_ERROR_SIZE) + 1)

    init?() {
        guard curlReady, let h = curl_easy_init() else { return nil }
        self.h = h
    }

    deinit { curl_easy_cleanup(h) }

    /// Performs one request. `body` must stay valid for the call. `sink` receives a 2xx body as it
    /// arrives, with the status (return false to abort), after `start` has seen the reply's headers;
    /// without a sink the body is collected.
    func perform(method: String, url: String, headers: [(String, String)], body: RequestBody?, settings: HTTPSettings,
                 start: (([String: String]) -> Void)? = nil, sink: ((Int, UnsafeRawBufferPointer) -> Bool)?) throws(TransportError) -> HTTPResponse {
        curl_easy_reset(h)
        let ex = Exchange(body: body ?? .bytes(UnsafeRawBufferPointer(start: nil, count: 0)), start: start, sink: sink)
        let user = Unmanaged.passUnretained(ex).toOpaque()
        var list: UnsafeMutablePointer<curl_slist>? = nil
        // No "Expect: 100-continue" round trip before each upload.
        for line in headers.map({ "\($0.0): \($0.1)" }) + ["Expect:"] { list = curl_slist_append(list, line) }
        defer { curl_slist_free_all(list) }
        let code: CURLcode = errorBuffer.withUnsafeMutableBufferPointer { eb in
            eb[0] = 0
            emflow_curl_setopt_str(h, CURLOPT_URL, url)
            emflow_curl_setopt_long(h, CURLOPT_NOSIGNAL, 1)
            emflow_curl_setopt_ptr(h, CURLOPT_ERRORBUFFER, eb.baseAddress)
            emflow_curl_setopt_slist(h, CURLOPT_HTTPHEADER, list)
            emflow_curl_setopt_long(h, CURLOPT_CONNECTTIMEOUT, settings.connectTimeout)
            emflow_curl_setopt_long(h, CURLOPT_LOW_SPEED_LIMIT, 1)
            emflow_curl_setopt_long(h, CURLOPT_LOW_SPEED_TIME, settings.stallSeconds)
            emflow_curl_setopt_long(h, CURLOPT_TCP_KEEPALIVE, 1)
            emflow_curl_setopt_long(h, CURLOPT_BUFFERSIZE, 512 * 1024)
            emflow_curl_setopt_long(h, CURLOPT_UPLOAD_BUFFERSIZE, 2 * 1024 * 1024)
            if let ca = settings.caBundle { emflow_curl_setopt_str(h, CURLOPT_CAINFO, ca) }
            if settings.insecure {
                emflow_curl_setopt_long(h, CURLOPT_SSL_VERIFYPEER, 0)
                emflow_curl_setopt_long(h, CURLOPT_SSL_VERIFYHOST, 0)
            }
            emflow_curl_setopt_data_cb(h, CURLOPT_HEADERFUNCTION, headerCallback)
            emflow_curl_setopt_ptr(h, CURLOPT_HEADERDATA, user)
            emflow_curl_setopt_data_cb(h, CURLOPT_WRITEFUNCTION, writeCallback)
            emflow_curl_setopt_ptr(h, CURLOPT_WRITEDATA, user)
            switch method {
            case "GET": break
            case "HEAD": emflow_curl_setopt_long(h, CURLOPT_NOBODY, 1)
            default:
                if body != nil || method == "PUT" {
                    emflow_curl_setopt_long(h, CURLOPT_UPLOAD, 1)
                    emflow_curl_setopt_off(h, CURLOPT_INFILESIZE_LARGE, curl_off_t(ex.body.count))
                    emflow_curl_setopt_data_cb(h, CURLOPT_READFUNCTION, readCallback)
                    emflow_curl_setopt_ptr(h, CURLOPT_READDATA, user)
                    emflow_curl_setopt_seek_cb(h, seekCallback)
                    emflow_curl_setopt_ptr(h, CURLOPT_SEEKDATA, user)
                }
                if method != "PUT" { emflow_curl_setopt_str(h, CURLOPT_CUSTOMREQUEST, method) }
            }
            return curl_easy_perform(h)
        }
        withExtendedLifetime(ex) {}
        if code != CURLE_OK {
            let detail = String(decoding: errorBuffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            let text = detail.isEmpty ? String(cString: curl_easy_strerror(code)) : detail
            if ex.readErrno != 0 {
                throw TransportError(code: Int(code.rawValue), message: "reading the source failed: \(String(cString: strerror(ex.readErrno)))")
            }
            throw TransportError(code: Int(code.rawValue), message: ex.sinkRefused ? "the download was stopped: \(text)" : text)
        }
        return HTTPResponse(status: ex.status, headers: ex.headers, body: ex.collected)
    }
}

/// Easy handles kept for reuse, so each worker thread finds a warm connection.
final class HandlePool: Sendable {
    private let idle = Mutex<[CurlHandle]>([])

    func withHandle<T>(_ body: (CurlHandle) throws(S3Error) -> T) throws(S3Error) -> T {
        let taken = idle.withLock { $0.popLast() }
        guard let h = taken ?? CurlHandle() else {
            throw S3Error(operation: "connect", bucket: nil, key: nil, status: nil, code: nil,
                          message: "libcurl could not be initialised", hint: "check the libcurl installation (pkg-config libcurl)")
        }
        defer { idle.withLock { if $0.count < 64 { $0.append(h) } } }
        return try body(h)
    }
}
