import ArgumentParser
import EMFormats
import Foundation

struct InspectCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "inspect", abstract: "Describe microscope files (TIFF pages: size, sample type, compression, description).")
    @Argument(help: "Files to describe.") var files: [String]
    @Flag(help: "Print as JSON.") var json = false
    @Flag(help: "Also list the flattened metadata keys (what mappings refer to).") var metadata = false

    struct Described: Encodable { var file: String; var tiff: TIFFSummary?; var metadata: [String: String]?; var error: String? }

    func run() throws {
        var out: [Described] = []
        for f in files {
            do {
                var d = Described(file: f, tiff: try TIFFProbe.inspect(path: f), metadata: nil, error: nil)
                if metadata {
                    let md = try MetadataReader.read(try TIFFImageFile(path: f),
                                                     sidecars: MetadataReader.sidecarCandidates(for: f).filter { FileManager.default.fileExists(atPath: $0) })
                    d.metadata = Dictionary(uniqueKeysWithValues: md.keys.map { ($0, md[$0]!.text) })
                }
                out.append(d)
            }
            catch { out.append(Described(file: f, tiff: nil, metadata: nil, error: "\(error)")) }
        }
        if json { try printJSON(out) } else {
            for d in out {
                if let e = d.error { printError("emflow inspect: \(e)"); continue }
                let pages = d.tiff!.pages
                print("\(d.file): TIFF, \(pages.count) page(s)")
                for (i, p) in pages.enumerated() {
                    print("  page \(i): \(p.width)×\(p.height) \(p.dataType)\(p.samplesPerPixel > 1 ? " ×\(p.samplesPerPixel)" : ""), compression \(p.compression)\(p.tiled ? ", tiled" : "")" +
                          (p.description.map { ", description \($0.count) chars" } ?? ""))
                }
                for (k, v) in (d.metadata ?? [:]).sorted(by: { $0.key < $1.key }) { print("  \(k) = \(v.prefix(120))") }
            }
        }
        if out.contains(where: { $0.error != nil }) { throw ExitCode(Exit.itemsFailed) }
    }
}
