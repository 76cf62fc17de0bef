import Foundation
import POSIXFiles
import Catalog

/// One run as staff review it: the spec it ran, per-stage counts, durations and throughput, a timeline
/// of its tasks (waiting vs running), its failures with their stderr tails, and its outputs with
/// checksums. `emflow report RUN --json` prints it; `--html FILE` writes it as one self-contained page.
public struct RunReport: Codable, Sendable {
    public struct Stage: Codable, Sendable {
        public var stage: String
        public var counts: [String: Int]
        public var bytes: Int64
        /// Sum of the tasks' run times.
        public var taskSeconds: Double
        /// First task start to last task end.
        public var wallSeconds: Double
        public var bytesPerSecond: Double?
        public var itemsPerSecond: Double?
    }
    public struct Task: Codable, Sendable {
        public var stage: String
        public var item: String
        public var state: String
        /// Seconds from the run's start.
        public var start: Double
        /// Waiting before it started: in Slurm since its array job was submitted, locally since the run began.
        public var wait: Double
        public var run: Double
        public var arrayTask: String?
    }
    public struct Failure: Codable, Sendable {
        public var stage: String
        public var item: String
        public var state: String
        public var error: String?
        public var arrayTask: String?
        public var stderrTail: [String]?
    }
    public struct Output: Codable, Sendable {
        public var uri: String
        public var sha256: String
        public var size: Int64
        public var stage: String
        public var version: Int?
    }

    public var run: RunRecord
    public var workspace: String
    /// The spec as the run froze it.
    public var spec: String?
    public var seconds: Double
    public var bytes: Int64
    public var itemsPerSecond: Double?
    public var bytesPerSecond: Double?
    /// Mean wait of the tasks that ran, and the mean of their run times.
    public var meanWait: Double?
    public var meanRun: Double?
    public var stages: [Stage]
    public var tasks: [Task]
    public var failures: [Failure]
    public var outputs: [Output]
    public var generatedAt: String

    public static func build(driverWorkspace workspace: String, catalog: Catalog, run: RunRecord) throws(EngineError) -> RunReport {
        let runDir = Path.join(Path.join(workspace, "runs"), run.id)
        let spec = (try? readFile(Path.join(runDir, "spec.yaml"))).map { String(decoding: $0, as: UTF8.self) }
        let records: [TaskRecord], counts: [Catalog.StageCounts], outs: [OutputRecord]
        do {
            records = try catalog.tasks(runID: run.id)
            counts = try catalog.stageCounts(runID: run.id)
            outs = try catalog.outputs(runID: run.id)
        } catch { throw .catalog(error) }

        // Slurm: each item's array task, when its array was submitted, and the stderr of what failed.
        var logs: [String: ItemLog] = [:]
        if run.executor == "slurm", let ex = try? SlurmExecutor.forRun(workspace: workspace, runID: run.id),
           let l = try? ex.itemLogs(runID: run.id, failedOnly: false, lines: 20) {
            for x in l { logs[x.stage + "\u{0}" + x.item] = x }
        }
        let t0 = run.startedAt
        let end = run.finishedAt ?? records.compactMap(\.finishedAt).max() ?? t0
        var tasks: [Task] = []
        for r in records {
            guard let s = r.startedAt, let f = r.finishedAt, r.state != "skipped" else { continue }
            let log = logs[r.stage + "\u{0}" + r.item]
            let queuedFrom = log?.submittedAt ?? t0
            tasks.append(Task(stage: r.stage, item: r.item, state: r.state, start: s - t0, wait: max(0, s - queuedFrom), run: max(0, f - s),
                              arrayTask: log?.arrayTask))
        }
        tasks.sort { ($0.start, $0.stage, $0.item) < ($1.start, $1.stage, $1.item) }
        let stages = counts.map { c -> Stage in
            let mine = tasks.filter { $0.stage == c.stage }
            let wall = (mine.map { $0.start + $0.run }.max() ?? 0) - (mine.map(\.start).min() ?? 0)
            return Stage(stage: c.stage, counts: c.counts, bytes: c.bytes, taskSeconds: c.seconds, wallSeconds: wall,
                         bytesPerSecond: wall > 0 && c.bytes > 0 ? Double(c.bytes) / wall : nil,
                         itemsPerSecond: wall > 0 && !mine.isEmpty ? Double(mine.count) / wall : nil)
        }
        let failures = records.filter { ["failed", "blocked", "cancelled"].contains($0.state) }.map { r in
            let log = logs[r.stage + "\u{0}" + r.item]
            return Failure(stage: r.stage, item: r.item, state: r.state, error: r.error, arrayTask: log?.arrayTask, stderrTail: log?.stderrTail)
        }
        let seconds = max(0, end - t0)
        // Bytes through the run: those of its busiest stage (each stage reads the items' data once).
        let bytes = counts.map(\.bytes).max() ?? 0
        let ran = tasks.count
        return RunReport(run: run, workspace: workspace, spec: spec, seconds: seconds, bytes: bytes,
                         itemsPerSecond: seconds > 0 ? Double(run.items) / seconds : nil,
                         bytesPerSecond: seconds > 0 && bytes > 0 ? Double(bytes) / seconds : nil,
                         meanWait: ran > 0 ? tasks.reduce(0) { $0 + $1.wait } / Double(ran) : nil,
                         meanRun: ran > 0 ? tasks.reduce(0) { $0 + $1.run } / Double(ran) : nil,
                         stages: stages, tasks: tasks, failures: failures,
                         outputs: outs.map { Output(uri: $0.uri, sha256: $0.sha256, size: $0.size, stage: $0.stage, version: $0.version) },
                         generatedAt: ISO8601DateFormatter().string(from: Date()))
    }
}

