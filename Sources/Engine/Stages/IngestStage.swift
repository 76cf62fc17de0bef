import POSIXFiles
import Checksums
import WorkflowSpec

/// Brings a dropped file into the managed layout `<root>/<proposal>/<sample>/<experiment>/raw/<file>`:
/// a hard link where the file systems allow, else a verified copy; raw files become read-only and are
/// never overwritten.
public struct IngestStage: Stage {
    public static let kind = "ingest"
    public static let version = 1
    public static let schema = ParameterSchema(summary: "bring input files into the managed raw layout", fields: [
        .init("mode", .string, default: .string("link"), allowed: ["link", "copy"],
              help: "link: hard link when on the same file system (else copy); copy: always a verified copy"),
    ])
    public init() {}

    static let requiredFields = ["proposal", "sample", "experiment", "file"]

    public func run(_ task: TaskInput, _ ctx: TaskContext) throws(StageError) -> TaskResult.Partial {
        guard let item = task.item, let src = task.input else { throw StageError("ingest needs an input file") }
        if let problem = item.layoutProblem { throw StageError(problem) }
        let missing = Self.requiredFields.filter { (item.fields[$0] ?? "").isEmpty }
        guard missing.isEmpty else {
            throw StageError("\(src.path): the input layout gives no \(missing.joined(separator: ", ")); give the input a layout such as {proposal}/{sample}/{experiment}/{file}")
        }
        for f in Self.requiredFields where item.fields[f] == "." || item.fields[f] == ".." {
            throw StageError("\(src.path): '\(item.fields[f]!)' is not a valid \(f) name")
        }
        let dir = Path.join(ctx.outputRoot, "\(item.fields["proposal"]!)/\(item.fields["sample"]!)/\(item.fields["experiment"]!)/raw")
        let dest = Path.join(dir, item.fields["file"]!)
        do {
            // The source must be what was listed; a file still being written by the microscope is retried.
            let now = try FileStatus.of(path: src.path)
            if now.size != src.size || now.mtimeNanoseconds != src.mtimeNanoseconds {
                throw StageError("\(src.path) changed since it was listed (size \(src.size) -> \(now.size)); it may still be being written", retryable: true)
            }
            try makeDirectories(dir)
            AtomicFile.removeStaleTemporaries(in: dir)
            var sha: String? = nil
            var note: String
            if let existing = try FileStatus.ifExists(path: dest) {
                if existing.device == now.device && existing.inode == now.inode {
                    note = "already ingested (same file)"
                } else {
                    let a = try hashing(dest), b = try hashing(src.path)
                    guard a == b else {
                        throw StageError("\(dest) already exists with different content (sha256 \(a.sha256.prefix(12))…, new file \(b.sha256.prefix(12))…); raw data is never overwritten — rename the new file or move the old one aside")
                    }
                    sha = a.sha256
                    note = "already ingested (identical copy)"
                }
            } else if task.parameters["mode"]?.stringValue != "copy", try hardLink(from: src.path, to: dest) {
                note = "hard-linked"
            } else {
                let tmp = AtomicFile.temporaryPath(for: dest)
                let d: FileDigest
                do { d = try FileHasher.copyVerified(from: src.path, to: tmp) }
                catch { throw StageError(error.description, retryable: { if case .io(let e) = error { e.isTransient } else { true } }()) }
                ctx.reportBytes(Int(d.size))
                // link() instead of rename(): never replaces a file another process put there meanwhile.
                if try !hardLink(from: tmp, to: dest) {
                    try AtomicFile.publish(temporary: tmp, as: dest)
                } else {
                    unlinkIgnoringErrors(tmp)
                    try AtomicFile.syncDirectory(dir)
                }
                sha = d.sha256
                note = "copied and verified"
            }
            let st = try FileStatus.of(path: dest)
            if st.mode & 0o222 != 0 { try setPermissions(dest, st.mode & ~0o222) }
            let art = Artifact(path: dest, size: st.size, mtimeNanoseconds: st.mtimeNanoseconds, sha256: sha)
            var out = TaskResult.Partial(artifact: art)
            out.objects = [ObjectInfo(path: dest, size: st.size, mtimeNanoseconds: st.mtimeNanoseconds, sha256: sha,
                                      fields: item.fields, sourceURI: src.path)]
            out.notes = [note]
            return out
        } catch let e as StageError {
            throw e
        } catch let e as POSIXFileError {
            throw StageError(e)
        } catch {
            throw StageError("\(error)")
        }
    }

    func hashing(_ path: String) throws(POSIXFileError) -> FileDigest { try FileHasher.sha256(path: path) }
}
