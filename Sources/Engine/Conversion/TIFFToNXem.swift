import Foundation
import POSIXFiles
import Checksums
import EMFormats
import ParallelNexus
import Synchronization

/// One TIFF (image, stack or RGB preview) → one NXem file: pixels from libtiff, metadata flattened
/// from every vendor source, placed by a mapping in SI units, everything else kept verbatim, and the
/// provenance of the conversion. A library function: the `convert` stage and `emflow convert` call it.
public struct TIFFToNXem: Sendable {
    public enum Unmapped: String, Sendable { case fail, keep }

    public struct Options: Sendable {
        public var mappings: MappingSet
        /// A mapping name or a path to a mapping file; nil chooses by the file's tags.
        public var mapping: String?
        public var unmapped: Unmapped = .fail
        public var compression: Compression = .none
        public var timezone: String = TimeZone.current.identifier
        /// Sample facts a mapping rarely has (from the spec's context).
        public var sampleName: String?
        public var atomTypes: String?
        public var preparationDate: String?
        public var specPath: String?
        public var specSHA256: String?
        public var taskKey: String?
        public var reportBytes: @Sendable (Int) -> Void = { _ in }
        public init(mappings: MappingSet) { self.mappings = mappings }
    }

    /// What a conversion did, for logs, tests and `emflow convert --json`.
    public struct Report: Sendable, Codable {
        public var input: String
        public var output: String
        public var mapping: String?
        public var mappingFile: String?
        public var shape: [Int]
        public var dataType: String
        public var images: Int
        public var pagesUsed: [Int]
        public var pagesSkipped: [Int]
        public var sources: [String]
        /// Source key → NXem path, for every key the mapping placed.
        public var mapped: [String: String]
        /// Source keys kept only verbatim (in `measurement/event1/source_metadata`).
        public var kept: [String]
        public var values: [String: MappedValue]
        public var warnings: [String]
        public var inputSHA256: String
        public var outputSHA256: String
        public var outputSize: Int64
        public var reused: Bool
        /// Which version of the output this is (1: `name.nxs`, 2: `name.v2.nxs`, ...) and the one before it.
        public var version: Int
        public var predecessor: String?
        public var mappingVersion: String?
        public var mappingSHA256: String?
        /// "vendor model" as written to measurement/instrument/fabrication.
        public var instrument: String
        public var startTime: String
    }

    public struct Failure: Error, CustomStringConvertible, Sendable {
        public let message: String
        public let retryable: Bool
        public var description: String { message }
        init(_ m: String, retryable: Bool = false) { message = m; self.retryable = retryable }
    }

    public let options: Options
    public init(options: Options) { self.options = options }

    static let ev = "measurement/event1/instrument"

    // MARK: - Convert

