import Foundation
import POSIXFiles
import SlurmAdapter
import WorkflowSpec

/// A five-field cron expression (minute hour day-of-month month day-of-week) as cron(8) reads it:
/// `*`, lists, ranges, steps, month and day names, and the @hourly/@daily/@weekly/@monthly/@yearly
/// shorthands. Day of month and day of week, when both are restricted, match when either does.
public struct CronSchedule: Sendable, Equatable, CustomStringConvertible {
    public let text: String
    let minutes: Set<Int>, hours: Set<Int>, days: Set<Int>, months: Set<Int>, weekdays: Set<Int>
    let daysRestricted: Bool, weekdaysRestricted: Bool
    public var description: String { text }

    public struct Invalid: Error, CustomStringConvertible, Sendable {
        public let message: String
        public var description: String { message }
    }

    static let macros = ["@hourly": "0 * * * *", "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@weekly": "0 0 * * 0",
                         "@monthly": "0 0 1 * *", "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *"]
    static let monthNames = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
    static let dayNames = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]

    public init(_ text: String) throws(Invalid) {
        let t = text.trimmingCharacters(in: .whitespaces)
        let expanded = Self.macros[t.lowercased()] ?? t
        let f = expanded.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
        guard f.count == 5 else {
            throw Invalid(message: "'\(text)' is not a cron schedule: give five fields (minute hour day month weekday, e.g. \"0 2 * * *\" for 02:00 daily) or @daily/@hourly/@weekly")
        }
        self.text = t
        minutes = try Self.field(f[0], "minute", 0...59, names: [])
        hours = try Self.field(f[1], "hour", 0...23, names: [])
        days = try Self.field(f[2], "day of month", 1...31, names: [])
        months = try Self.field(f[3], "month", 1...12, names: Self.monthNames, nameBase: 1)
        weekdays = Set(try Self.field(f[4], "day of week", 0...7, names: Self.dayNames).map { $0 % 7 })
        daysRestricted = f[2] != "*"
        weekdaysRestricted = f[4] != "*"
    }

    static func field(_ s: String, _ what: String, _ range: ClosedRange<Int>, names: [String], nameBase: Int = 0) throws(Invalid) -> Set<Int> {
        func value(_ v: String) throws(Invalid) -> Int {
            if let n = Int(v), range.contains(n) { return n }
            if let i = names.firstIndex(of: v.lowercased()) { return i + nameBase }
            throw Invalid(message: "cron \(what) '\(v)' is out of range \(range.lowerBound)-\(range.upperBound)")
        }
        var out = Set<Int>()
        for part in s.split(separator: ",", omittingEmptySubsequences: false).map(String.init) {
            let pieces = part.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
            guard pieces.count <= 2, !pieces[0].isEmpty else { throw Invalid(message: "cron \(what) '\(part)' is not a value, range or step") }
            var step = 1
            if pieces.count == 2 {
                guard let st = Int(pieces[1]), st > 0 else { throw Invalid(message: "cron \(what) step '\(pieces[1])' must be a positive number") }
                step = st
            }
            var lo = range.lowerBound, hi = range.upperBound
            if pieces[0] != "*" {
                let ends = pieces[0].split(separator: "-", omittingEmptySubsequences: false).map(String.init)
                guard ends.count <= 2 else { throw Invalid(message: "cron \(what) '\(part)' is not a value or range") }
                lo = try value(ends[0])
                hi = ends.count == 2 ? try value(ends[1]) : (pieces.count == 2 ? range.upperBound : lo)
                guard lo <= hi else { throw Invalid(message: "cron \(what) range '\(pieces[0])' runs backwards") }
            }
            out.formUnion(stride(from: lo, through: hi, by: step))
        }
        return out
    }

    /// The first minute strictly after `date` the schedule fires, in `timeZone` (cron uses local time).
    public func next(after date: Date, timeZone: TimeZone = .current) -> Date? {
        var cal = Calendar(identifier: .gregorian)
        cal.timeZone = timeZone
        // The start of the minute after the one `date` is in.
        guard var t = cal.dateInterval(of: .minute, for: date)?.end else { return nil }
        let limit = date.addingTimeInterval(5 * 366 * 86400)
        while t < limit {
            let c = cal.dateComponents([.month, .day, .weekday, .hour, .minute], from: t)
            let dayOK: Bool = {
                let dom = days.contains(c.day!), dow = weekdays.contains(c.weekday! - 1)
                if daysRestricted && weekdaysRestricted { return dom || dow }
                return (!daysRestricted || dom) && (!weekdaysRestricted || dow)
            }()
            if !months.contains(c.month!) || !dayOK {
                t = cal.startOfDay(for: cal.date(byAdding: .day, value: 1, to: t)!)
                continue
            }
            if !hours.contains(c.hour!) {
                t = cal.dateInterval(of: .hour, for: t)!.end
                continue
            }
            if minutes.contains(c.minute!) { return t }
            t = t.addingTimeInterval(60)
        }
        return nil
    }
}