// MARK: - HTML

extension RunReport {
    static func esc(_ s: String) -> String {
        s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
    }
    static func secs(_ s: Double) -> String {
        s < 1 ? String(format: "%.0f ms", s * 1000) : s < 120 ? String(format: "%.1f s", s) : ProgressReporter.duration(s)
    }
    static func time(_ t: Double) -> String {
        let f = DateFormatter(); f.locale = Locale(identifier: "en_US_POSIX"); f.dateFormat = "yyyy-MM-dd HH:mm:ss xxx"
        return f.string(from: Date(timeIntervalSince1970: t))
    }
    static let stateColors = ["succeeded": "#2e7d32", "failed": "#c62828", "blocked": "#ef6c00", "cancelled": "#6d4c41", "skipped": "#90a4ae"]
    static let timelineLimit = 3000

    /// One page, no scripts, no external resources: styles inline, the timeline an inline SVG.
    public func html() -> String {
        let e = Self.esc
        var h = """
            <!DOCTYPE html>
            <html lang="en"><head><meta charset="utf-8"><title>emflow run \(e(run.id))</title>
            <style>
            body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#1b1b1b;max-width:1200px}
            h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd}
            table{border-collapse:collapse;margin:6px 0} td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
            th{background:#f3f5f7} td.n{text-align:right;font-variant-numeric:tabular-nums}
            .state{font-weight:600} .failed{color:#c62828} .succeeded{color:#2e7d32} .running{color:#1565c0} .interrupted{color:#ef6c00}
            .cards{display:flex;gap:12px;flex-wrap:wrap;margin:12px 0}
            .card{border:1px solid #ddd;border-radius:6px;padding:8px 14px;min-width:120px} .card b{display:block;font-size:20px}
            pre{background:#f6f8fa;border:1px solid #e1e4e8;padding:8px;overflow:auto;font-size:12px;max-height:420px}
            code{font-size:12px} .muted{color:#666}
            </style></head><body>
            <h1>Run <code>\(e(run.id))</code> — <span class="state \(e(run.state))">\(e(run.state))</span></h1>
            <div class="muted">workflow <b>\(e(run.workflow))</b>, \(e(run.executor)) executor, emflow \(e(run.emflowVersion));
            started \(Self.time(run.startedAt))\(run.finishedAt.map { ", finished \(Self.time($0))" } ?? ", not finished"); workspace <code>\(e(workspace))</code></div>
            <div class="cards">
            <div class="card" id="items"><b>\(run.items)</b>items</div>
            <div class="card" id="duration"><b>\(Self.secs(seconds))</b>duration</div>
            <div class="card" id="throughput"><b>\(itemsPerSecond.map { String(format: "%.2f", $0) } ?? "–")</b>items/s</div>
            <div class="card" id="bytes"><b>\(formatBytes(bytes))</b>\(bytesPerSecond.map { "at \(formatBytes(Int64($0)))/s" } ?? "read")</div>
            <div class="card" id="failures"><b>\(failures.count)</b>failed or not run</div>
            <div class="card" id="wait"><b>\(meanWait.map(Self.secs) ?? "–")</b>mean wait (run \(meanRun.map(Self.secs) ?? "–"))</div>
            </div>

            """
        // Stages.
        let states = ["succeeded", "skipped", "failed", "blocked", "cancelled"]
        h += "<h2>Stages</h2><table id=\"stages\"><tr><th>stage</th>" + states.map { "<th>\($0)</th>" }.joined() +
            "<th>bytes</th><th>task time</th><th>wall time</th><th>throughput</th></tr>\n"
        for s in stages {
            h += "<tr><td>\(e(s.stage))</td>" + states.map { "<td class=\"n\">\(s.counts[$0] ?? 0)</td>" }.joined() +
                "<td class=\"n\">\(formatBytes(s.bytes))</td><td class=\"n\">\(Self.secs(s.taskSeconds))</td><td class=\"n\">\(Self.secs(s.wallSeconds))</td>" +
                "<td class=\"n\">\([s.itemsPerSecond.map { String(format: "%.2f items/s", $0) }, s.bytesPerSecond.map { "\(formatBytes(Int64($0)))/s" }].compactMap { $0 }.joined(separator: ", "))</td></tr>\n"
        }
        h += "</table>\n"
        h += timelineSVG()
        // Failures.
        h += "<h2>Failures</h2>\n"
        if failures.isEmpty { h += "<p id=\"no-failures\">None: every task succeeded or was done before.</p>\n" }
        for f in failures.prefix(200) {
            h += "<div class=\"failure\"><b class=\"\(e(f.state))\">\(e(f.state.uppercased()))</b> \(e(f.stage)) <code>\(e(f.item))</code>" +
                (f.arrayTask.map { " <span class=\"muted\">[array task \(e($0))]</span>" } ?? "") + "<br>" + e(f.error ?? "") +
                (f.stderrTail.map { $0.isEmpty ? "" : "<pre>" + e($0.joined(separator: "\n")) + "</pre>" } ?? "") + "</div>\n"
        }
        if failures.count > 200 { h += "<p>… \(failures.count - 200) more: <code>emflow logs \(e(run.id)) --failed</code></p>\n" }
        // Outputs.
        h += "<h2>Outputs (\(outputs.count))</h2><table id=\"outputs\"><tr><th>file</th><th>stage</th><th>version</th><th>size</th><th>SHA-256</th></tr>\n"
        for o in outputs.prefix(2000) {
            h += "<tr><td><code>\(e(o.uri))</code></td><td>\(e(o.stage))</td><td class=\"n\">\(o.version.map(String.init) ?? "")</td>" +
                "<td class=\"n\">\(formatBytes(o.size))</td><td><code>\(e(o.sha256))</code></td></tr>\n"
        }
        h += "</table>\n" + (outputs.count > 2000 ? "<p>… \(outputs.count - 2000) more in <code>emflow report \(e(run.id)) --json</code></p>\n" : "")
        // Spec.
        h += "<h2>Spec</h2><p class=\"muted\">\(e(run.specPath)) (sha256 <code>\(e(run.specSHA256))</code>)</p>\n<pre id=\"spec\">\(e(spec ?? "(the run directory holds no frozen spec)"))</pre>\n"
        h += "<p class=\"muted\">Made by emflow \(e(EmflowVersion.current)) at \(e(generatedAt)).</p>\n</body></html>\n"
        return h
    }