    /// Converts `input` to `output` (a final path). If `output` exists with another task key, the next
    /// free version (`name.v2.nxs`, ...) is written instead; one with this task key is reused.
    public func convert(input: String, inputSHA256 known: String?, output: String, extraSidecars: [String]? = nil) throws(Failure) -> Report {
        var clock = PhaseClock(enabled: environment("EMFLOW_PROFILE") != nil)
        defer { clock.report(input) }
        let file: TIFFImageFile
        do { file = try TIFFImageFile(path: input) } catch { throw Failure(error.description) }
        let series = file.series()
        for p in series.pages { do { try file.check(file.pages[p]) } catch { throw Failure(error.description) } }
        let page = series.page
        var warnings: [String] = []
        if !series.skipped.isEmpty {
            warnings.append("kept the \(series.pages.count)-page \(page.width)×\(page.height) series; skipped page(s) \(series.skipped.map(String.init).joined(separator: ", ")) of other shapes (thumbnails or previews)")
        }

        // Metadata and mapping.
        let sidecars = extraSidecars ?? MetadataReader.sidecarCandidates(for: input).filter { FileManager.default.fileExists(atPath: $0) }
        let md: SourceMetadata
        do { md = try MetadataReader.read(file, page: series.pages[0], sidecars: sidecars) } catch {
            throw Failure("\(input): \(error.description)")
        }
        clock.mark("open+metadata")
        let table: MappingTable?
        if let m = options.mapping {
            if let t = options.mappings.named(m) { table = t }
            else if m.hasSuffix(".json") {
                do { table = try MappingSet.loadFile(m, hash: SHA256Hasher.hash) } catch { throw Failure(error.description) }
            } else {
                throw Failure("mapping '\(m)' is neither a name in \(options.mappings.directory) (\(options.mappings.tables.map(\.name).joined(separator: ", "))) nor a .json file")
            }
        } else if let (t, ties) = options.mappings.choose(for: md) {
            table = t
            if !ties.isEmpty { warnings.append("mappings \(([t.name] + ties).joined(separator: ", ")) match equally; used \(t.name) — set mapping: in the spec to choose") }
        } else {
            table = nil
            let srcs = md.sources.joined(separator: ", ")
            if options.unmapped == .fail {
                throw Failure("\(input): no mapping in \(options.mappings.directory) matches this file (metadata sources: \(srcs.isEmpty ? "none" : srcs)); add a mapping for the instrument, name one with mapping:, or set unmapped: keep to convert with the metadata kept verbatim")
            }
            warnings.append("no mapping matches (sources: \(srcs.isEmpty ? "none" : srcs)); instrument facts are kept verbatim only, not at NXem paths")
        }
        var mapped = MappedMetadata()
        if let table {
            do { mapped = try table.apply(to: md, defaultTimezone: options.timezone) } catch { throw Failure("\(input): \(error.message)") }
        }

        clock.mark("mapping")
        // Input checksum: the upstream stage's when known, else computed on another core while the
        // pixels are decoded below.
        let inputHash: BackgroundTask<Result<FileDigest, POSIXFileError>>? = known == nil ? BackgroundTask {
            do throws(POSIXFileError) { return .success(try FileHasher.sha256(path: input)) } catch { return .failure(error) }
        } : nil
        func inputSHA() throws(Failure) -> String {
            if let known { return known }
            switch inputHash!.wait() {
            case .success(let d): return d.sha256
            case .failure(let e): throw Failure(e.description, retryable: true)
            }
        }
        let sha: String
        // Where to write: a new version unless this task already wrote one.
        let choice = OutputVersion.choose(output: output, taskKey: options.taskKey)
        if choice.reuse {
            sha = try inputSHA()
            return try report(choice, input: input, table: table, md: md, mapped: mapped, series: series, warnings: warnings, sha: sha)
        }
        let target = choice.target
        if choice.version > 1 { warnings.append("\(output) exists from an earlier conversion (other mapping or parameters); wrote version \(choice.version)") }

        clock.mark("document")
        // One-page images: pixels that lie in the file as they are (uncompressed, native order) are
        // used from a memory map; others are decoded before taking the HDF5 lock, so other workers'
        // writes overlap with the decoding.
        let single = series.pages.count == 1
        var pre: UnsafeRawBufferPointer? = nil
        var mapped_: MappedFile? = nil
        var decoded: UnsafeMutableRawBufferPointer? = nil
        defer { decoded?.deallocate(); withExtendedLifetime(mapped_) {} }
        if single {
            if let range = file.rawPixelRange(page: series.pages[0]), let m = MappedFile(path: input, size: Int(file.fileSize)) {
                mapped_ = m
                pre = UnsafeRawBufferPointer(rebasing: m.bytes[Int(range.lowerBound)..<Int(range.upperBound)])
            } else {
                let b = UnsafeMutableRawBufferPointer.allocate(byteCount: page.decodedBytes, alignment: 64)
                decoded = b
                do { try file.read(page: series.pages[0], into: b) } catch { throw Failure(error.description) }
                pre = UnsafeRawBufferPointer(b)
            }
        }
        let planeBytes = page.width * page.height * page.pixelType!.size
        clock.mark("decode")
        sha = try inputSHA()
        clock.mark("input sha256 (rest)")
        var doc = try document(file: file, input: input, series: series, md: md, mapped: mapped, table: table, sha: sha, warnings: &warnings)
        doc.rootAttributes["file_name"] = H5Value.string((target as NSString).lastPathComponent)
        do { for (k, f) in try choice.predecessorNote() { doc.fields[k] = f } } catch { throw Failure(error.description, retryable: error.isTransient) }
        clock.mark("document")
        let outputDigest = Mutex<FileDigest?>(nil)
        do {
            try NXemWriter.write(doc, to: target, compression: options.compression) { index, ds in
                if let pre {
                    let plane = UnsafeRawBufferPointer(rebasing: pre[(index * planeBytes)..<((index + 1) * planeBytes)])
                    let rows = doc.images[index].chunks[0], rowBytes = page.width * page.pixelType!.size
                    if options.compression == .none {
                        // Whole chunks go to the file as they are; a last, partial one through a selection.
                        for r0 in stride(from: 0, to: page.height, by: rows) {
                            let n = min(rows, page.height - r0)
                            let part = UnsafeRawBufferPointer(rebasing: plane[(r0 * rowBytes)..<((r0 + n) * rowBytes)])
                            if n == rows { try ds.writeChunk(at: [r0, 0], part) } else { try ds.write(start: [r0, 0], count: [n, page.width], part) }
                        }
                    } else {
                        try ds.write(start: [0, 0], count: [page.height, page.width], plane)
                    }
                } else {
                    let b = UnsafeMutableRawBufferPointer.allocate(byteCount: page.decodedBytes, alignment: 64)
                    defer { b.deallocate() }
                    for (k, p) in series.pages.enumerated() {
                        try file.read(page: p, into: b)
                        try ds.write(start: [k, 0, 0], count: [1, page.height, page.width],
                                     UnsafeRawBufferPointer(rebasing: b[(index * planeBytes)..<((index + 1) * planeBytes)]))
                        options.reportBytes(planeBytes)
                    }
                }
            } whileSyncing: { tmp in
                let d = try FileHasher.sha256(path: tmp)
                outputDigest.withLock { $0 = d }
            }
        } catch let e as EMFormatsError {
            throw Failure(e.description)
        } catch let e as POSIXFileError {
            throw Failure(e.description, retryable: e.isTransient)
        } catch {
            throw Failure("\(target): \(error)")
        }
        if single { options.reportBytes(page.decodedBytes) }
        clock.mark("write+sync+output sha256")
        return try report(choice, input: input, table: table, md: md, mapped: mapped, series: series, warnings: warnings, sha: sha,
                          digest: outputDigest.withLock { $0 })
    }