/// The entries emflow keeps in a crontab or scrontab: a marked block per schedule, so a user's own
/// lines are left exactly as they were.
public enum ManagedCrontab {
    static let marker = "# emflow-schedule "

    /// `text` with the block of `name` replaced by (or, when new, followed by) `lines`.
    public static func install(_ text: String, name: String, lines: [String]) -> String {
        var kept = remove(text, name: name).split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        while kept.last == "" { kept.removeLast() }
        kept.append(marker + name + " begin")
        kept += lines
        kept.append(marker + name + " end")
        return kept.joined(separator: "\n") + "\n"
    }

    public static func remove(_ text: String, name: String) -> String {
        var out: [String] = []
        var skipping = false
        for l in text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init) {
            if l == marker + name + " begin" { skipping = true; continue }
            if skipping { if l == marker + name + " end" { skipping = false }; continue }
            out.append(l)
        }
        while out.last == "" { out.removeLast() }
        return out.isEmpty ? "" : out.joined(separator: "\n") + "\n"
    }

    /// The blocks emflow wrote: name → lines.
    public static func blocks(_ text: String) -> [(name: String, lines: [String])] {
        var out: [(String, [String])] = []
        var current: (String, [String])? = nil
        for l in text.split(separator: "\n").map(String.init) {
            if l.hasPrefix(marker), l.hasSuffix(" begin") { current = (String(l.dropFirst(marker.count).dropLast(6)), []); continue }
            if var c = current {
                if l == marker + c.0 + " end" { out.append(c); current = nil } else { c.1.append(l); current = c }
            }
        }
        return out
    }
}

/// One recurring backfill.
public struct ScheduleEntry: Codable, Sendable {
    public var name: String
    public var spec: String
    public var cron: String
    /// scrontab, crontab, or sbatch-begin (a Slurm job that resubmits itself for the next time).
    public var backend: String
    public var command: String
    public var workspace: String?
    /// sbatch-begin: the job waiting for the next occurrence, and when it starts.
    public var jobID: String?
    public var next: Double?
}

/// `emflow schedule`: recurring backfills. With the Slurm executor it writes a `scrontab` entry where
/// Slurm ships that client; where it does not (Debian's slurm-client 22.05 has no scrontab), a job
/// that starts at the next occurrence (`--begin`), resubmits itself for the one after, and carries
/// `--dependency=singleton` so two occurrences never run together. With the local executor it writes
/// a crontab line. Either way the backfill's own lock keeps a scheduled and a manual backfill of one
/// workflow from overlapping.
public struct Scheduler: Sendable {
    public var commands = SlurmCommands()
    public var emflow: String = SlurmExecutor.selfExecutable()
    public init() {}

    public struct Request: Sendable {
        public var name: String
        public var spec: String
        public var cron: CronSchedule
        public var executor: ExecutorSpec.Kind
        /// Backfill options passed through (--max-items N, --max-bytes B, --retry-failed).
        public var backfillArguments: [String]
        /// Slurm: the job's time limit (default 1 hour) and partition (default: the site's).
        public var time: String?
        public var partition: String?
        /// sbatch-begin: the first occurrence starts at once instead of at the next scheduled time.
        public var now = false
        public init(name: String, spec: String, cron: CronSchedule, executor: ExecutorSpec.Kind, backfillArguments: [String]) {
            self.name = name; self.spec = spec; self.cron = cron; self.executor = executor; self.backfillArguments = backfillArguments
        }
    }

    static func isNameCharacter(_ c: Character) -> Bool { c.isASCII && (c.isLetter || c.isNumber || c == "-" || c == "_" || c == ".") }

    public static func validName(_ n: String) -> Bool { !n.isEmpty && n.count <= 64 && n.allSatisfy(isNameCharacter) }

    /// `name` with every character a schedule name (or a lock file's name) cannot hold made `_`.
    public static func safeName(_ name: String) -> String { String(name.map { isNameCharacter($0) ? $0 : "_" }) }

    func has(_ tool: String) -> Bool {
        (environment("PATH") ?? "").split(separator: ":").contains { FileManager.default.isExecutableFile(atPath: "\($0)/\(tool)") }
    }

