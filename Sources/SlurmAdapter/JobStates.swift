/// A Slurm job (array task) state, as squeue and sacct print it.
public enum JobState: String, Codable, Sendable, CaseIterable {
    case pending = "PENDING", configuring = "CONFIGURING", running = "RUNNING", completing = "COMPLETING"
    case suspended = "SUSPENDED", requeued = "REQUEUED", resizing = "RESIZING", stopped = "STOPPED"
    case completed = "COMPLETED", failed = "FAILED", timeout = "TIMEOUT", outOfMemory = "OUT_OF_MEMORY"
    case cancelled = "CANCELLED", nodeFail = "NODE_FAIL", preempted = "PREEMPTED", bootFail = "BOOT_FAIL"
    case deadline = "DEADLINE", revoked = "REVOKED", specialExit = "SPECIAL_EXIT"

    /// squeue/sacct spellings: `CANCELLED by 0`, `OUT_OF_ME+` (sacct truncation), short codes.
    public init?(slurm text: String) {
        let word = text.split(separator: " ").first.map(String.init) ?? text
        if let s = JobState(rawValue: word) { self = s; return }
        let short: [String: JobState] = ["PD": .pending, "R": .running, "CG": .completing, "CF": .configuring, "S": .suspended,
                                         "CD": .completed, "F": .failed, "TO": .timeout, "OOM": .outOfMemory, "CA": .cancelled,
                                         "NF": .nodeFail, "PR": .preempted, "BF": .bootFail, "DL": .deadline, "RQ": .requeued]
        if let s = short[word] { self = s; return }
        if word.hasSuffix("+"), let s = JobState.allCases.first(where: { $0.rawValue.hasPrefix(word.dropLast()) }) { self = s; return }
        return nil
    }

    /// The job will not run again by itself (a PREEMPTED job without requeue ends too).
    public var isFinal: Bool {
        switch self {
        case .completed, .failed, .timeout, .outOfMemory, .cancelled, .nodeFail, .preempted, .bootFail, .deadline, .revoked, .specialExit: return true
        default: return false
        }
    }

    public var isActive: Bool { !isFinal }

    /// What a user should do about an array task that ended this way before finishing its items.
    public var advice: String {
        switch self {
        case .timeout: return "the array task hit its time limit: raise resources.time, or lower resources.batch so each task has fewer items"
        case .outOfMemory: return "the array task ran out of memory: raise resources.mem"
        case .cancelled: return "the job was cancelled (emflow cancel, scancel or an administrator)"
        case .nodeFail, .bootFail: return "the node failed: run again to resubmit the items that did not finish"
        case .preempted: return "the job was preempted: run again, or use a partition/QOS without preemption"
        case .deadline: return "the job's deadline passed"
        case .failed: return "the job failed outside emflow (see the log lines below)"
        default: return "run again to resubmit the items that did not finish"
        }
    }
}

/// One line of `squeue --array --format=%i|%A|%K|%T|%r|%M`.
public struct QueueEntry: Sendable, Equatable {
    /// `123_4` for an array task, `123` for a plain job.
    public var id: String
    /// The array's job id (`%A`'s array master id for arrays is in `id` before `_`).
    public var arrayJobID: String
    public var arrayTaskID: Int?
    public var state: JobState
    public var reason: String
    public var elapsed: String

    public init?(line: String) {
        let f = line.split(separator: "|", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
        guard f.count >= 6, let st = JobState(slurm: f[3]) else { return nil }
        id = f[0]
        state = st
        reason = f[4]
        elapsed = f[5]
        if let us = f[0].firstIndex(of: "_") {
            arrayJobID = String(f[0][..<us])
            arrayTaskID = Int(f[0][f[0].index(after: us)...])   // nil for a still-compressed `[3-9%2]`
        } else {
            arrayJobID = f[0]
            arrayTaskID = nil
        }
    }
}

/// One line of `sacct --parsable2 --allocations --format=JobID,State,ExitCode,Elapsed,Start,End`.
public struct AccountingEntry: Sendable, Equatable {
    public var id: String
    public var arrayJobID: String
    public var arrayTaskID: Int?
    public var state: JobState
    /// `exit:signal`
    public var exitCode: String
    public var elapsed: String

    public init?(line: String) {
        let f = line.split(separator: "|", omittingEmptySubsequences: false).map(String.init)
        guard f.count >= 4, let st = JobState(slurm: f[1]) else { return nil }
        id = f[0]; state = st; exitCode = f[2]; elapsed = f[3]
        if let us = f[0].firstIndex(of: "_") {
            arrayJobID = String(f[0][..<us])
            arrayTaskID = Int(f[0][f[0].index(after: us)...])
        } else { arrayJobID = f[0]; arrayTaskID = nil }
    }
}
