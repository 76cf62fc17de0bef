import Foundation
import POSIXFiles

/// A Slurm command failed (after retries when the controller did not answer).
public struct SlurmError: Error, CustomStringConvertible, Sendable {
    public var command: String
    public var status: Int32
    public var message: String
    public var hint: String?
    public var description: String {
        "\(command) failed (exit \(status)): \(message)" + (hint.map { "; \($0)" } ?? "")
    }
}

/// What one call of a Slurm tool printed.
public struct CommandOutput: Sendable {
    public var status: Int32
    public var stdout: String
    public var stderr: String
}

/// Runs Slurm's client tools (sbatch, squeue, sacct, scontrol, scancel) found on PATH, so a site's
/// module environment and a test's counting wrapper both work. Calls that fail because slurmctld
/// does not answer are retried with exponential backoff, and each retry is reported: a controller
/// that is down or restarting never turns into failed tasks.
public struct SlurmCommands: Sendable {
    /// Seconds to keep retrying a call while the controller does not answer (default: 10 minutes).
    public var patience: Double = 600
    public var environment: [String: String]? = nil
    /// Reports retries ("slurmctld is not answering ... retrying in 4 s").
    public var log: @Sendable (String) -> Void = { _ in }

    public init() {}

    /// Messages Slurm's clients print when the controller cannot be reached or is busy.
    static let unreachable = ["Unable to contact slurm controller", "Socket timed out", "Connection refused",
                              "Zero Bytes were transmitted", "slurm_receive_msg", "Transport endpoint is not connected",
                              "Slurm backup controller in standby mode", "Resource temporarily unavailable",
                              "Communication connection failure", "Connection timed out"]

    static func isUnreachable(_ text: String) -> Bool { unreachable.contains { text.contains($0) } }

    /// Runs `tool args` once, capturing its output.
    public func runOnce(_ tool: String, _ args: [String], stdin: String? = nil) throws(SlurmError) -> CommandOutput {
        let r: Subprocess.Result
        do { r = try Subprocess.run("/usr/bin/env", [tool] + args, environment: environment, input: stdin.map { Array($0.utf8) }) }
        catch {
            throw SlurmError(command: tool, status: 127, message: "cannot start: \(error)",
                             hint: "is Slurm's client installed and on PATH? (module load slurm)")
        }
        let stderr = String(decoding: r.stderr, as: UTF8.self)
        if r.signaled || (r.status == 127 && stderr.contains("No such file")) {
            throw SlurmError(command: tool, status: r.status, message: stderr.trimmingCharacters(in: .whitespacesAndNewlines),
                             hint: "is Slurm's client installed and on PATH? (module load slurm)")
        }
        return CommandOutput(status: r.status, stdout: String(decoding: r.stdout, as: UTF8.self), stderr: stderr)
    }

    /// Runs `tool args`, retrying with backoff (1, 2, 4 … 30 s, up to `patience`) while the
    /// controller does not answer. Other failures return as they are, for the caller to judge.
    public func run(_ tool: String, _ args: [String], stdin: String? = nil) throws(SlurmError) -> CommandOutput {
        var delay = 1.0
        let start = Date()
        while true {
            let r = try runOnce(tool, args, stdin: stdin)
            if r.status == 0 || !Self.isUnreachable(r.stderr + r.stdout) { return r }
            let waited = Date().timeIntervalSince(start)
            if waited + delay > patience {
                throw SlurmError(command: tool, status: r.status, message: Self.firstLine(r.stderr),
                                 hint: "slurmctld has not answered for \(Int(waited)) s; check `scontrol ping` and try again later (nothing was marked failed)")
            }
            log("slurmctld is not answering (\(tool): \(Self.firstLine(r.stderr))); retrying in \(Int(delay)) s")
            Thread.sleep(forTimeInterval: delay)
            delay = min(delay * 2, 30)
        }
    }

    static func firstLine(_ s: String) -> String {
        s.split(separator: "\n").first.map { String($0).trimmingCharacters(in: .whitespaces) } ?? ""
    }

    // MARK: - The calls emflow makes

    /// `scontrol show config` as key → value.
    public func config() throws(SlurmError) -> SlurmConfig {
        let r = try run("scontrol", ["show", "config"])
        guard r.status == 0 else { throw SlurmError(command: "scontrol show config", status: r.status, message: Self.firstLine(r.stderr), hint: nil) }
        return SlurmConfig(parsing: r.stdout)
    }