    func report(_ choice: OutputVersion, input: String, table: MappingTable?, md: SourceMetadata, mapped: MappedMetadata,
                series: TIFFSeries, warnings: [String], sha: String, digest: FileDigest? = nil) throws(Failure) -> Report {
        let target = choice.target
        let d: FileDigest
        if let digest { d = digest } else {
            do { d = try FileHasher.sha256(path: target) } catch { throw Failure(error.description, retryable: true) }
        }
        let p = series.page
        let shape = series.pages.count > 1 ? [series.pages.count, p.height, p.width] : [p.height, p.width]
        return Report(input: input, output: target, mapping: table?.name, mappingFile: table?.file, shape: shape,
                      dataType: p.pixelType?.rawValue ?? "?", images: p.samplesPerPixel, pagesUsed: series.pages,
                      pagesSkipped: series.skipped, sources: md.sources, mapped: mapped.used,
                      kept: md.keys.filter { mapped.used[$0] == nil }, values: mapped.values, warnings: warnings,
                      inputSHA256: sha, outputSHA256: d.sha256, outputSize: d.size, reused: choice.reuse,
                      version: choice.version, predecessor: choice.predecessor, mappingVersion: table?.version, mappingSHA256: table?.sha256,
                      instrument: Self.instrument(md: md, values: mapped.values), startTime: acquisitionTime(mapped.values, input: input))
    }

