import ArgumentParser
import EMFormats

struct InspectCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "inspect", abstract: "Describe microscope files (TIFF pages: size, sample type, compression, description).")
    @Argument(help: "Files to describe.") var files: [String]
    @Flag(help: "Print as JSON.") var json = false

    struct Described: Encodable { var file: String; var tiff: TIFFSummary?; var error: String? }

    func run() throws {
        var out: [Described] = []
        for f in files {
            do { out.append(Described(file: f, tiff: try TIFFProbe.inspect(path: f), error: nil)) }
            catch { out.append(Described(file: f, tiff: nil, error: error.description)) }
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
            }
        }
        if out.contains(where: { $0.error != nil }) { throw ExitCode(Exit.itemsFailed) }
    }
}
