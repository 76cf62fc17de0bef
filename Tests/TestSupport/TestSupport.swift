import Foundation
import POSIXFiles

/// A fresh directory under the system temp dir, removed by `cleanup()`.
public final class TempDir: @unchecked Sendable {
    // @unchecked: immutable after init; only `path` is read.
    public let path: String
    public init(_ name: String = "emflow-test") {
        let p = NSTemporaryDirectory() + "\(name)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try! FileManager.default.createDirectory(atPath: p, withIntermediateDirectories: true)
        path = p
    }
    public func file(_ rel: String) -> String { path + "/" + rel }

    @discardableResult
    public func write(_ rel: String, _ text: String) -> String { write(rel, Array(text.utf8)) }

    @discardableResult
    public func write(_ rel: String, _ bytes: [UInt8]) -> String {
        let p = file(rel)
        try! FileManager.default.createDirectory(atPath: (p as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        _ = FileManager.default.createFile(atPath: p, contents: Data(bytes))
        return p
    }

    public func read(_ rel: String) -> String? {
        FileManager.default.contents(atPath: rel.hasPrefix("/") ? rel : file(rel)).map { String(decoding: $0, as: UTF8.self) }
    }

    public func exists(_ rel: String) -> Bool { FileManager.default.fileExists(atPath: rel.hasPrefix("/") ? rel : file(rel)) }

    public func cleanup() {
        // Raw files are made read-only; make everything writable again so removal works for non-root.
        _ = try? ProcessRunner.run("/bin/chmod", ["-R", "u+rwX", path])
        try? FileManager.default.removeItem(atPath: path)
    }
}

public struct ProcessOutput: Sendable {
    public let status: Int32
    public let stdout: String
    public let stderr: String
    public var combined: String { stdout + stderr }
}

public enum ProcessRunner {
    @discardableResult
    public static func run(_ exe: String, _ args: [String], environment: [String: String]? = nil, cwd: String? = nil) throws -> ProcessOutput {
        // Subprocess, not Foundation's Process: its waitUntilExit on the main thread (where XCTest runs)
        // wakes every 50 ms, which cost each of the suite's hundreds of commands up to 50 ms.
        let r = try Subprocess.run(exe, args, environment: environment.map { ProcessInfo.processInfo.environment.merging($0) { $1 } }, directory: cwd)
        return ProcessOutput(status: r.status, stdout: String(decoding: r.stdout, as: UTF8.self), stderr: String(decoding: r.stderr, as: UTF8.self))
    }

    public static func shell(_ script: String, environment: [String: String]? = nil) throws -> ProcessOutput {
        try run("/bin/bash", ["-c", script], environment: environment)
    }
}

/// Where the built tools are: next to the test bundle (SwiftPM builds products into the same folder).
public enum Tools {
    public static var buildDirectory: String {
        if let d = ProcessInfo.processInfo.environment["EMFLOW_BUILD_DIR"] { return d }
        var url = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        while url.path != "/" && !url.lastPathComponent.hasSuffix(".xctest") { url.deleteLastPathComponent() }
        if url.path != "/" { return url.deletingLastPathComponent().path }
        return packageRoot + "/.build/debug"
    }

    public static var emflow: String { buildDirectory + "/emflow" }

    /// The package root, from this file's location.
    public static var packageRoot: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
    }

    public static var isRoot: Bool { getuid() == 0 }
}

/// The community's NXem validator (pynxtools), h5py and nexusformat on files tests wrote, in one
/// Python process (scripts/validate-nexus). Returns the problems per invalid file; empty when all pass.
public enum NexusValidator {
    public static var python: String { Tools.packageRoot + "/.venv/bin/python" }