    func backfillCommand(_ r: Request) -> String {
        ([emflow, "backfill", r.spec] + r.backfillArguments + ["--quiet"]).map(Shell.quote).joined(separator: " ")
    }

    static func scheduleDir(_ workspace: String) -> String { Path.join(workspace, "schedule") }

    public func install(_ r: Request, workspace: String) throws(EngineError) -> ScheduleEntry {
        guard Self.validName(r.name) else { throw .usage("schedule name '\(r.name)' may hold only letters, digits, '-', '_' and '.' (at most 64)") }
        let dir = Self.scheduleDir(workspace)
        do { try makeDirectories(dir) } catch { throw .io(error) }
        let log = Path.join(dir, "\(r.name).log")
        var entry = ScheduleEntry(name: r.name, spec: r.spec, cron: r.cron.text, backend: "", command: backfillCommand(r), workspace: workspace)
        let header = "# backfill of \(r.spec) (managed by emflow; remove with: emflow schedule remove \(r.name))"
        switch r.executor {
        case .local:
            guard has("crontab") else {
                throw .input("crontab is not installed, so a local schedule cannot be written; install cron (apt-get install cron), or use the Slurm executor (--executor slurm)")
            }
            entry.backend = "crontab"
            try edit("crontab") { ManagedCrontab.install($0, name: r.name, lines: [header, "\(r.cron.text) \(entry.command) >> \(Shell.quote(log)) 2>&1"]) }
        case .slurm:
            guard Shell.isSbatchSafe(dir) else { throw .usage("the workspace \(workspace) has characters an #SBATCH line cannot carry; use a plain path") }
            var opts = ["--job-name=emflow-schedule-\(r.name)", "--time=\(r.time ?? "01:00:00")", "--output=\(Path.join(dir, r.name))-%j.log"]
            if let p = r.partition { opts.append("--partition=\(p)") }
            if has("scrontab") {
                entry.backend = "scrontab"
                try edit("scrontab") { ManagedCrontab.install($0, name: r.name, lines: [header] + opts.map { "#SCRON " + $0 } + ["\(r.cron.text) \(entry.command)"]) }
            } else {
                entry.backend = "sbatch-begin"
                try removeBeginJob(name: r.name, workspace: workspace)
                let script = Path.join(dir, "\(r.name).sh")
                let text = """
                    #!/bin/bash
                    \(opts.map { "#SBATCH " + $0 }.joined(separator: "\n"))
                    #SBATCH --dependency=singleton
                    \(header)
                    # Next occurrence first, so a failing backfill does not end the schedule.
                    \([emflow, "schedule", "resubmit", r.name, "--workspace", workspace].map(Shell.quote).joined(separator: " "))
                    exec \(entry.command)

                    """
                do {
                    try AtomicFile.write(Array(text.utf8), to: script)
                    try AtomicFile.write(Array(try JSONEncoder.sorted.encode(entry)), to: Path.join(dir, "\(r.name).json"))
                } catch let e as POSIXFileError { throw .io(e) } catch { throw .input("\(error)") }
                entry = try submitNext(name: r.name, workspace: workspace, now: r.now)
            }
        }
        return entry
    }

    /// sbatch-begin: submits the job of the next occurrence and records it. Called by `install` and
    /// by each occurrence's own first line.
    public func submitNext(name: String, workspace: String, now: Bool = false) throws(EngineError) -> ScheduleEntry {
        let dir = Self.scheduleDir(workspace)
        var entry = try loadEntry(name: name, workspace: workspace)
        let cron: CronSchedule
        do { cron = try CronSchedule(entry.cron) } catch { throw .usage("\(Path.join(dir, "\(name).json")): \(error)") }
        guard let next = now ? Date() : cron.next(after: Date()) else { throw .usage("the schedule '\(entry.cron)' never fires") }
        let f = DateFormatter()
        f.locale = Locale(identifier: "en_US_POSIX"); f.dateFormat = "yyyy-MM-dd'T'HH:mm:ss"
        let begin = now ? "now" : f.string(from: next)
        do { entry.jobID = try commands.submit(script: Path.join(dir, "\(name).sh"), arguments: ["--begin=\(begin)"]) }
        catch { throw .input("scheduling the next backfill of \(entry.spec): \(error)") }
        entry.next = next.timeIntervalSince1970
        do { try AtomicFile.write(Array(try JSONEncoder.sorted.encode(entry)), to: Path.join(dir, "\(name).json")) }
        catch let e as POSIXFileError { throw .io(e) } catch { throw .input("\(error)") }
        return entry
    }

