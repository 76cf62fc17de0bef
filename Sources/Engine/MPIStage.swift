import Foundation
import Synchronization
import POSIXFiles
import WorkflowSpec
import ParallelNexus

/// Stages whose tasks run as one collective MPI job each when the stage asks for `resources.ranks`
/// above 1: the executor's worker writes the task to the run directory and starts
/// `mpirun -np N emflow worker --mpi-task FILE` (local executor) or `srun --mpi=<plugin> --ntasks=N
/// emflow worker --mpi-task FILE` (inside a Slurm job that holds N tasks); every rank runs the stage,
/// rank 0 writes the result beside the task file. One try is one launch; retries are the worker's.
public enum MPIStages {
    public enum Launcher: Sendable, Equatable {
        case mpirun
        case srun(plugin: String)
    }

    /// Whether a stage can run with several ranks: `convert` with `to: nxem-4d`.
    public static func supportsRanks(_ stage: StageSpec) -> Bool {
        stage.uses == ConvertStage.kind && stage.parameters["to"]?.stringValue == "nxem-4d"
    }

    public static func ranks(_ stage: StageSpec) -> Int {
        stage.resources.values["ranks"].flatMap { Int($0) } ?? 1
    }

    /// `ranks:` on a stage that cannot use them is a spec error, said before anything runs.
    static func check(_ workflow: Workflow) throws(EngineError) {
        for stage in workflow.stages where ranks(stage) > 1 && !supportsRanks(stage) {
            throw .usage("stage \(stage.name) (\(stage.uses)) asks for ranks: \(ranks(stage)), but only convert with to: nxem-4d runs on several MPI ranks; remove ranks")
        }
    }

    /// The stage implementation a worker runs: the stage itself, or a launcher of it on `ranks` ranks.
    static func impl(for stage: StageSpec, base: any Stage, specFile: String, launcher: Launcher) -> any Stage {
        let n = ranks(stage)
        guard n > 1, supportsRanks(stage) else { return base }
        return LaunchedStage(ranks: n, launcher: launcher, specFile: specFile)
    }

    /// The launcher for this process: srun inside a Slurm job, else mpirun.
    static func defaultLauncher(plugin: String?) -> Launcher {
        environment("SLURM_JOB_ID") != nil ? .srun(plugin: plugin ?? "pmix") : .mpirun
    }

    /// The environment the ranks start with. `mpirun` (the local executor: every rank on this host)
    /// gets Open MPI's shared-memory transport, unless the user or site chose a PML or BTL: by default
    /// Open MPI 4 probes UCX and the network transports in `MPI_Init`, 0.2 s per launch on a job that
    /// may last a second, for ranks that can only talk through memory anyway. `srun` may span nodes
    /// and keeps the site's choice. Other MPI implementations ignore these variables.
    /// With no network transport in use, hwloc also skips the I/O devices (`HWLOC_COMPONENTS`) and
    /// does not load their plugins (`HWLOC_PLUGINS_BLACKLIST`): mpirun and every rank otherwise read
    /// each PCI device's config space, which only places NICs and GPUs, and costs 25–40 ms per launch
    /// where those reads trap to a hypervisor. And PMIx keeps the job's data in a table it sends each
    /// rank (`PMIX_MCA_gds=hash`) instead of first zeroing a shared-memory store sized for many ranks
    /// per node (~10 ms per launch).
    /// Waiting ranks also yield the core (`mpi_yield_when_idle`): each rank runs helper threads (the
    /// frame reader; on rank 0 the output's hash) that a rank spinning in a collective would starve.
    /// A variable the user or site set is never replaced.
    static func launchEnvironment(_ launcher: Launcher, _ base: [String: String]) -> [String: String] {
        var env = base
        guard launcher == .mpirun else { return env }
        let userChoseTransport = base["OMPI_MCA_pml"] != nil || base["OMPI_MCA_btl"] != nil
        for (k, v) in launchDefaults where base[k] == nil && (!userChoseTransport || k == yieldVariable) { env[k] = v }
        return env
    }

    /// What a local mpirun gets, in the order the log shows them: all where the user chose no
    /// transport, else only the yielding.
    static let launchDefaults: [(String, String)] = [("OMPI_MCA_pml", "ob1"), ("OMPI_MCA_btl", "self,vader"), ("HWLOC_COMPONENTS", "-linuxio,-pci"),
                                                     ("HWLOC_PLUGINS_BLACKLIST", ioPlugins), ("PMIX_MCA_gds", "hash"), (yieldVariable, "1")]
    static let yieldVariable = "OMPI_MCA_mpi_yield_when_idle"
    /// hwloc's plugins for I/O devices (and libxml2 for XML, which hwloc also parses without it):
    /// loading them maps X11, OpenCL and libxml2 into every process, ~5 ms per launch.
    static let ioPlugins = ["hwloc_pci", "hwloc_opencl", "hwloc_cuda", "hwloc_nvml", "hwloc_rsmi", "hwloc_levelzero", "hwloc_gl", "hwloc_xml_libxml"].joined(separator: ",")

    /// What `emflow worker --mpi-task` reads.
    struct Envelope: Codable { var task: TaskInput; var specFile: String }
    /// What rank 0 writes back.
    struct Outcome: Codable { var partial: TaskResult.Partial?; var error: String?; var retryable: Bool }

    /// The emflow binary ranks run: this one, unless EMFLOW_EXECUTABLE names another (tests that
    /// drive the engine from a test binary).
    static func executable() -> String {
        if let e = environment("EMFLOW_EXECUTABLE"), !e.isEmpty { return e }
        return ConvertStage.executablePath()
    }