    public static func problems(_ files: [String]) throws -> [String: String] {
        precondition(!files.isEmpty)
        let out = try ProcessRunner.run(python, [Tools.packageRoot + "/scripts/validate-nexus", "--json"] + files)
        var bad: [String: String] = [:]
        var seen = 0
        for line in out.stdout.split(separator: "\n") {
            guard let obj = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                  let file = obj["file"] as? String, let valid = obj["valid"] as? Bool else { continue }
            seen += 1
            if !valid { bad[file] = ((obj["problems"] as? [String]) ?? []).joined(separator: "; ") }
        }
        if seen != files.count { bad["(validator)"] = "validated \(seen) of \(files.count) files: \(out.stderr.suffix(2000))" }
        return bad
    }

    /// Runs Python (the test venv, with h5py/numpy/tifffile) on a script; returns stdout, failing on a non-zero exit.
    public static func runPython(_ script: String, _ args: [String] = []) throws -> String {
        let out = try ProcessRunner.run(python, ["-c", script] + args)
        if out.status != 0 { throw PythonFailure(message: "python exited \(out.status): \(out.stderr.suffix(3000))") }
        return out.stdout
    }

    public struct PythonFailure: Error, CustomStringConvertible { public let message: String; public var description: String { message } }
}

/// Vendor example TIFFs from examples/emfixtures.py (standard-library Python), written once per call.
public enum Fixtures {
    /// Writes the vendor set to `dir` (and damaged files to `dir/bad`); returns file name → path.
    public static func vendorSet(in dir: String, size: Int = 64) throws -> [String: String] {
        let out = try ProcessRunner.run("/usr/bin/env", ["python3", Tools.packageRoot + "/examples/generate", "--vendors-only", dir, "--vendor-size", String(size)])
        guard out.status == 0 else { throw NexusValidator.PythonFailure(message: "examples/generate failed: \(out.stderr)") }
        var files: [String: String] = [:]
        for name in try FileManager.default.contentsOfDirectory(atPath: dir) where name.hasSuffix(".tif") { files[name] = dir + "/" + name }
        return files
    }

    public static func badSet(in dir: String) throws -> [String: String] {
        var files: [String: String] = [:]
        for name in try FileManager.default.contentsOfDirectory(atPath: dir + "/bad") where name.hasSuffix(".tif") { files[name] = dir + "/bad/" + name }
        return files
    }
}

/// Synthetic 4D-STEM scans (examples/generate-4dstem) and the independent check of a written NXem
/// file against them: every frame's SHA-256 and the summary image, read back with h5py.
public enum FourDFixtures {
    /// Writes one scan; returns its path. `args` are the generator's flags (e.g. --format mib --scan 7x5).
    public static func generate(in dir: String, _ args: [String]) throws -> String {
        let out = try ProcessRunner.run(NexusValidator.python, [Tools.packageRoot + "/examples/generate-4dstem", "--out", dir] + args)
        guard out.status == 0, let path = out.stdout.split(separator: ":").first else {
            throw NexusValidator.PythonFailure(message: "examples/generate-4dstem failed: \(out.combined)")
        }
        return String(path)
    }

    static let checker = """
        import sys, hashlib, hdf5plugin, h5py, numpy as np
        for pair in sys.argv[1:]:
            nxs, src = pair.split("=", 1)
            want = open(src + ".frames.sha256").read().split()
            sums = np.array([float(x) for x in open(src + ".sums").read().split()])
            with h5py.File(nxs, "r") as f:
                d = f["entry1/measurement/event1/image1/image_4d/real"]
                sy, sx = d.shape[:2]
                got = [hashlib.sha256(np.ascontiguousarray(d[y, x]).astype(d.dtype.newbyteorder("<")).tobytes()).hexdigest() for y in range(sy) for x in range(sx)]
                s2 = f["entry1/measurement/event1/image2/image_2d/real"][...].ravel()
                ok = got == want and np.allclose(s2, sums) and d.chunks[2:] == d.shape[2:]
                ratio = d.size * d.dtype.itemsize / max(1, d.id.get_storage_size())
                print(("ok " if ok else "BAD ") + nxs + f" frames={len(got)}/{len(want)} same={sum(a == b for a, b in zip(got, want))} sums={np.allclose(s2, sums)} chunks={d.chunks} filters={list(d._filters)} ratio={ratio:.1f}")
        """