    // MARK: - The NXem tree

    func document(file: TIFFImageFile, input: String, series: TIFFSeries, md: SourceMetadata, mapped: MappedMetadata,
                  table: MappingTable?, sha: String, warnings: inout [String]) throws(Failure) -> NXemDocument {
        var doc = NXemDocument()
        var v = mapped.values
        var provenance: [String] = []
        let page = series.page

        // Times: the metadata's, else the file's modification time (said in the provenance).
        let startTime = acquisitionTime(v, input: input)
        if v["start_time"]?.string ?? v["measurement/event1/start_time"]?.string == nil {
            provenance.append("start_time is the input file's modification time: the metadata has no acquisition time")
            warnings.append("no acquisition time in the metadata; start_time is the file's modification time")
        }
        v["start_time"] = .datetime(startTime)
        if v["measurement/event1/start_time"] == nil { v["measurement/event1/start_time"] = .datetime(startTime) }
        if let e = v["end_time"], v["measurement/event1/end_time"] == nil { v["measurement/event1/end_time"] = e }

        // Sample: NXem requires it; facts come from the mapping or the spec's context.
        if v["sample/name"] == nil, let n = options.sampleName { v["sample/name"] = .text(n) }
        if v["sample/atom_types"] == nil { v["sample/atom_types"] = .text(options.atomTypes ?? "") }
        if v["sample/preparation_date"] == nil {
            if let p = options.preparationDate, let iso = MappingTable.isoDate(p, format: "iso", timezone: options.timezone) {
                v["sample/preparation_date"] = .datetime(iso)
            } else {
                v["sample/preparation_date"] = .datetime(startTime)
                provenance.append("sample/preparation_date is not known; set to the acquisition time")
            }
        }

        // Instrument identity: the mapping's, else the baseline Make/Model tags.
        let vendorKey = "measurement/instrument/fabrication/vendor", modelKey = "measurement/instrument/fabrication/model"
        if v[vendorKey] == nil { v[vendorKey] = .text(md["tiff.Make"]?.text ?? "unknown") }
        if v[modelKey] == nil { v[modelKey] = .text(md["tiff.Model"]?.text ?? "unknown") }

        // Groups NXem only accepts complete: drop incomplete ones (their source keys stay verbatim).
        func dropGroup(_ prefix: String, unless required: [String], why: String) {
            let present = v.keys.filter { $0.hasPrefix(prefix + "/") }
            guard !present.isEmpty else { return }
            let missing = required.filter { v[prefix + "/" + $0] == nil }
            if !missing.isEmpty {
                for k in present { v[k] = nil }
                warnings.append("\(prefix) not written: \(why) needs \(missing.joined(separator: ", ")), which the mapping did not give")
            }
        }
        if v["\(Self.ev)/ebeam_column/scan_controller/dwell_time"] != nil && v["\(Self.ev)/ebeam_column/scan_controller/scan_schema"] == nil {
            v["\(Self.ev)/ebeam_column/scan_controller/scan_schema"] = .text("raster")
        }
        dropGroup("\(Self.ev)/ebeam_column/scan_controller", unless: ["dwell_time"], why: "a scan controller")
        dropGroup("\(Self.ev)/ebeam_column/electron_source", unless: ["voltage"], why: "an electron source")
        dropGroup("\(Self.ev)/stage", unless: ["position/x", "position/y", "position/z", "tilt1", "tilt2", "rotation"], why: "a stage")
        dropGroup("\(Self.ev)/detector1", unless: ["operation_mode"], why: "an event detector")
        dropGroup("measurement/instrument/detector1", unless: ["name"], why: "a detector")
        if v["measurement/instrument/program1/program"] != nil && v["measurement/instrument/program1/program@version"] == nil {
            v["measurement/instrument/program1/program@version"] = .text("unknown")
        }
        dropGroup("measurement/instrument/program1", unless: ["program"], why: "a program")

        // Mapped values → fields.
        for (path, value) in v where !path.hasPrefix("calibration/") {
            if path.hasSuffix("@version") { continue }
            if path.hasPrefix("\(Self.ev)/stage/position/") { continue }
            var field: NXemDocument.Field
            switch value {
            case .quantity(let x, let unit): field = .init(.double(x), units: unit)
            case .text(let s), .datetime(let s): field = .init(.string(s))
            }
            if path == "measurement/instrument/program1/program", let ver = v[path + "@version"]?.string {
                field.attributes["version"] = .string(ver)
            }
            doc.fields[path] = field
        }
        if let x = v["\(Self.ev)/stage/position/x"]?.number, let y = v["\(Self.ev)/stage/position/y"]?.number, let z = v["\(Self.ev)/stage/position/z"]?.number {
            doc.fields["\(Self.ev)/stage/position"] = .init(.doubles([x, y, z]), units: "m")
        }
        doc.fields["definition"] = .init(.string("NXem"))
        doc.fields["sample/is_simulation"] = .init(.bool(false))
        doc.groupClasses["measurement/instrument/ebeam_column"] = "NXebeam_column"
        doc.groupClasses["\(Self.ev)/ebeam_column"] = "NXebeam_column"

        // Images: one per sample plane (RGB previews become three images), 2-D or a 3-D stack.
        let stack = series.pages.count > 1
        let elt = page.pixelType!.size
        let px = v["calibration/pixel_size_i"]?.number, py = v["calibration/pixel_size_j"]?.number ?? px
        func axis(_ name: String, _ n: Int, _ step: Double?, _ what: String) -> NXemDocument.Axis {
            if let step, step > 0 {
                // Axes in nm read better in viewers than in m; nm is an SI unit all the same.
                let nm = step * 1e9
                return .init(name: name, values: (0..<n).map { Double($0) * nm }, units: "nm", longName: "\(what) along \(name.dropFirst(5))-axis (nm)")
            }
            return .init(name: name, values: (0..<n).map(Double.init), units: "px", longName: "Pixel index along \(name.dropFirst(5))-axis")
        }
        if px == nil { warnings.append("no pixel size in the metadata; image axes are pixel indices") }
        let channels = page.samplesPerPixel
        let channelNames = channels == 3 || channels == 4 ? ["red", "green", "blue", "alpha"] : (0..<channels).map { "sample \($0)" }
        let rowsPerChunk = max(1, min(page.height, (1 << 20) / max(1, page.width * elt)))
        let context = stack ? "IFD\(series.pages.first!)-IFD\(series.pages.last!)" : "IFD\(series.pages[0])"
        for c in 0..<channels {
            let group = "measurement/event1/image\(c + 1)"
            var axes = [axis("axis_j", page.height, py, "Coordinate"), axis("axis_i", page.width, px, "Coordinate")]
            var shape = [page.height, page.width], chunks = [rowsPerChunk, page.width]
            if stack {
                axes.insert(axis("axis_k", series.pages.count, v["calibration/slice_spacing"]?.number, "Coordinate"), at: 0)
                shape.insert(series.pages.count, at: 0); chunks = [1, rowsPerChunk, page.width]
            }
            let long = channels > 1 ? "Signal (\(channelNames[c]) channel)" : "Signal"
            doc.images.append(.init(group: group, type: ElementType(rawValue: page.pixelType!.rawValue)!, shape: shape, chunks: chunks,
                                    axes: axes, signalLongName: long, process: [
                                        "detector_identifier": .init(.string("detector1")),
                                        "input/type": .init(.string("image/tiff")),
                                        "input/file_name": .init(.string(Self.uri(input))),
                                        "input/checksum": .init(.string(sha)),
                                        "input/algorithm": .init(.string("sha256")),
                                        "input/context": .init(.string(channels > 1 ? "\(context) sample \(c) (\(channelNames[c]))" : context)),
                                    ]))
            doc.groupAttributes[group] = ["default": .string("image_\(shape.count)d")]
        }

        // Everything the file says, verbatim and typed (mapped keys included: nothing is lost).
        doc.groupClasses["measurement/event1/source_metadata"] = "NXcollection"
        var used = Set<String>()
        for k in md.keys {
            var name = k.replacingOccurrences(of: "/", with: "_")
            if name.isEmpty { name = "_" }
            while used.contains(name) { name += "_" }
            used.insert(name)
            let value: H5Value
            switch md[k]! {
            case .int(let i): value = .int(i)
            case .double(let d): value = .double(d)
            case .bool(let b): value = .bool(b)
            case .string(let s): value = .string(s)
            case .numbers(let a): value = .doubles(a)
            }
            doc.fields["measurement/event1/source_metadata/\(name)"] = .init(value)
        }
        for (i, b) in md.blocks.enumerated() {
            let g = "measurement/event1/source_block\(i + 1)"
            doc.groupClasses[g] = "NXnote"
            doc.fields[g + "/type"] = .init(.string(b.mediaType))
            doc.fields[g + "/description"] = .init(.string("\(b.source) metadata block of \((input as NSString).lastPathComponent), verbatim"))
            doc.fields[g + "/data"] = .init(.fixedString(b.text))
        }

        // Provenance.
        doc.fields["note_input/file_name"] = .init(.string(Self.uri(input)))
        doc.fields["note_input/checksum"] = .init(.string(sha))
        doc.fields["note_input/algorithm"] = .init(.string("sha256"))
        doc.fields["note_input/type"] = .init(.string("image/tiff"))
        doc.fields["note_input/description"] = .init(.string((["pages used: \(series.pages.map(String.init).joined(separator: ", "))"] + provenance).joined(separator: "; ")))
        if let table {
            doc.fields["note_mapping/file_name"] = .init(.string(table.file))
            doc.fields["note_mapping/checksum"] = .init(.string(table.sha256))
            doc.fields["note_mapping/algorithm"] = .init(.string("sha256"))
            doc.fields["note_mapping/type"] = .init(.string("application/json"))
            doc.fields["note_mapping/description"] = .init(.string("emflow mapping '\(table.name)': \(table.description)"))
        }
        doc.groupAttributes[""] = ["default": .string("measurement")]
        doc.groupAttributes["measurement"] = ["default": .string("event1")]
        doc.groupAttributes["measurement/event1"] = ["default": .string("image1")]
        doc.addProvenance(fileTime: Self.iso(Date(), timezone: options.timezone), specPath: options.specPath,
                          specSHA256: options.specSHA256, taskKey: options.taskKey)
        return doc
    }

