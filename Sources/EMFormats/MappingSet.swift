import Foundation

/// The mappings of a directory (`Mappings/*.json`), and the choice of one for a file.
public struct MappingSet: Sendable {
    public var tables: [MappingTable]
    public var directory: String
    /// Hash over every table's name and content: changes when any mapping is edited, added or removed.
    public var combinedSHA256: String

    /// Loads every `*.json` in `directory`. A broken mapping fails the load with its line.
    public static func load(directory: String, hash: ([UInt8]) -> String) throws(MappingError) -> MappingSet {
        let names: [String]
        do { names = try FileManager.default.contentsOfDirectory(atPath: directory).filter { $0.hasSuffix(".json") }.sorted() } catch {
            throw MappingError(file: directory, line: 0, column: 0, message: "cannot list the mappings directory; set the stage's 'mappings:' to the folder of mapping files")
        }
        var tables: [MappingTable] = []
        var combined = ""
        for n in names {
            let t = try loadFile(directory + "/" + n, hash: hash)
            if let dup = tables.first(where: { $0.name == t.name }) {
                throw MappingError(file: t.file, line: 0, column: 0, message: "name '\(t.name)' is also used by \(dup.file); names must be unique")
            }
            tables.append(t)
            combined += "\(n) \(t.sha256)\n"
        }
        return MappingSet(tables: tables, directory: directory, combinedSHA256: hash(Array(combined.utf8)))
    }

    public static func loadFile(_ path: String, hash: ([UInt8]) -> String) throws(MappingError) -> MappingTable {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw MappingError(file: path, line: 0, column: 0, message: "cannot read the mapping file")
        }
        guard let text = String(data: data, encoding: .utf8) else { throw MappingError(file: path, line: 0, column: 0, message: "not UTF-8 text") }
        return try MappingTable.parse(text: text, file: path, sha256: hash(Array(data)))
    }

    public func named(_ name: String) -> MappingTable? { tables.first { $0.name == name } }

    /// The table whose match conditions all hold with the most conditions; ties go to the first name.
    public func choose(for md: SourceMetadata) -> (table: MappingTable, alternatives: [String])? {
        let scored = tables.compactMap { t in t.score(md).map { (t, $0) } }.sorted { $0.1 != $1.1 ? $0.1 > $1.1 : $0.0.name < $1.0.name }
        guard let best = scored.first else { return nil }
        return (best.0, scored.dropFirst().filter { $0.1 == best.1 }.map(\.0.name))
    }
}