    /// Per output=source pair: "ok …" or "BAD …" lines (frames byte for byte, summary = frame sums).
    public static func check(_ pairs: [(nxs: String, source: String)]) throws -> [String] {
        try NexusValidator.runPython(checker, pairs.map { "\($0.nxs)=\($0.source)" }).split(separator: "\n").map(String.init)
    }
}

extension ProcessRunner {
    /// Starts `exe args` with its output discarded, and SIGKILLs it after `delay` seconds.
    public static func killAfter(_ delay: Double, _ exe: String, _ args: [String]) throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: exe)
        p.arguments = args
        p.standardOutput = FileHandle.nullDevice; p.standardError = FileHandle.nullDevice
        try p.run()
        Thread.sleep(forTimeInterval: delay)
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
    }
}

/// One real S3 server (scripts/s3-server: SeaweedFS on 127.0.0.1, signatures enforced) for the whole
/// test process, started on first use and stopped by its PID when the process exits. Each test makes
/// its own bucket.
public final class S3TestServer: @unchecked Sendable {
    public let directory: String
    public let environment: [String: String]
    public var endpoint: String { environment["S3_ENDPOINT"]! }
    public var accessKey: String { environment["AWS_ACCESS_KEY_ID"]! }
    public var secretKey: String { environment["AWS_SECRET_ACCESS_KEY"]! }
    public static let script = Tools.packageRoot + "/scripts/s3-server"

    /// nil (with `startError` saying why) when the server could not start.
    nonisolated(unsafe) public static var startError = ""
    public static let shared: S3TestServer? = {
        let dir = NSTemporaryDirectory() + "emflow-s3-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        guard let out = try? ProcessRunner.run(script, ["start", dir]), out.status == 0,
              let text = try? String(contentsOfFile: dir + "/state.env", encoding: .utf8) else {
            startError = "scripts/s3-server start failed; run it by hand to see why (scripts/bootstrap installs the server)"
            return nil
        }
        var env: [String: String] = [:]
        for line in text.split(separator: "\n") {
            let kv = line.split(separator: "=", maxSplits: 1)
            if kv.count == 2 { env[String(kv[0])] = String(kv[1]) }
        }
        let server = S3TestServer(directory: dir, environment: env)
        atexit { S3TestServer.shared?.stopForGood() }
        return server
    }()

    /// The shared server, or an error (failing the test, never skipping it) saying why there is none.
    public static func require() throws -> S3TestServer {
        guard let s = shared else { throw Missing(reason: startError) }
        return s
    }

    public struct Missing: Error, CustomStringConvertible {
        public let reason: String
        public var description: String { "the S3 test server did not start: \(reason)" }
    }

    init(directory: String, environment: [String: String]) { self.directory = directory; self.environment = environment }

    /// Kills the server as a crash would (SIGKILL).
    public func crash() { _ = try? ProcessRunner.run(Self.script, ["kill", directory]) }
    /// Starts it again on the same data, ports and credentials.
    @discardableResult
    public func restart() -> Bool { (try? ProcessRunner.run(Self.script, ["start", directory]))?.status == 0 }

