#if canImport(Glibc)
import Glibc
#endif

/// A child process: started with `posix_spawn`, its pipes drained with `poll`, reaped with `waitpid`.
///
/// Foundation's `Process.waitUntilExit` polls a run loop every 50 ms when it is called on the main
/// thread, so each short command (an `squeue`, an `sbatch`, a one-second `mpirun`) cost up to 50 ms
/// more than it ran. Here the parent wakes when the child's pipes close and `waitpid` returns.
///
/// The child starts with every signal at its default action and none blocked (a parent's ignored
/// SIGPIPE would otherwise carry over `exec`), in its own process group (a terminal's Ctrl-C reaches
/// emflow, which decides what happens to its children), with no descriptor of the parent's beyond
/// 0, 1 and 2.
public enum Subprocess {
    /// Where the child's standard output and error go.
    public enum Output: Sendable {
        /// Into `Result.stdout` / `Result.stderr`.
        case capture
        /// Both appended to this open descriptor (a log file).
        case descriptor(Int32)
    }

    public struct Result: Sendable {
        /// The exit status, or the number of the signal that ended the child.
        public var status: Int32
        /// Whether a signal ended the child (`status` is then the signal's number).
        public var signaled: Bool
        public var stdout: [UInt8]
        public var stderr: [UInt8]
        public var succeeded: Bool { !signaled && status == 0 }
    }

    /// Runs `executable` (a path; use `/usr/bin/env` to search the child's PATH) with `arguments`,
    /// the environment `environment` (this process's when nil) and the working directory `directory`,
    /// feeding it `input` on standard input (nothing: /dev/null), and waits for it to end.
    public static func run(_ executable: String, _ arguments: [String], environment: [String: String]? = nil,
                           directory: String? = nil, input: [UInt8]? = nil, output: Output = .capture) throws(POSIXFileError) -> Result {
        var argv = [executable] + arguments
        if let directory, addChdir == nil {
            // glibc before 2.29 has no chdir file action: a shell changes directory, then becomes the child.
            argv = ["/bin/sh", "-c", "cd -- \"$0\" && exec \"$@\"", directory] + argv
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }

        // The parent's ends of the pipes, and the child's (closed in the parent once it runs).
        var parentEnds: [Int32] = [], childEnds: [Int32] = []
        defer { for fd in parentEnds + childEnds { close(fd) } }
        func pipePair() throws(POSIXFileError) -> (read: Int32, write: Int32) {
            var fds: [Int32] = [-1, -1]
            let rc = fds.withUnsafeMutableBufferPointer { b in
                if let pipe2 = linuxPipe2 { return pipe2(b.baseAddress!, O_CLOEXEC) }
                guard pipe(b.baseAddress!) == 0 else { return -1 }
                for fd in b { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
                return 0
            }
            guard rc == 0 else { throw POSIXFileError("create a pipe for", path: executable, errno: errno) }
            return (fds[0], fds[1])
        }
        var stdinWrite: Int32 = -1, stdoutRead: Int32 = -1, stderrRead: Int32 = -1
        if input != nil {
            let p = try pipePair()
            stdinWrite = p.write; parentEnds.append(p.write); childEnds.append(p.read)
            posix_spawn_file_actions_adddup2(&actions, p.read, 0)
        } else {
            posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        }
        switch output {
        case .capture:
            let o = try pipePair(), e = try pipePair()
            stdoutRead = o.read; stderrRead = e.read
            parentEnds += [o.read, e.read]; childEnds += [o.write, e.write]
            posix_spawn_file_actions_adddup2(&actions, o.write, 1)
            posix_spawn_file_actions_adddup2(&actions, e.write, 2)
        case .descriptor(let fd):
            posix_spawn_file_actions_adddup2(&actions, fd, 1)
            posix_spawn_file_actions_adddup2(&actions, fd, 2)
        }
        if let directory, let addChdir { _ = directory.withCString { addChdir(&actions, $0) } }
        if let addClosefrom { _ = addClosefrom(&actions, 3) } else { markInheritedDescriptorsCloseOnExec() }

        var all = sigset_t(), none = sigset_t()
        sigfillset(&all)
        sigemptyset(&none)
        posix_spawnattr_setsigdefault(&attributes, &all)
        posix_spawnattr_setsigmask(&attributes, &none)
        posix_spawnattr_setpgroup(&attributes, 0)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETPGROUP))

        let env = environment.map { $0.map { "\($0.key)=\($0.value)" }.sorted() }
        var pid: pid_t = 0
        let rc = withCStrings(argv) { cArgv in
            guard let env else { return posix_spawn(&pid, argv[0], &actions, &attributes, cArgv, UnsafePointer(environ)) }
            return withCStrings(env) { cEnv in posix_spawn(&pid, argv[0], &actions, &attributes, cArgv, cEnv) }
        }
        guard rc == 0 else { throw POSIXFileError("start", path: argv[0], errno: rc) }
        for fd in childEnds { close(fd) }
        childEnds = []