    /// The acquisition time: the metadata's, else the file's modification time.
    func acquisitionTime(_ v: [String: MappedValue], input: String) -> String {
        if let s = v["start_time"]?.string ?? v["measurement/event1/start_time"]?.string { return s }
        let st = try? FileStatus.of(path: input)
        return Self.iso(Date(timeIntervalSince1970: Double(st?.mtimeNanoseconds ?? 0) / 1e9), timezone: options.timezone)
    }

    /// "vendor model" of measurement/instrument/fabrication: the mapping's, else the TIFF Make/Model tags.
    static func instrument(md: SourceMetadata, values v: [String: MappedValue]) -> String {
        let vendor = v["measurement/instrument/fabrication/vendor"]?.string ?? md["tiff.Make"]?.text ?? "unknown"
        let model = v["measurement/instrument/fabrication/model"]?.string ?? md["tiff.Model"]?.text ?? "unknown"
        return "\(vendor) \(model)"
    }

    static func iso(_ date: Date, timezone: String) -> String {
        let f = DateFormatter()
        f.locale = Locale(identifier: "en_US_POSIX"); f.timeZone = TimeZone(identifier: timezone) ?? TimeZone(identifier: "UTC")
        f.dateFormat = "yyyy-MM-dd'T'HH:mm:ssxxxxx"
        return f.string(from: date)
    }

