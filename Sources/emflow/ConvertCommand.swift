import ArgumentParser
import Foundation
import Engine
import EMFormats
import Checksums
import POSIXFiles
import ParallelNexus

struct ConvertCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "convert",
        abstract: "Convert microscope TIFFs to NeXus/NXem files (outside a workflow: no catalog, no run directory).",
        discussion: "Each FILE becomes OUTDIR/<stem>.nxs (or -o PATH for one file). An existing output is never overwritten: a new version <stem>.v2.nxs is written.")
    @Argument(help: "TIFF files.") var files: [String]
    @Option(name: .shortAndLong, help: "Output file (one input only).") var output: String?
    @Option(name: .customLong("out-dir"), help: "Output directory (default: next to each input).") var outDir: String?
    @Option(help: "A mapping name or .json file (default: chosen from each file's tags).") var mapping: String?
    @Option(help: "Folder of mapping files (default: $EMFLOW_MAPPINGS or emflow's Mappings/).") var mappings: String?
    @Option(help: "fail | keep: what to do with a file no mapping matches.") var unmapped: String = "fail"
    @Option(help: "none | deflate | bitshuffle") var compression: String = "none"
    @Option(help: "IANA zone for metadata times without an offset (default: this machine's).") var timezone: String?
    @Option(name: .customLong("atom-types"), help: "Elements in the sample, e.g. \"Fe, C\".") var atomTypes: String?
    @Flag(help: "Print a JSON report per file.") var json = false
    @Flag(help: "Print only errors.") var quiet = false

    func validate() throws {
        if output != nil && files.count != 1 { throw ValidationError("-o/--output takes one input file; use --out-dir for several") }
        guard ["fail", "keep"].contains(unmapped) else { throw ValidationError("--unmapped is fail or keep") }
        guard ["none", "deflate", "bitshuffle"].contains(compression) else { throw ValidationError("--compression is none, deflate or bitshuffle") }
        if let tz = timezone, TimeZone(identifier: tz) == nil { throw ValidationError("--timezone '\(tz)' is not an IANA zone such as Europe/Rome") }
    }

    func run() throws {
        let set = try loadMappings(mappings, command: "convert")
        var options = TIFFToNXem.Options(mappings: set)
        options.mapping = mapping
        options.unmapped = unmapped == "keep" ? .keep : .fail
        options.compression = compression == "deflate" ? .deflate(level: 4) : compression == "bitshuffle" ? .bitshuffleLZ4 : .none
        if let timezone { options.timezone = timezone }
        options.atomTypes = atomTypes
        let converter = TIFFToNXem(options: options)
        var failed = 0
        var reports: [TIFFToNXem.Report] = []
        for f in files {
            let name = Path.lastComponent(of: f)
            let stem = name.contains(".") ? String(name[..<name.lastIndex(of: ".")!]) : name
            let target = output ?? Path.join(outDir ?? Path.directory(of: f), stem + ".nxs")
            do {
                if let d = outDir { try makeDirectories(d) }
                let r = try converter.convert(input: f, inputSHA256: nil, output: target)
                reports.append(r)
                if !json && !quiet {
                    print("\(f) → \(r.output): \(r.shape.map(String.init).joined(separator: "×")) \(r.dataType), mapping \(r.mapping ?? "none"), \(r.mapped.count) key(s) placed, \(r.kept.count) kept verbatim")
                    for w in r.warnings { print("  warning: \(w)") }
                }
            } catch {
                failed += 1
                printError("emflow convert: \(error)")
            }
        }
        if json { try printJSON(reports) }
        if failed > 0 { throw ExitCode(Exit.itemsFailed) }
    }
}

struct MappingsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mappings", abstract: "List and check the mapping files (instrument metadata → NXem paths).")
    @Option(help: "Folder of mapping files (default: $EMFLOW_MAPPINGS or emflow's Mappings/).") var directory: String?
    @Option(help: "Show which mapping a TIFF would get, and what it maps.") var file: String?
    @Flag(help: "Print as JSON.") var json = false

    struct Listed: Encodable { var name: String; var file: String; var sha256: String; var description: String; var rules: Int; var match: [String] }

    func run() throws {
        let set = try loadMappings(directory, command: "mappings")
        let dir = set.directory
        if let file {
            let md: SourceMetadata
            do { md = try MetadataReader.read(try TIFFImageFile(path: file), sidecars: MetadataReader.sidecarCandidates(for: file).filter { FileManager.default.fileExists(atPath: $0) }) }
            catch { printError("emflow mappings: \(error)"); throw ExitCode(Exit.itemsFailed) }
            guard let (t, _) = set.choose(for: md) else {
                printError("emflow mappings: no mapping in \(dir) matches \(file) (sources: \(md.sources.joined(separator: ", ")))")
                throw ExitCode(Exit.itemsFailed)
            }
            let m: MappedMetadata
            do { m = try t.apply(to: md, defaultTimezone: TimeZone.current.identifier) } catch { printError("emflow mappings: \(error)"); throw ExitCode(Exit.itemsFailed) }
            if json { try printJSON(["mapping": t.name, "used": m.used.description]); return }
            print("\(file): mapping \(t.name) (\(t.file))")
            for (k, v) in m.values.sorted(by: { $0.key < $1.key }) { print("  \(k) = \(v)") }
            return
        }
        let listed = set.tables.map { Listed(name: $0.name, file: $0.file, sha256: $0.sha256, description: $0.description, rules: $0.rules.count,
                                             match: $0.match.map { c in c.key + (c.equals.map { " == \($0)" } ?? "") + (c.glob.map { " ~ \($0)" } ?? "") }) }
        if json { try printJSON(listed); return }
        print("\(listed.count) mapping(s) in \(dir), all valid:")
        for l in listed { print("  \(l.name)  (\(l.rules) rules; matches \(l.match.joined(separator: " and ")))\n      \(l.description)") }
    }
}

/// The mapping folder (given, or the default), loaded and checked; a broken mapping is a usage error.
func loadMappings(_ directory: String?, command: String) throws -> MappingSet {
    let dir = directory ?? ConvertStage.defaultMappingsDirectory()
    do { return try MappingSet.load(directory: dir, hash: SHA256Hasher.hash) } catch {
        printError("emflow \(command): \(error)")
        throw ExitCode(Exit.usage)
    }
}
