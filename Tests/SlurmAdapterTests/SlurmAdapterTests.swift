import XCTest
import Foundation
import SlurmAdapter
import TestSupport

final class ShellQuotingTests: XCTestCase {
    /// What bash makes of a quoted word is the original text, whatever it holds.
    func testQuotedWordsReachTheCommandUnchanged() throws {
        let nasty = ["plain", "with space", "$(touch /tmp/emflow-pwned-q)", "`id`", "a'b\"c", "line1\nline2", "semi;colon|pipe&amp",
                     "$HOME ${PATH}", "*?[a]", "", "ünïcødé ✓", "-n", "back\\slash"]
        for s in nasty {
            let out = try ProcessRunner.run("/bin/bash", ["-c", "printf '%s' " + Shell.quote(s)])
            XCTAssertEqual(out.stdout, s, "quoting \(s.debugDescription) as \(Shell.quote(s))")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: "/tmp/emflow-pwned-q"))
    }

    func testScriptsRefuseValuesSbatchCannotCarry() throws {
        var s = JobScript()
        s.options = [("job-name", "ok"), ("output", "/runs/x y/%A_%a.out")]
        s.command = ["emflow", "worker"]
        XCTAssertThrowsError(try s.render())
        s.options = [("partition", "debug\n#SBATCH --wrap=evil")]
        XCTAssertThrowsError(try s.render())
        s.options = [("partition", "debug"), ("array", "0-9%4")]
        s.command = ["/opt/em flow/emflow", "worker", "--run-dir", "/r/$(x)"]
        s.commandTail = ["\"$slice\""]
        let text = try s.render()
        XCTAssertTrue(text.contains("#SBATCH --array=0-9%4\n"))
        XCTAssertTrue(text.contains("exec '/opt/em flow/emflow' worker --run-dir '/r/$(x)' \"$slice\"\n"), text)
    }
}

final class PackingTests: XCTestCase {
    func testExplicitBatchAndSplitAtMaxArraySize() {
        let p = Packing.plan(items: 1000, batch: 7, perItemSeconds: 1, timeLimitSeconds: nil, throttle: 100, maxArraySize: 50)
        XCTAssertEqual(p.batch, 7)
        XCTAssertEqual(p.slices, 143)
        XCTAssertEqual(p.arrays, [Packing.Part(offset: 0, count: 50), Packing.Part(offset: 50, count: 50), Packing.Part(offset: 100, count: 43)])
        XCTAssertEqual(Packing.plan(items: 0, batch: nil, perItemSeconds: 1, timeLimitSeconds: nil, throttle: 10, maxArraySize: 50).arrays, [])
    }

    func testChosenBatchBalancesSchedulerCostAndParallelism() {
        // Tiny items: one task holds at least ~10 s of work.
        let tiny = Packing.plan(items: 1000, batch: nil, perItemSeconds: 0.005, timeLimitSeconds: nil, throttle: 100, maxArraySize: 1001)
        XCTAssertEqual(tiny.slices, 1)
        // 100,000 one-second items: ~throttle tasks, none over the 10-minute target.
        let many = Packing.plan(items: 100_000, batch: nil, perItemSeconds: 1, timeLimitSeconds: nil, throttle: 200, maxArraySize: 1001)
        XCTAssertEqual(many.batch, 500)
        XCTAssertEqual(many.slices, 200)
        // A 10-minute limit caps a task's work at half of it.
        let slow = Packing.plan(items: 100, batch: nil, perItemSeconds: 100, timeLimitSeconds: 600, throttle: 10, maxArraySize: 1001)
        XCTAssertEqual(slow.batch, 3)
        // Never more tasks than maxTasks.
        let huge = Packing.plan(items: 1_000_000, batch: nil, perItemSeconds: 3000, timeLimitSeconds: nil, throttle: 100_000, maxArraySize: 1001, maxTasks: 20_000)
        XCTAssertLessThanOrEqual(huge.slices, 20_000)
        XCTAssertEqual(huge.arrays.reduce(0) { $0 + $1.count }, huge.slices)
    }