    static func uri(_ path: String) -> String {
        "file://" + (path.addingPercentEncoding(withAllowedCharacters: .urlPathAllowed) ?? path)
    }
}

extension NXemDocument {
    /// What every emflow NeXus file says about how it was made: the programs (emflow, HDF5) with
    /// their versions, the workflow spec and its checksum, the root attributes and the task key.
    mutating func addProvenance(fileTime: String, specPath: String?, specSHA256: String?, taskKey: String?) {
        fields["profiling/program1/program"] = .init(.string("emflow"), attributes: ["version": .string(EmflowVersion.current)])
        fields["profiling/program2/program"] = .init(.string("HDF5"), attributes: ["version": .string(HDF5Library.version)])
        if let specPath, let specSHA256 {
            fields["note_workflow/file_name"] = .init(.string(specPath))
            fields["note_workflow/checksum"] = .init(.string(specSHA256))
            fields["note_workflow/algorithm"] = .init(.string("sha256"))
            fields["note_workflow/type"] = .init(.string("application/yaml"))
        }
        rootAttributes["default"] = .string("entry1")
        rootAttributes["creator"] = .string("emflow")
        rootAttributes["creator_version"] = .string(EmflowVersion.current)
        rootAttributes["file_time"] = .string(fileTime)
        rootAttributes["HDF5_Version"] = .string(HDF5Library.version)
        if let taskKey { rootAttributes[NXemWriter.taskKeyAttribute] = .string(taskKey) }
    }
}

