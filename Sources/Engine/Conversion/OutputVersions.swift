import Foundation
import POSIXFiles
import Checksums
import ParallelNexus

/// The versions of one converted output, a "dataset": `name.nxs` is version 1, `name.v2.nxs` version 2,
/// and so on, side by side. A conversion whose task key differs from every existing version's (an
/// edited mapping, other parameters) writes the next free version and names the one before it as
/// its predecessor; one whose key matches a version reuses it.
public struct OutputVersion: Sendable, Equatable, Codable {
    /// Where to write (or what to reuse).
    public var target: String
    public var version: Int
    /// A version with this task key exists: nothing to write.
    public var reuse: Bool
    /// The version before this one (`version - 1`), when there is one.
    public var predecessor: String?

    /// The path of `version` of the dataset whose version 1 is `output`.
    public static func path(_ output: String, version: Int) -> String {
        guard version > 1 else { return output }
        let ext = (output as NSString).pathExtension
        return (output as NSString).deletingPathExtension + ".v\(version)" + (ext.isEmpty ? "" : "." + ext)
    }

    public static func choose(output: String, taskKey: String?) -> OutputVersion {
        var version = 1
        var target = output
        while FileManager.default.fileExists(atPath: target) {
            if let taskKey, NXemWriter.taskKey(ofFileAt: target) == taskKey { break }
            version += 1
            target = path(output, version: version)
        }
        return OutputVersion(target: target, version: version, reuse: FileManager.default.fileExists(atPath: target),
                             predecessor: version > 1 ? path(output, version: version - 1) : nil)
    }

    /// The `note_predecessor` NXnote of a version > 1: the file it supersedes, by name and SHA-256,
    /// so the chain can be followed (and checked) from the files alone.
    public func predecessorNote() throws(POSIXFileError) -> [String: NXemDocument.Field] {
        guard let predecessor else { return [:] }
        let sha = try FileHasher.sha256(path: predecessor).sha256
        return [
            "note_predecessor/file_name": .init(.string(TIFFToNXem.uri(predecessor))),
            "note_predecessor/checksum": .init(.string(sha)),
            "note_predecessor/algorithm": .init(.string("sha256")),
            "note_predecessor/type": .init(.string("application/x-hdf5")),
            "note_predecessor/description": .init(.string(
                "version \(version) of this dataset; it supersedes version \(version - 1), \((predecessor as NSString).lastPathComponent), " +
                "made from the same input with another mapping or other parameters (emflow diff shows what changed)")),
        ]
    }
}