    func stopForGood() {
        _ = try? ProcessRunner.run(Self.script, ["stop", directory])
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// A fresh bucket name for a test.
    public static func bucketName(_ label: String) -> String {
        "emflow-\(label)-\(String(UInt32.random(in: 0...UInt32.max), radix: 36))".lowercased()
    }

    /// The environment for a child process (emflow, aws, s5cmd) that should use this server.
    public func childEnvironment(extra: [String: String] = [:]) -> [String: String] {
        var env = ProcessInfo.processInfo.environment
        for k in ["AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_CA_BUNDLE", "AWS_ENDPOINT_URL_S3"] { env[k] = nil }
        env["AWS_ACCESS_KEY_ID"] = accessKey
        env["AWS_SECRET_ACCESS_KEY"] = secretKey
        env["AWS_REGION"] = "us-east-1"
        env["AWS_ENDPOINT_URL"] = endpoint
        env["S3_ENDPOINT_URL"] = endpoint
        env["AWS_SHARED_CREDENTIALS_FILE"] = "/nonexistent"
        env["AWS_CONFIG_FILE"] = "/nonexistent"
        return env.merging(extra) { _, b in b }
    }
}

/// scripts/etag-proxy in front of a test server: the same server, seen as one whose ETags are no MD5
/// digests and that says nothing of it. Stopped by its PID.
public final class OpaqueETagProxy {
    public let endpoint: String
    private let process = Process()

    public init(_ server: S3TestServer) throws {
        process.executableURL = URL(fileURLWithPath: Tools.packageRoot + "/scripts/etag-proxy")
        process.arguments = [server.endpoint]
        process.environment = server.childEnvironment()
        let out = Pipe()
        process.standardOutput = out
        try process.run()
        var line = Data()
        while !line.contains(UInt8(ascii: "\n")) {
            let d = out.fileHandleForReading.availableData
            if d.isEmpty { break }
            line.append(d)
        }
        guard let port = Int(String(decoding: line, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)) else {
            process.terminate()
            throw S3TestServer.Missing(reason: "scripts/etag-proxy printed no port")
        }
        endpoint = "http://127.0.0.1:\(port)"
    }

    public func stop() {
        guard process.isRunning else { return }
        kill(process.processIdentifier, SIGTERM)
        process.waitUntilExit()
    }

    deinit { stop() }
}

/// A real single-machine Slurm cluster (scripts/slurm-cluster) in a temporary directory, stopped by
/// its PIDs when the test process exits. `shared` is the default one (16 claimed CPUs, MaxArraySize
/// 50 so that array splitting is exercised); tests that need other settings start their own.
public final class SlurmTestCluster: @unchecked Sendable {
    public let directory: String
    public var conf: String { directory + "/slurm.conf" }
    public static let script = Tools.packageRoot + "/scripts/slurm-cluster"
    nonisolated(unsafe) static var started: [SlurmTestCluster] = []

    public static let shared: Result<SlurmTestCluster, Missing> = start(["--cpus", "16", "--max-array-size", "50"])

    /// The shared cluster, or an error (failing the test, never skipping it) saying why there is none.
    public static func require() throws -> SlurmTestCluster { try shared.get() }

    public static func start(_ options: [String]) -> Result<SlurmTestCluster, Missing> {
        let dir = NSTemporaryDirectory() + "emflow-slurm-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        guard let out = try? ProcessRunner.run(script, ["start", dir] + options) else { return .failure(Missing(reason: "cannot run \(script)")) }
        guard out.status == 0 else {
            return .failure(Missing(reason: "scripts/slurm-cluster start failed (\(out.status)): \(out.stderr); scripts/bootstrap installs Slurm, munge and MariaDB"))
        }
        let c = SlurmTestCluster(directory: dir)
        if started.isEmpty { atexit { for c in SlurmTestCluster.started { c.stop() } } }
        started.append(c)
        return .success(c)
    }

    public struct Missing: Error, CustomStringConvertible {
        public let reason: String
        public var description: String { "the Slurm test cluster did not start: \(reason)" }
    }

    init(directory: String) { self.directory = directory }

    public func stop() {
        _ = try? ProcessRunner.run(Self.script, ["stop", directory])
        try? FileManager.default.removeItem(atPath: directory)
    }
    public func stopController() { _ = try? ProcessRunner.run(Self.script, ["stop-ctld", directory]) }
    @discardableResult
    public func startController() -> Bool { (try? ProcessRunner.run(Self.script, ["start-ctld", directory]))?.status == 0 }