    /// Submits a job script; returns the job id (`sbatch --parsable` prints `id` or `id;cluster`).
    public func submit(script: String, arguments: [String] = []) throws(SlurmError) -> String {
        let r = try run("sbatch", ["--parsable"] + arguments + [script])
        let id = r.stdout.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: ";").first.map(String.init) ?? ""
        guard r.status == 0, !id.isEmpty, id.allSatisfy(\.isNumber) else {
            throw SlurmError(command: "sbatch \(script)", status: r.status, message: r.stderr.trimmingCharacters(in: .whitespacesAndNewlines),
                             hint: Self.submitHint(r.stderr))
        }
        return id
    }

    static func submitHint(_ stderr: String) -> String? {
        if stderr.contains("invalid partition") { return "the partition named in resources: or the site profile does not exist here (sinfo lists them)" }
        if stderr.contains("Invalid account") { return "set resources.account (or the site's account:) to an account you may use (sacctmgr show assoc user=$USER)" }
        if stderr.contains("Invalid qos") { return "check resources.qos against `sacctmgr show qos`" }
        if stderr.contains("time limit") { return "resources.time is above the partition's MaxTime (scontrol show partition)" }
        if stderr.contains("MaxSubmitJobs") || stderr.contains("QOSMaxSubmitJobPerUserLimit") { return "the site limits queued jobs per user: lower executor.batch packing or wait for jobs to finish" }
        return nil
    }

    /// One squeue call for all the given jobs, one line per array task (pending ones included).
    /// Jobs that have left the queue are simply absent (never an error).
    public func queue(jobs: [String]) throws(SlurmError) -> [QueueEntry] {
        guard !jobs.isEmpty else { return [] }
        let r = try run("squeue", ["--noheader", "--array", "--states=all", "--jobs=" + jobs.joined(separator: ","),
                                   "--format=%i|%A|%K|%T|%r|%M"])
        if r.status != 0 {
            // squeue refuses the whole call when every listed job has left the queue.
            if r.stderr.contains("Invalid job id") { return [] }
            throw SlurmError(command: "squeue", status: r.status, message: Self.firstLine(r.stderr), hint: nil)
        }
        return r.stdout.split(separator: "\n").compactMap { QueueEntry(line: String($0)) }
    }

    /// One sacct call for final states of the given jobs (array tasks expanded, steps left out).
    public func accounting(jobs: [String]) throws(SlurmError) -> [AccountingEntry] {
        guard !jobs.isEmpty else { return [] }
        let r = try run("sacct", ["--noheader", "--parsable2", "--allocations", "--jobs=" + jobs.joined(separator: ","),
                                  "--format=JobID,State,ExitCode,Elapsed,Start,End"])
        guard r.status == 0 else { throw SlurmError(command: "sacct", status: r.status, message: Self.firstLine(r.stderr), hint: nil) }
        return r.stdout.split(separator: "\n").compactMap { AccountingEntry(line: String($0)) }
    }

    /// Cancels jobs (whole arrays). Jobs that already ended are not an error.
    public func cancel(jobs: [String]) throws(SlurmError) {
        guard !jobs.isEmpty else { return }
        let r = try run("scancel", jobs)
        if r.status != 0 && !r.stderr.contains("Invalid job id") && !r.stderr.contains("already completing") && !r.stderr.contains("Job/step already") {
            throw SlurmError(command: "scancel", status: r.status, message: Self.firstLine(r.stderr), hint: nil)
        }
    }
}

/// `scontrol show config`, parsed.
public struct SlurmConfig: Sendable {
    public var values: [String: String] = [:]
    public init(values: [String: String]) { self.values = values }
    public init(parsing text: String) {
        for line in text.split(separator: "\n") {
            guard let eq = line.firstIndex(of: "=") else { continue }
            let k = line[..<eq].trimmingCharacters(in: .whitespaces)
            let v = line[line.index(after: eq)...].trimmingCharacters(in: .whitespaces)
            if !k.isEmpty, !k.contains(" ") { values[k] = v }
        }
    }
    /// Array indices run from 0 to MaxArraySize-1 (Slurm's default is 1001).
    public var maxArraySize: Int { values["MaxArraySize"].flatMap { Int($0) } ?? 1001 }
    public var hasAccounting: Bool {
        guard let t = values["AccountingStorageType"] else { return false }
        return !t.hasSuffix("/none") && !t.isEmpty
    }
    /// Seconds a finished job stays visible to squeue.
    public var minJobAge: Int { values["MinJobAge"].flatMap { Int($0.split(separator: " ").first ?? "") } ?? 300 }
}