    func testSlurmTimes() {
        XCTAssertEqual(Packing.seconds(slurmTime: "5"), 300)
        XCTAssertEqual(Packing.seconds(slurmTime: "01:30"), 90)
        XCTAssertEqual(Packing.seconds(slurmTime: "02:00:00"), 7200)
        XCTAssertEqual(Packing.seconds(slurmTime: "1-12"), 129_600)
        XCTAssertEqual(Packing.seconds(slurmTime: "1-00:00:10"), 86_410)
    }
}

final class SlurmParsingTests: XCTestCase {
    func testStatesAndLines() {
        XCTAssertEqual(JobState(slurm: "CANCELLED by 0"), .cancelled)
        XCTAssertEqual(JobState(slurm: "OUT_OF_ME+"), .outOfMemory)
        XCTAssertEqual(JobState(slurm: "TO"), .timeout)
        XCTAssertTrue(JobState.preempted.isFinal)
        XCTAssertFalse(JobState.completing.isFinal)
        let q = QueueEntry(line: "17_3|17|3|TIMEOUT|TimeLimit|1:00")
        XCTAssertEqual(q?.arrayJobID, "17"); XCTAssertEqual(q?.arrayTaskID, 3); XCTAssertEqual(q?.state, .timeout)
        let pending = QueueEntry(line: "17_[4-99%3]|17|N/A|PENDING|JobArrayTaskLimit|0:00")
        XCTAssertNil(pending?.arrayTaskID)
        let a = AccountingEntry(line: "9_1|FAILED|1:0|00:00:02|x|y")
        XCTAssertEqual(a?.exitCode, "1:0"); XCTAssertEqual(a?.arrayTaskID, 1)
        let c = SlurmConfig(parsing: "Configuration data as of x\nMaxArraySize            = 50\nAccountingStorageType   = accounting_storage/none\nMinJobAge               = 300 sec\n")
        XCTAssertEqual(c.maxArraySize, 50); XCTAssertFalse(c.hasAccounting); XCTAssertEqual(c.minJobAge, 300)
    }

    /// Against the real cluster: the configuration is read, squeue of an unknown job is empty (not
    /// an error), and a controller that is down is retried (and said so) rather than failed.
    func testRealClusterCallsAndControllerOutage() throws {
        let cluster = try SlurmTestCluster.require()
        var cmd = SlurmCommands()
        cmd.environment = cluster.environment()
        XCTAssertEqual(try cmd.config().maxArraySize, 50)
        XCTAssertEqual(try cmd.queue(jobs: ["999999"]), [])
        let id = try cmd.submit(script: try tempScript("#!/bin/bash\n#SBATCH --array=0-2\n#SBATCH --output=/dev/null\ntrue\n"))
        XCTAssertFalse(id.isEmpty)

        cluster.stopController()
        let said = LockedLines()
        cmd.log = { said.add($0) }
        cmd.patience = 120
        // Slurm's clients themselves wait 9-18 s for a controller before giving up: stay down longer.
        let restarted = DispatchSemaphore(value: 0)
        DispatchQueue.global().asyncAfter(deadline: .now() + 25) { cluster.startController(); restarted.signal() }
        defer { restarted.wait() }   // the restart script ends before the test does
        let q = try cmd.queue(jobs: [id])
        XCTAssertTrue(said.lines.contains { $0.contains("slurmctld is not answering") }, "\(said.lines)")
        XCTAssertTrue(q.allSatisfy { $0.arrayJobID == id })
    }

    func tempScript(_ text: String) throws -> String {
        let p = NSTemporaryDirectory() + "emflow-job-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sh"
        try text.write(toFile: p, atomically: true, encoding: .utf8)
        return p
    }
}

final class LockedLines: @unchecked Sendable {
    let lock = NSLock()
    var stored: [String] = []
    func add(_ s: String) { lock.lock(); stored.append(s); lock.unlock() }
    var lines: [String] { lock.lock(); defer { lock.unlock() }; return stored }
}
