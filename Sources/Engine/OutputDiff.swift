import Foundation
import ParallelNexus

/// What changed between two versions of one converted output: every NeXus path (group, field,
/// attribute) whose value differs, with the values, split into the metadata a mapping or a
/// parameter produced and the provenance that differs between any two conversions (file name and
/// time, task key, mapping and spec checksums, the predecessor note).
public struct OutputDiff: Codable, Sendable {
    public var a: String
    public var b: String
    public var metadata: [HDF5TreeDiff.Change]
    public var provenance: [HDF5TreeDiff.Change]
    public typealias Change = HDF5TreeDiff.Change

    /// Groups under the entry that describe how a file was made rather than what it holds.
    public static let provenanceGroups: Set<String> = ["note_mapping", "note_workflow", "note_predecessor", "profiling"]

    public static func isProvenance(_ path: String) -> Bool {
        if path.hasPrefix("/@") { return true }
        let parts = path.split(separator: "/", maxSplits: 2).map(String.init)
        guard parts.count >= 2 else { return false }
        let group = parts[1].split(separator: "@", maxSplits: 1).first.map(String.init) ?? parts[1]
        return provenanceGroups.contains(group)
    }

    public static func compare(_ a: String, _ b: String) throws(EngineError) -> OutputDiff {
        var trees: [HDF5Tree] = []
        for p in [a, b] {
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: p, isDirectory: &isDirectory) else { throw .input("\(p): no such file") }
            guard !isDirectory.boolValue else { throw .input("\(p) is a directory; emflow diff compares two NeXus/HDF5 files") }
            guard FileManager.default.isReadableFile(atPath: p) else { throw .input("\(p): permission denied") }
            do { trees.append(try HDF5Tree.read(path: p)) } catch {
                // HDF5's own error stack says little more than this to a user.
                let signature = error.message.contains("file signature")
                throw .input("\(p): " + (signature ? "not an HDF5 file" : error.message) + " — emflow diff compares two NeXus/HDF5 files")
            }
        }
        let all = HDF5TreeDiff(trees[0], trees[1]).changes
        return OutputDiff(a: a, b: b, metadata: all.filter { !isProvenance($0.path) }, provenance: all.filter { isProvenance($0.path) })
    }
}