    func loadEntry(name: String, workspace: String) throws(EngineError) -> ScheduleEntry {
        let path = Path.join(Self.scheduleDir(workspace), "\(name).json")
        do { return try JSONDecoder().decode(ScheduleEntry.self, from: Data(try readFile(path))) } catch {
            throw .usage("no schedule named '\(name)' in \(workspace) (emflow schedule list --workspace \(workspace) lists them)")
        }
    }

    func removeBeginJob(name: String, workspace: String) throws(EngineError) {
        guard let e = try? loadEntry(name: name, workspace: workspace) else { return }
        // The waiting job, and any other of this schedule's name still pending.
        var ids = e.jobID.map { [$0] } ?? []
        if let q = try? commands.run("squeue", ["--noheader", "--name=emflow-schedule-\(name)", "--states=PENDING", "--format=%i"]), q.status == 0 {
            ids += q.stdout.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        }
        if !ids.isEmpty { do { try commands.cancel(jobs: Array(Set(ids))) } catch { throw .input("cancelling the waiting backfill job: \(error)") } }
    }

    func edit(_ tool: String, _ change: (String) -> String) throws(EngineError) {
        let current: String
        do {
            let r = try commands.runOnce(tool, ["-l"])
            // No table yet reads as an empty one.
            current = r.status == 0 ? r.stdout : ""
        } catch { throw .input("\(error)") }
        let updated = change(current)
        let tmp = Path.join(NSTemporaryDirectory(), "emflow-\(tool)-\(getpid())")
        do {
            try AtomicFile.write(Array(updated.utf8), to: tmp, durable: false)
            defer { try? FileManager.default.removeItem(atPath: tmp) }
            let r = try commands.runOnce(tool, [tmp])
            guard r.status == 0 else { throw EngineError.input("\(tool) refused the new table: \(r.stderr.trimmingCharacters(in: .whitespacesAndNewlines))") }
        } catch let e as EngineError { throw e } catch let e as POSIXFileError { throw .io(e) } catch { throw .input("\(error)") }
    }

    /// Every schedule: the crontab's and scrontab's blocks, and the workspace's sbatch-begin jobs.
    public func list(workspace: String?) throws(EngineError) -> [ScheduleEntry] {
        var out: [ScheduleEntry] = []
        for tool in ["crontab", "scrontab"] where has(tool) {
            guard let r = try? commands.runOnce(tool, ["-l"]), r.status == 0 else { continue }
            for b in ManagedCrontab.blocks(r.stdout) {
                guard let line = b.lines.first(where: { !$0.hasPrefix("#") && !$0.isEmpty }) else { continue }
                let spec = b.lines.first?.components(separatedBy: "# backfill of ").dropFirst().first?.components(separatedBy: " (managed").first ?? ""
                let fields = line.split(separator: " ", maxSplits: 5, omittingEmptySubsequences: true).map(String.init)
                let cronText = fields.prefix(5).joined(separator: " ")
                out.append(ScheduleEntry(name: b.name, spec: spec, cron: cronText, backend: tool, command: fields.count > 5 ? fields[5] : "",
                                         workspace: nil, jobID: nil, next: (try? CronSchedule(cronText))?.next(after: Date())?.timeIntervalSince1970))
            }
        }
        if let workspace {
            let dir = Self.scheduleDir(workspace)
            for f in ((try? listDirectory(dir)) ?? []).map(\.name).sorted() where f.hasSuffix(".json") {
                if let e = try? loadEntry(name: String(f.dropLast(5)), workspace: workspace) { out.append(e) }
            }
        }
        return out
    }

    /// Removes a schedule wherever it is; false when there was none of that name.
    public func remove(name: String, workspace: String?) throws(EngineError) -> Bool {
        var found = false
        for tool in ["crontab", "scrontab"] where has(tool) {
            guard let r = try? commands.runOnce(tool, ["-l"]), r.status == 0,
                  ManagedCrontab.blocks(r.stdout).contains(where: { $0.name == name }) else { continue }
            try edit(tool) { ManagedCrontab.remove($0, name: name) }
            found = true
        }
        if let workspace, (try? loadEntry(name: name, workspace: workspace)) != nil {
            try removeBeginJob(name: name, workspace: workspace)
            let dir = Self.scheduleDir(workspace)
            try? FileManager.default.removeItem(atPath: Path.join(dir, "\(name).json"))
            try? FileManager.default.removeItem(atPath: Path.join(dir, "\(name).sh"))
            found = true
        }
        return found
    }
}