    /// The environment for emflow and Slurm's tools; with `counter`, its wrappers come first on PATH.
    public func environment(counter: SlurmCallCounter? = nil, extra: [String: String] = [:]) -> [String: String] {
        var env = ProcessInfo.processInfo.environment
        env["SLURM_CONF"] = conf
        if let counter { env["PATH"] = counter.directory + ":" + (env["PATH"] ?? "/usr/bin:/bin") }
        return env.merging(extra) { _, b in b }
    }
}

/// Counts calls of Slurm's tools through wrappers on PATH that log each call, then run the real one.
public final class SlurmCallCounter: @unchecked Sendable {
    public let directory: String
    public static let tools = ["sbatch", "squeue", "sacct", "scontrol", "scancel"]

    public init(in dir: String) throws {
        directory = dir + "/slurm-wrappers"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        for tool in Self.tools {
            let real = ["/usr/bin/\(tool)", "/usr/local/bin/\(tool)"].first { FileManager.default.isExecutableFile(atPath: $0) } ?? "/usr/bin/\(tool)"
            let path = directory + "/" + tool
            try "#!/bin/sh\necho \(tool) >> '\(directory)/calls.log'\nexec \(real) \"$@\"\n".write(toFile: path, atomically: true, encoding: .utf8)
            chmod(path, 0o755)
        }
    }

    public func count(_ tool: String) -> Int {
        ((try? String(contentsOfFile: directory + "/calls.log", encoding: .utf8)) ?? "").split(separator: "\n").filter { $0 == tool }.count
    }

    public func reset() { try? FileManager.default.removeItem(atPath: directory + "/calls.log") }
}

/// A real headless browser (Debian's chromium, installed by scripts/bootstrap) for pages emflow writes.
public enum Browser {
    public struct Missing: Error, CustomStringConvertible {
        public var description: String { "no chromium on PATH: run scripts/bootstrap (it installs Debian's chromium)" }
    }
    public struct Page { public let dom: String; public let screenshotBytes: Int }

    public static var executable: String? {
        for name in ["chromium", "chromium-browser", "google-chrome"] {
            if let p = try? ProcessRunner.shell("command -v \(name)"), p.status == 0 {
                let path = p.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
                if !path.isEmpty { return path }
            }
        }
        return nil
    }

    /// Where tests leave files for people to look at (`.test-artifacts/` in the checkout).
    public static func artifact(_ name: String) -> String {
        let dir = Tools.packageRoot + "/.test-artifacts"
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir + "/" + name
    }

    /// Loads `html` (a file) with network off, returns the DOM after rendering, and saves a screenshot.
    public static func render(_ html: String, screenshot: String, size: String = "1280,1800") throws -> Page {
        guard let exe = executable else { throw Missing() }
        let profile = NSTemporaryDirectory() + "emflow-chromium-\(getpid())-\(UInt32.random(in: 0..<UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: profile) }
        let common = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--user-data-dir=" + profile,
                      "--proxy-server=127.0.0.1:9", "--window-size=" + size]
        let url = URL(fileURLWithPath: html).absoluteString
        let dom = try ProcessRunner.run(exe, common + ["--dump-dom", url])
        guard dom.status == 0 else { throw NexusValidator.PythonFailure(message: "chromium --dump-dom failed: \(dom.stderr)") }
        try? FileManager.default.removeItem(atPath: screenshot)
        let shot = try ProcessRunner.run(exe, common + ["--screenshot=" + screenshot, url])
        let bytes = ((try? FileManager.default.attributesOfItem(atPath: screenshot))?[.size] as? Int) ?? 0
        guard shot.status == 0, bytes > 0 else { throw NexusValidator.PythonFailure(message: "chromium --screenshot failed: \(shot.stderr)") }
        print("screenshot of \(html): \(screenshot)")
        return Page(dom: dom.stdout, screenshotBytes: bytes)
    }
}

/// A small deterministic generator (SplitMix64), so a test's random input can be replayed.
public struct SplitMix {
    var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