        var result = Result(status: 0, signaled: false, stdout: [], stderr: [])
        if stdinWrite >= 0 || stdoutRead >= 0 {
            pump(input: input ?? [], to: stdinWrite, stdout: stdoutRead, stderr: stderrRead, into: &result)
            parentEnds = []  // pump closed them
        }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) == -1 {
            guard errno == EINTR else { throw POSIXFileError("wait for", path: argv[0], errno: errno) }
        }
        let low = status & 0x7f
        if low == 0 { result.status = (status >> 8) & 0xff } else { result.status = low; result.signaled = true }
        return result
    }

    /// Writes `input` to the child's standard input while reading its output, until all are closed:
    /// neither side can block the other on a full pipe. Closes the descriptors.
    private static func pump(input: [UInt8], to stdinFD: Int32, stdout: Int32, stderr: Int32, into result: inout Result) {
        var written = 0
        var open: [(fd: Int32, events: Int16)] = []
        // A child that exits without reading its input makes the write fail with EPIPE and raise
        // SIGPIPE, which would end this process: block it on this thread, and take any it left.
        var sigpipe = sigset_t(), previous = sigset_t()
        sigemptyset(&sigpipe)
        sigaddset(&sigpipe, SIGPIPE)
        pthread_sigmask(SIG_BLOCK, &sigpipe, &previous)
        defer {
            var pending = sigset_t()
            sigpending(&pending)
            if sigismember(&previous, SIGPIPE) == 0, sigismember(&pending, SIGPIPE) == 1 {
                var now = timespec()
                _ = sigtimedwait(&sigpipe, nil, &now)
            }
            pthread_sigmask(SIG_SETMASK, &previous, nil)
        }
        if stdinFD >= 0 {
            _ = fcntl(stdinFD, F_SETFL, fcntl(stdinFD, F_GETFL) | O_NONBLOCK)
            if input.isEmpty { close(stdinFD) } else { open.append((stdinFD, Int16(POLLOUT))) }
        }
        if stdout >= 0 { open += [(stdout, Int16(POLLIN)), (stderr, Int16(POLLIN))] }
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        while !open.isEmpty {
            var fds = open.map { pollfd(fd: $0.fd, events: $0.events, revents: 0) }
            if poll(&fds, nfds_t(fds.count), -1) < 0 { if errno == EINTR { continue }; break }
            var finished: Set<Int32> = []
            for p in fds where p.revents != 0 {
                if p.fd == stdinFD {
                    let n = input.withUnsafeBytes { write(stdinFD, $0.baseAddress! + written, $0.count - written) }
                    if n > 0 { written += n }
                    if (n < 0 && errno != EAGAIN && errno != EINTR) || written == input.count { finished.insert(p.fd) }
                } else {
                    let n = buffer.withUnsafeMutableBytes { read(p.fd, $0.baseAddress!, $0.count) }
                    if n > 0 {
                        if p.fd == stdout { result.stdout += buffer[..<n] } else { result.stderr += buffer[..<n] }
                    } else if n == 0 || (errno != EAGAIN && errno != EINTR) { finished.insert(p.fd) }
                }
            }
            for fd in finished { close(fd) }
            open.removeAll { finished.contains($0.fd) }
        }
        for o in open { close(o.fd) }  // only after a failed poll
    }

    private static func withCStrings<R>(_ strings: [String], _ body: (UnsafePointer<UnsafeMutablePointer<CChar>?>) -> R) -> R {
        let pointers = strings.map { strdup($0) } + [nil]
        defer { for p in pointers { free(p) } }
        return pointers.withUnsafeBufferPointer { body($0.baseAddress!) }
    }

    /// Without glibc's closefrom action (before 2.34): every descriptor above 2 closes on exec.
    private static func markInheritedDescriptorsCloseOnExec() {
        guard let names = try? listDirectory("/proc/self/fd") else { return }
        for e in names { if let fd = Int32(e.name), fd > 2 { _ = fcntl(fd, F_SETFD, fcntl(fd, F_GETFD) | FD_CLOEXEC) } }
    }

    // glibc's GNU extensions, which Swift's Glibc module does not declare.
    private typealias FileAction = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32
    private typealias PathAction = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, UnsafePointer<CChar>) -> Int32
    nonisolated(unsafe) private static let linuxPipe2 = libcFunction("pipe2", as: (@convention(c) (UnsafeMutablePointer<Int32>, Int32) -> Int32).self)
    nonisolated(unsafe) private static let addClosefrom = libcFunction("posix_spawn_file_actions_addclosefrom_np", as: FileAction.self)
    nonisolated(unsafe) private static let addChdir = libcFunction("posix_spawn_file_actions_addchdir_np", as: PathAction.self)
}