    /// One rank of `emflow worker --mpi-task FILE`: runs the task collectively; rank 0 writes the
    /// outcome to `FILE.result` (atomically). Returns whether the task succeeded.
    public static func runRank(taskFile: String) throws(EngineError) -> Bool {
        let env: Envelope
        do { env = try JSONDecoder().decode(Envelope.self, from: Data(readFile(taskFile))) }
        catch { throw .input("cannot read the MPI task \(taskFile): \(error)") }
        let comm: Communicator
        do { comm = try Communicator.world() } catch { throw .input("\(error)") }
        defer { Communicator.finalize() }
        var outcome: Outcome
        do {
            let specCopy = Path.join(Path.directory(of: taskFile), "../spec.yaml")
            let driver = try RunDriver(frozenSpec: try readFile(specCopy), originalPath: env.specFile)
            guard let stage = driver.workflow.stage(named: env.task.stage), let impl = StageRegistry.all[stage.uses] else {
                throw EngineError.usage("the run's spec has no stage \(env.task.stage)")
            }
            Communicator.current = comm
            let p = try impl.run(env.task, driver.context())
            outcome = Outcome(partial: p, error: nil, retryable: false)
        } catch let e as StageError {
            outcome = Outcome(partial: nil, error: e.message, retryable: e.retryable)
        } catch {
            outcome = Outcome(partial: nil, error: "\(error)", retryable: false)
        }
        if comm.isRoot {
            // A message to the launching worker, read as soon as mpirun exits: atomic, not fsynced
            // (5 ms); what must survive a crash is the output (fsynced) and the catalog's record.
            do { try AtomicFile.write(Array(try JSONEncoder().encode(outcome)), to: taskFile + ".result", durable: false) }
            catch { throw .input("cannot write \(taskFile).result: \(error)") }
        }
        return outcome.error == nil
    }
}

/// Runs one task of an MPI stage by launching it on `ranks` processes.
struct LaunchedStage: Stage {
    static let kind = ConvertStage.kind
    static let version = ConvertStage.version
    static let schema = ConvertStage.schema
    let ranks: Int
    let launcher: MPIStages.Launcher
    let specFile: String

    func run(_ task: TaskInput, _ ctx: TaskContext) throws(StageError) -> TaskResult.Partial {
        let dir = Path.join(Path.join(Path.resolve(ctx.workspace, against: currentDirectory()), "runs/\(task.runID)"), "mpi")
        let base = Path.join(dir, "\(task.stage)-\(task.key.prefix(16))")
        let taskFile = base + ".task.json", logFile = base + ".log"
        do {
            try makeDirectories(dir)
            _ = unlinkIgnoringErrors(taskFile + ".result")
            try AtomicFile.write(Array(JSONEncoder().encode(MPIStages.Envelope(task: task, specFile: specFile))), to: taskFile, durable: false)
        } catch { throw StageError("cannot write the MPI task file \(taskFile): \(error)") }

        var args: [String]
        switch launcher {
        case .mpirun: args = ["mpirun", "-np", "\(ranks)", "--oversubscribe", "--bind-to", "none"]
        case .srun(let plugin): args = ["srun", "--mpi=\(plugin)", "--ntasks=\(ranks)", "--kill-on-bad-exit=1"]
        }
        args += [MPIStages.executable(), "worker", "--mpi-task", taskFile]
        var env = MPIStages.launchEnvironment(launcher, ProcessInfo.processInfo.environment)
        if getuid() == 0 { env["OMPI_ALLOW_RUN_AS_ROOT"] = "1"; env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1" }
        var header = "launch: " + args.joined(separator: " ") + "\n"
        let chosen = MPIStages.launchDefaults.map(\.0).filter { env[$0] != ProcessInfo.processInfo.environment[$0] }
        if !chosen.isEmpty {
            header += "environment: " + chosen.map { "\($0)=\(env[$0]!)" }.joined(separator: " ")
                + " (ranks on this host talk through shared memory, skip the I/O devices' topology, get the job's data without a shared store and yield the core while they wait; set these variables to choose otherwise)\n"
        }
        let log: FileDescriptor
        do throws(POSIXFileError) { log = try FileDescriptor(path: logFile, mode: .sharedLog(permissions: 0o644)) }
        catch { throw StageError("cannot write \(logFile): \(error)") }
        do { try log.writeAll(Array(header.utf8)) } catch { throw StageError("cannot write \(logFile): \(error)") }
        let ended: Subprocess.Result
        do { ended = try Subprocess.run("/usr/bin/env", args, environment: env, output: .descriptor(log.rawValue)) }
        catch { throw StageError("cannot start \(args[0]) (\(error)); install OpenMPI (openmpi-bin) or load the site's MPI module") }
        if let data = try? readFile(taskFile + ".result"), let o = try? JSONDecoder().decode(MPIStages.Outcome.self, from: Data(data)) {
            if let e = o.error { throw StageError(e, retryable: o.retryable) }
            if let partial = o.partial { return partial }
        }
        let tail = ((try? String(contentsOfFile: logFile, encoding: .utf8)) ?? "").split(separator: "\n").suffix(8).joined(separator: "\n")
        throw StageError("the \(ranks)-rank MPI job (\(args.prefix(2).joined(separator: " ")) …) ended with \(ended.signaled ? "signal" : "status") \(ended.status) and no result; its output (\(logFile)) ends with:\n\(tail)")
    }
}