/// Phase timings of one conversion on stderr when EMFLOW_PROFILE is set (for benchmarks).
struct PhaseClock {
    let enabled: Bool
    var last = Date()
    var phases: [(String, Double)] = []
    init(enabled: Bool) { self.enabled = enabled }
    mutating func mark(_ name: String) {
        guard enabled else { return }
        let now = Date(); phases.append((name, now.timeIntervalSince(last))); last = now
    }
    func report(_ input: String) {
        guard enabled else { return }
        let text = phases.map { "\($0.0) \(String(format: "%.1f", $0.1 * 1000)) ms" }.joined(separator: ", ")
        FileHandle.standardError.write(Data("profile \(input): \(text)\n".utf8))
    }
}

/// Work started on its own thread now, whose result is taken later (e.g. a checksum beside decoding).
final class BackgroundTask<T: Sendable>: Sendable {
    let result = Mutex<T?>(nil)
    let done = DispatchSemaphore(value: 0)
    init(_ work: @escaping @Sendable () -> T) {
        Thread.detachNewThread { [self] in
            let r = work()
            result.withLock { $0 = r }
            done.signal()
        }
    }
    func wait() -> T {
        done.wait()
        done.signal()   // later waits return at once
        return result.withLock { $0! }
    }
}

/// A read-only memory map of a whole file (pages populated up front from the page cache).
final class MappedFile {
    let bytes: UnsafeRawBufferPointer
    init?(path: String, size: Int) {
        guard size > 0 else { return nil }
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        guard let p = mmap(nil, size, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd, 0), p != MAP_FAILED else { return nil }
        bytes = UnsafeRawBufferPointer(start: p, count: size)
    }
    deinit { munmap(UnsafeMutableRawPointer(mutating: bytes.baseAddress), bytes.count) }
}

#if canImport(Glibc)
import Glibc
#endif
