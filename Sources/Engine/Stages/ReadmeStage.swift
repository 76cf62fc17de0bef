import Foundation
import POSIXFiles
import Checksums
import WorkflowSpec

/// A `README.txt` at each level of the managed layout (proposal, sample, experiment) with the entity's
/// human context from the spec's `context:` and the data it holds, as the LAME layout kept them.
public struct ReadmeStage: Stage {
    public static let kind = "readme"
    public static let version = 1
    public static let fileName = "README.txt"
    public static let schema = ParameterSchema(summary: "README.txt per proposal, sample and experiment directory", fields: [
        .init("levels", .stringList, default: .list([.string("proposal"), .string("sample"), .string("experiment")]),
              help: "which levels get a README: proposal, sample, experiment"),
    ])
    public init() {}
    public var granularity: Granularity { .perDirectory }

    static let levelFields = ["proposal", "sample", "experiment"]

    /// The directories to describe and what lies in each.
    public func groups(_ members: [TaskInput.GroupMember], outputRoot: String, parameters: [String: ParamValue]) -> [(directory: String, members: [TaskInput.GroupMember])] {
        let levels = Set(parameters["levels"]?.listValue?.compactMap(\.stringValue) ?? Self.levelFields)
        var by: [String: [TaskInput.GroupMember]] = [:]
        for m in members {
            var rel = ""
            for f in Self.levelFields {
                guard let v = m.fields[f] else { break }
                rel = rel.isEmpty ? v : rel + "/" + v
                if levels.contains(f) { by[Path.join(outputRoot, rel), default: []].append(m) }
            }
        }
        return by.keys.sorted().map { ($0, by[$0]!.sorted { $0.itemID < $1.itemID }) }
    }

    public func run(_ task: TaskInput, _ ctx: TaskContext) throws(StageError) -> TaskResult.Partial {
        guard let dir = task.directory, let members = task.group, !members.isEmpty else { throw StageError("readme needs a directory and its files") }
        let text = Self.render(directory: dir, members: members, ctx: ctx)
        let target = Path.join(dir, Self.fileName)
        do {
            try makeDirectories(dir)
            if let existing = try? readFile(target), existing == Array(text.utf8) {
                // Same text: leave the file (and its mtime) alone.
            } else {
                AtomicFile.removeStaleTemporaries(in: dir)  // what a run killed while writing it left
                try AtomicFile.write(text, to: target)
            }
        } catch { throw StageError(error) }
        var out = TaskResult.Partial(artifact: nil)
        out.outputs = [OutputInfo(path: target, size: Int64(text.utf8.count), sha256: SHA256Hasher.hash(text))]
        return out
    }

    static func render(directory: String, members: [TaskInput.GroupMember], ctx: TaskContext) -> String {
        let f = members[0].fields
        let rel = Path.relative(directory, to: ctx.outputRoot) ?? directory
        let depth = rel.split(separator: "/").count
        let level = levelFields[min(depth, 3) - 1]
        let id = f[level] ?? Path.lastComponent(of: directory)
        let c = ctx.context
        // Context for this entity: context.<level>s.<id> (e.g. context.proposals.P2026-001).
        let own = c["\(level)s"]?[id]?.mapValue ?? [:]
        var lines: [String] = []
        let title = own["title"]?.text ?? "\(level.capitalized) \(id)"
        lines.append(title)
        lines.append(String(repeating: "=", count: max(3, title.count)))
        lines.append("")
        func field(_ label: String, _ value: String) {
            let l = label.prefix(1).uppercased() + label.dropFirst() + ":"
            lines.append(l + String(repeating: " ", count: max(1, 13 - l.count)) + value)
        }
        field("level", level)
        field("path", rel)
        for lf in levelFields.prefix(depth) { field(lf, f[lf] ?? "") }
        for k in own.keys.sorted() where k != "title" { if let v = own[k]?.text { field(k, v) } }
        for k in ["facility", "instrument", "contact", "license", "description"] {
            if let v = c[k]?.text, own[k] == nil { field(k, v) }
        }
        lines.append("")
        let totalBytes = members.reduce(Int64(0)) { $0 + $1.artifact.size }
        lines.append("Data: \(members.count) file(s), \(formatBytes(totalBytes))")
        if level == "experiment" {
            lines.append("")
            for m in members {
                let name = Path.relative(m.artifact.path, to: directory) ?? m.artifact.path
                lines.append("  \(name)  \(m.artifact.size) bytes  sha256:\(m.artifact.sha256 ?? "not computed")")
            }
        } else {
            let child = levelFields[depth]
            var counts: [String: (Int, Int64)] = [:]
            for m in members { let k = m.fields[child] ?? "?"; counts[k, default: (0, 0)].0 += 1; counts[k]!.1 += m.artifact.size }
            lines.append("")
            lines.append("\(child.capitalized)s:")
            for k in counts.keys.sorted() { lines.append("  \(k)/  \(counts[k]!.0) file(s), \(formatBytes(counts[k]!.1))") }
        }
        lines.append("")
        lines.append("Checksums: SHA256SUMS files next to the data (check with: sha256sum -c SHA256SUMS).")
        lines.append("Made by emflow \(EmflowVersion.current), workflow '\(ctx.workflow)' (spec sha256 \(ctx.specSHA256.prefix(16))).")
        return lines.joined(separator: "\n") + "\n"
    }
}

public func formatBytes(_ n: Int64) -> String {
    let units = ["B", "KB", "MB", "GB", "TB", "PB"]
    var v = Double(n), i = 0
    while v >= 1000 && i < units.count - 1 { v /= 1000; i += 1 }
    if i == 0 { return "\(n) B" }
    let rounded = v >= 100 ? String(Int(v.rounded())) : String(Double(Int((v * 10).rounded())) / 10)
    return "\(rounded) \(units[i])"
}

public enum EmflowVersion {
    public static let current = "0.1.0"
}
