import Foundation
import Synchronization
import POSIXFiles
import WorkflowSpec

/// `emflow worker`: one array task. Reads its slice of items, takes each item's input from the
/// upstream stage's result files (an item whose upstream failed is left alone), skips items this
/// slice already finished (a requeued or re-run task never does an item twice) and items whose key
/// matches their last result, runs the rest with the stage's retry policy on the task's CPUs, and
/// appends one result line per item. Never touches the catalog.
public enum SlurmWorker {
    public struct Outcome: Sendable { public var done = 0, failed = 0, skipped = 0, blocked = 0, alreadyDone = 0 }

    public static func run(runDir: String, stage stageName: String, slice: Int, jobs: Int? = nil,
                           log: @escaping @Sendable (String) -> Void) throws(EngineError) -> Outcome {
        let files = SlurmRunFiles(runDir: runDir)
        let plan: SlurmPlan
        do { plan = try files.loadPlan() } catch { throw .input("cannot read \(files.planPath): \(error)") }
        let text: [UInt8]
        do { text = try readFile(files.specPath) } catch { throw .io(error) }
        let workflow: Workflow
        do { workflow = try StageRegistry.parser.parse(text: String(decoding: text, as: UTF8.self), file: plan.specFile, baseDirectory: plan.specBase) }
        catch { throw .spec(error) }
        guard let stage = workflow.stage(named: stageName), plan.stages.contains(where: { $0.name == stageName }) else {
            throw .usage("run \(plan.runID) has no stage \(stageName)")
        }
        let ctx = RunDriver.context(workflow: workflow, specSHA256: plan.specSHA256)
        let keying = try StageKeying(stage: stage, ctx: ctx, runID: plan.runID)
        let entries: [WorkEntry]
        do { entries = try files.readSlice(stageName, slice) } catch { throw .input("cannot read the items of slice \(slice) of \(stageName): \(error)") }

        var outcome = Outcome()
        let mine = files.sliceResults(stageName, slice)
        var upstream: [WorkEntry.Upstream: [String: TaskResult]] = [:]
        var toRun: [TaskInput] = []
        var immediate: [TaskResult] = []
        for e in entries {
            if let r = mine[e.itemID], r.isSuccess { outcome.alreadyDone += 1; continue }
            var input = e.input
            var ok = true
            for u in e.upstream {
                if upstream[u] == nil { upstream[u] = files.sliceResults(u.stage, u.slice) }
                guard let r = upstream[u]?[e.itemID], r.isSuccess else { ok = false; break }
                if u.stage == stage.needs.first { input = r.artifact }
            }
            guard ok, let input else { outcome.blocked += 1; continue }
            let t = keying.task(item: e.item, artifact: input, recorded: e.recorded)
            if keying.skippable, let p = e.prior, p.key == t.key, var r = RunDriver.decodeResult(p.result), RunDriver.outputsExist(r) {
                r.runID = plan.runID; r.state = .skipped; r.stage = stageName
                immediate.append(r)
                continue
            }
            toRun.append(t)
        }

        let resultLog = ResultLog(directory: files.resultsDir(stageName), prefix: SlurmRunFiles.slicePrefix(slice))
        for r in immediate {
            do { try resultLog.append(r, worker: 0) } catch { throw .input("cannot write results in \(files.resultsDir(stageName)): \(error)") }
            outcome.skipped += 1
        }
        let counts = Mutex(outcome)
        let writeError = Mutex<String?>(nil)
        // An MPI stage runs its items one after another, each on all of the job's ranks.
        let width = MPIStages.ranks(stage) > 1 ? 1 : jobs ?? environment("SLURM_CPUS_PER_TASK").flatMap { Int($0) } ?? 1
        let impl = MPIStages.impl(for: stage, base: keying.impl, specFile: plan.specFile,
                                  launcher: MPIStages.defaultLauncher(plugin: ctx.mpiPlugin))
        WorkerPool.run(toRun, jobs: max(1, width)) { worker, task in
            let r = RunDriver.execute(task, impl: impl, retry: stage.retry, ctx: ctx)
            do { try resultLog.append(r, worker: worker) } catch { writeError.withLock { $0 = "\(error)" } }
            if r.state == .failed { log("FAILED \(stageName) \(task.itemID): \(r.error ?? "")") }
            counts.withLock { if r.state == .failed { $0.failed += 1 } else { $0.done += 1 } }
        }
        if let e = writeError.withLock({ $0 }) { throw .input("cannot write results in \(files.resultsDir(stageName)): \(e)") }
        return counts.withLock { $0 }
    }
}
