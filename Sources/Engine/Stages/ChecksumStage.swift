import POSIXFiles
import Checksums
import Catalog
import WorkflowSpec

/// SHA-256 of each file, streamed through libcrypto in large reads; recorded in the catalog, and a
/// `SHA256SUMS` per directory that `sha256sum -c` accepts. With `verify: true` it re-reads files and
/// fails those whose sum differs from the recorded one.
public struct ChecksumStage: Stage {
    public static let kind = "checksum"
    public static let version = 1
    public static let manifestName = "SHA256SUMS"
    public static let schema = ParameterSchema(summary: "SHA-256 of every file, recorded and written to SHA256SUMS", fields: [
        .init("verify", .bool, default: .bool(false),
              help: "re-read files and compare with the sums already recorded; a mismatch fails the item"),
        .init("manifest", .bool, default: .bool(true), help: "write a SHA256SUMS file in each directory of checksummed files"),
    ])
    public init() {}

    public func isSkippable(parameters: [String: ParamValue]) -> Bool { parameters["verify"]?.boolValue != true }

    public func run(_ task: TaskInput, _ ctx: TaskContext) throws(StageError) -> TaskResult.Partial {
        guard let input = task.input else { throw StageError("checksum needs an input file") }
        let d: FileDigest
        do { d = try FileHasher.sha256(path: input.path, onProgress: ctx.reportBytes) } catch { throw StageError(error) }
        let st: FileStatus
        do { st = try FileStatus.of(path: input.path) } catch { throw StageError(error) }
        if st.size != d.size || st.mtimeNanoseconds != input.mtimeNanoseconds && task.parameters["verify"]?.boolValue != true {
            throw StageError("\(input.path) changed while it was read; it may still be being written", retryable: true)
        }
        if task.parameters["verify"]?.boolValue == true {
            guard let recorded = task.recordedSHA256 ?? input.sha256 else {
                throw StageError("\(input.path) has no recorded SHA-256 to verify against; run a checksum stage without verify first")
            }
            if recorded != d.sha256 {
                throw StageError("\(input.path): SHA-256 mismatch — recorded \(recorded), now \(d.sha256); the file changed or is corrupt: restore it from its source")
            }
        } else if let known = input.sha256, known != d.sha256 {
            throw StageError("\(input.path): SHA-256 \(d.sha256) differs from the \(known) computed when it was copied; the storage may be corrupting data", retryable: true)
        }
        var out = TaskResult.Partial(artifact: Artifact(path: input.path, size: d.size, mtimeNanoseconds: st.mtimeNanoseconds, sha256: d.sha256))
        out.bytes = d.size
        out.objects = [ObjectInfo(path: input.path, size: d.size, mtimeNanoseconds: st.mtimeNanoseconds, sha256: d.sha256,
                                  fields: task.item?.fields ?? [:], sourceURI: nil)]
        return out
    }

    public func finish(stage: StageSpec, results: [TaskResult], catalog: Catalog, ctx: TaskContext) throws(StageError) -> [OutputInfo] {
        guard stage.parameters["manifest"]?.boolValue != false else { return [] }
        var dirs = Set<String>()
        for r in results where r.state != .failed { if let a = r.artifact { dirs.insert(Path.directory(of: a.path)) } }
        var outputs: [OutputInfo] = []
        for dir in dirs.sorted() {
            let sums: [(name: String, sha256: String)]
            do { sums = try catalog.sums(inDirectory: dir) } catch { throw StageError(error.description) }
            let listed = sums.filter { $0.name != Self.manifestName && !$0.name.hasPrefix(".") && $0.name != ReadmeStage.fileName }
            guard !listed.isEmpty else { continue }
            let text = Self.manifest(listed)
            do {
                let target: String
                if Path.relative(dir, to: ctx.outputRoot) != nil || dir == ctx.outputRoot {
                    target = Path.join(dir, Self.manifestName)
                } else {
                    // Files outside the managed root (checksummed in place): the manifest goes under
                    // the root, by the files' absolute directory, with absolute names.
                    target = Path.join(Path.join(ctx.outputRoot, "manifests"), String(dir.dropFirst()) + "/" + Self.manifestName)
                    try makeDirectories(Path.directory(of: target))
                }
                let body = target.hasPrefix(dir + "/") ? text : Self.manifest(listed.map { (Path.join(dir, $0.name), $0.sha256) })
                if let existing = try? readFile(target), existing == Array(body.utf8) {
                    outputs.append(OutputInfo(path: target, size: Int64(existing.count), sha256: SHA256Hasher.hash(existing)))
                    continue
                }
                // A run killed while writing it left its temporary here, which no other task may visit.
                AtomicFile.removeStaleTemporaries(in: Path.directory(of: target))
                try AtomicFile.write(body, to: target)
                outputs.append(OutputInfo(path: target, size: Int64(body.utf8.count), sha256: SHA256Hasher.hash(body)))
            } catch {
                throw StageError("cannot write the SHA256SUMS manifest: \(error)")
            }
        }
        return outputs
    }

    /// `sha256sum` text format: hash, two spaces (text mode), name. Names with a newline or backslash
    /// use coreutils' escaped form (a leading backslash), which `sha256sum -c` understands.
    static func manifest(_ sums: [(name: String, sha256: String)]) -> String {
        var s = ""
        for (name, sha) in sums {
            if name.contains("\n") || name.contains("\\") {
                s += "\\\(sha)  \(name.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\n", with: "\\n"))\n"
            } else {
                s += "\(sha)  \(name)\n"
            }
        }
        return s
    }
}

import Foundation
