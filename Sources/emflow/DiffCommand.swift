import ArgumentParser
import Foundation
import Engine
import POSIXFiles

struct DiffCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "diff",
        abstract: "The NeXus fields and attributes that differ between two versions of an output.",
        discussion: """
            Lists each path whose value differs (~), is only in A (-) or only in B (+), with both values:
              emflow diff managed/P1/S1/E1/nexus/img.nxs managed/P1/S1/E1/nexus/img.v2.nxs
            Provenance that differs between any two conversions (file name and time, task key, the mapping's
            and spec's checksums, note_predecessor, profiling) is counted but listed only with --all.
            Arrays of more than 64 values are compared by type, shape and the SHA-256 of their values.
            Exit codes (as diff(1)): 0 no metadata differs; 1 some does; 2 a file cannot be read.
            """)

    @Argument(help: "The older version.") var a: String
    @Argument(help: "The newer version.") var b: String
    @Flag(help: "Also list the provenance that differs.") var all = false
    @Flag(help: "Print as JSON.") var json = false

    func run() throws {
        let d: OutputDiff
        do {
            d = try OutputDiff.compare(Path.resolve(a, against: currentDirectory()), Path.resolve(b, against: currentDirectory()))
        } catch {
            printError("error: \(error)")
            throw ExitCode(Exit.usage)
        }
        if json { try printJSON(d) } else {
            for c in d.metadata + (all ? d.provenance : []) { print(Self.line(c)) }
            if d.metadata.isEmpty { print("no metadata differs") }
            if !all && !d.provenance.isEmpty { print("(\(d.provenance.count) provenance field(s) differ as well: --all lists them)") }
        }
        if !d.metadata.isEmpty { throw ExitCode(1) }
    }

    static func line(_ c: OutputDiff.Change) -> String {
        switch (c.a, c.b) {
        case let (x?, y?): return "~ \(c.path): \(x) → \(y)"
        case let (x?, nil): return "- \(c.path): \(x)"
        case let (nil, y?): return "+ \(c.path): \(y)"
        default: return "  \(c.path)"
        }
    }
}