    /// Tasks as bars on a time axis, one lane per stage (tasks packed into rows so overlapping ones
    /// stay visible): the light part is the wait, the solid part the run, coloured by outcome.
    func timelineSVG() -> String {
        let e = Self.esc
        let shown = Array(tasks.prefix(Self.timelineLimit))
        var h = "<h2>Timeline</h2>\n"
        guard !shown.isEmpty else { return h + "<p>No task ran (everything was done before).</p>\n" }
        let span = max(seconds, shown.map { $0.start + $0.run }.max() ?? 0, 1e-3)
        let width = 1100.0, left = 130.0, rowH = 6.0, gap = 14.0
        let x = { (t: Double) in left + (width - left - 10) * t / span }
        var y = 24.0
        var body = ""
        for stage in stages.map(\.stage) {
            let mine = shown.filter { $0.stage == stage }
            guard !mine.isEmpty else { continue }
            var rowEnds: [Double] = []
            var placed: [(Task, Int)] = []
            for t in mine {
                let waitStart = t.start - t.wait
                if let r = rowEnds.firstIndex(where: { $0 <= waitStart }) { rowEnds[r] = t.start + t.run; placed.append((t, r)) }
                else if rowEnds.count < 40 { rowEnds.append(t.start + t.run); placed.append((t, rowEnds.count - 1)) }
                else { let r = rowEnds.indices.min { rowEnds[$0] < rowEnds[$1] }!; rowEnds[r] = max(rowEnds[r], t.start + t.run); placed.append((t, r)) }
            }
            let laneH = Double(rowEnds.count) * rowH
            body += "<text x=\"4\" y=\"\(y + min(laneH, 12))\" font-size=\"12\">\(e(stage))</text>\n"
            body += "<rect x=\"\(left)\" y=\"\(y - 2)\" width=\"\(width - left - 10)\" height=\"\(laneH + 4)\" fill=\"#fafafa\" stroke=\"#eee\"/>\n"
            for (t, r) in placed {
                let ty = y + Double(r) * rowH
                let color = Self.stateColors[t.state] ?? "#1565c0"
                if t.wait > 0 {
                    body += "<rect x=\"\(x(t.start - t.wait))\" y=\"\(ty)\" width=\"\(max(0.5, x(t.start) - x(t.start - t.wait)))\" height=\"\(rowH - 1)\" fill=\"\(color)\" opacity=\"0.18\"/>"
                }
                body += "<rect x=\"\(x(t.start))\" y=\"\(ty)\" width=\"\(max(1, x(t.start + t.run) - x(t.start)))\" height=\"\(rowH - 1)\" fill=\"\(color)\">" +
                    "<title>\(e(t.stage)) \(e(t.item)): \(e(t.state)), waited \(Self.secs(t.wait)), ran \(Self.secs(t.run))\(t.arrayTask.map { " (array task \(e($0)))" } ?? "")</title></rect>\n"
            }
            y += laneH + gap
        }
        // Time axis.
        var axis = ""
        for i in 0...5 {
            let t = span * Double(i) / 5
            axis += "<line x1=\"\(x(t))\" y1=\"16\" x2=\"\(x(t))\" y2=\"\(y)\" stroke=\"#ddd\"/><text x=\"\(x(t))\" y=\"12\" font-size=\"11\" text-anchor=\"\(i == 0 ? "start" : i == 5 ? "end" : "middle")\">\(Self.secs(t))</text>\n"
        }
        h += "<p class=\"muted\">Each bar is a task: the pale part is its wait (\(run.executor == "slurm" ? "queued in Slurm since its array job was submitted" : "since the run began, for a worker and its upstream tasks")), the solid part its run; green succeeded, red failed." +
            (tasks.count > shown.count ? " The first \(shown.count) of \(tasks.count) tasks are drawn; --json has all." : "") + "</p>\n"
        h += "<svg id=\"timeline\" width=\"\(Int(width))\" height=\"\(Int(y + 4))\" viewBox=\"0 0 \(Int(width)) \(Int(y + 4))\">\n" + axis + body + "</svg>\n"
        return h
    }
}
