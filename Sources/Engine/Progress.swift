import Foundation
import Synchronization
import POSIXFiles

/// Progress of one stage: items done/total, bytes, rate and ETA. On a terminal it redraws one line
/// (at most 5 times a second); otherwise it prints a plain line every 10% or 30 s.
public final class ProgressReporter: Sendable {
    struct State {
        var stage = ""
        var total = 0, done = 0, failed = 0, skipped = 0
        var bytes: Int64 = 0
        /// Bytes read only to be hashed before a transfer can start (an upload's SHA-256 for its metadata).
        var hashed: Int64 = 0
        var start = 0.0, lastDraw = 0.0
        var lastPercentShown = -1
    }
    let state = Mutex(State())
    let tty: Bool
    let enabled: Bool
    let out: FileHandle

    public init(enabled: Bool = true, terminal: Bool? = nil, output: FileHandle = .standardError) {
        self.enabled = enabled
        self.tty = terminal ?? isTerminal(2)
        self.out = output
    }

    static func now() -> Double { Date().timeIntervalSince1970 }

    public func begin(stage: String, total: Int, skipped: Int) {
        state.withLock { s in s = State(); s.stage = stage; s.total = total; s.skipped = skipped; s.start = Self.now() }
        draw(force: true)
    }

    public func addBytes(_ n: Int) { state.withLock { $0.bytes += Int64(n) }; draw(force: false) }

    /// Bytes read to be hashed before they can be sent (shown apart: they are not transferred yet).
    public func addHashedBytes(_ n: Int) { state.withLock { $0.hashed += Int64(n) }; draw(force: false) }

    public func taskEnded(failed: Bool) {
        state.withLock { s in s.done += 1; if failed { s.failed += 1 } }
        draw(force: false)
    }

    public func end() {
        guard enabled && tty else { return }
        draw(force: true)
        write("\n")
    }

    func write(_ s: String) { out.write(Data(s.utf8)) }

    func draw(force: Bool) {
        guard enabled else { return }
        let line: String? = state.withLock { s in
            let t = Self.now()
            let elapsed = max(t - s.start, 1e-6)
            let pct = s.total == 0 ? 100 : s.done * 100 / s.total
            if tty {
                if !force && t - s.lastDraw < 0.2 { return nil }
            } else {
                // Plain lines only for stages long enough to need them; the stage summary follows anyway.
                let step = pct / 10
                if force || elapsed < 5 || (step == s.lastPercentShown && t - s.lastDraw < 30) { return nil }
                s.lastPercentShown = step
            }
            s.lastDraw = t
            var l = "\(s.stage): \(s.done)/\(s.total) items (\(pct)%)"
            if s.skipped > 0 { l += ", \(s.skipped) already done" }
            if s.failed > 0 { l += ", \(s.failed) failed" }
            if s.bytes > 0 { l += ", \(formatBytes(s.bytes)) at \(formatBytes(Int64(Double(s.bytes) / elapsed)))/s" }
            else if s.done > 0 { l += ", \(Int((Double(s.done) / elapsed).rounded())) items/s" }
            if s.hashed > 0 { l += ", \(formatBytes(s.hashed)) hashed first" }
            if s.done > 0 && s.done < s.total {
                let eta = elapsed / Double(s.done) * Double(s.total - s.done)
                l += ", ETA \(Self.duration(eta))"
            }
            return l
        }
        guard let line else { return }
        write(tty ? "\r\u{1B}[K" + line : line + "\n")
    }

    public static func duration(_ seconds: Double) -> String {
        let s = Int(seconds.rounded())
        if s < 60 { return "\(s)s" }
        if s < 3600 { return "\(s / 60)m\(String(format: "%02d", s % 60))s" }
        return "\(s / 3600)h\(String(format: "%02d", (s % 3600) / 60))m"
    }
}
