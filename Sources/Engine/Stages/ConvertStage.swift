import Foundation
import Synchronization
import POSIXFiles
import Checksums
import WorkflowSpec
import EMFormats
import ParallelNexus

/// `convert` with `to: nxem`: each TIFF becomes a NeXus/NXem file next to its dataset
/// (`<root>/<proposal>/<sample>/<experiment>/<outputs.naming>`, default `nexus/{stem}.nxs`).
/// The mapping files' content is part of the task key: editing a mapping makes a re-run write a new version.
/// With `to: nxem-4d`: each 4D-STEM detector file (MIB, raw/EMPAD, TIFF stack, HDF5) becomes one NXem
/// file with the stack and a summary image, on `resources.ranks` MPI ranks (see `MPIStages`).
public struct ConvertStage: Stage {
    public static let kind = "convert"
    public static let version = 1
    public static let defaultNaming = "nexus/{stem}.nxs"
    public static let schema = ParameterSchema(summary: "microscope TIFF → NeXus/NXem with vendor metadata mapped to SI units", fields: [
        .init("to", .string, required: true, allowed: ["nxem", "nxem-4d"], help: "nxem: microscope TIFFs; nxem-4d: 4D-STEM detector files (resources.ranks: MPI ranks)"),
        .init("mapping", .string, default: .string("auto"),
              help: "auto: choose from the file's tags; or a mapping name, or a path to a mapping .json (relative to the spec)"),
        .init("mappings", .string, help: "folder of mapping files (relative to the spec); default: $EMFLOW_MAPPINGS, else emflow's Mappings/"),
        .init("unmapped", .string, default: .string("fail"), allowed: ["fail", "keep"],
              help: "a file no mapping matches: fail it, or convert it with its metadata kept verbatim only"),
        .init("compression", .string, default: .string("none"), allowed: ["none", "deflate", "bitshuffle"],
              help: "chunk compression of the image data (bitshuffle needs the HDF5 plugin, Debian package 'bitshuffle')"),
        .init("deflate_level", .int, default: .int(4), help: "1-9, for compression: deflate"),
        .init("timezone", .string, default: .string("local"),
              help: "IANA zone for metadata times written without an offset (local: this machine's)"),
        .init("atom_types", .string, help: "elements in the sample, e.g. \"Fe, C\" (else context.samples.<id>.atom_types)"),
        // nxem-4d
        .init("format", .string, default: .string("auto"), allowed: ["auto", "mib", "raw", "empad", "tiff-stack", "hdf5"],
              help: "nxem-4d: the detector file format (auto: by extension: .mib, .raw = EMPAD, .tif, .h5; others raw)"),
        .init("scan_shape", .string, help: "nxem-4d: probe positions \"Y×X\" (else from the file, a .hdr sidecar, an EMPAD name or a square count)"),
        .init("frame_shape", .string, help: "nxem-4d raw: detector pixels \"H×W\""),
        .init("dtype", .string, allowed: PixelType.allCases.map(\.rawValue), help: "nxem-4d raw: pixel type"),
        .init("byte_order", .string, default: .string("little"), allowed: ["little", "big"], help: "nxem-4d raw: pixel byte order"),
        .init("file_header", .int, default: .int(0), help: "nxem-4d raw: bytes before the first frame"),
        .init("frame_header", .int, default: .int(0), help: "nxem-4d raw: bytes before each frame"),
        .init("frame_footer", .int, default: .int(0), help: "nxem-4d raw: bytes after each frame"),
        .init("dataset", .string, help: "nxem-4d hdf5: the frames' dataset path, e.g. /entry/data/data"),
        .init("chunk_frames", .int, default: .int(1), help: "nxem-4d: detector frames per HDF5 chunk"),
        .init("buffer_mib", .int, default: .int(64), help: "nxem-4d: MiB of frames each rank holds per write step"),
        .init("direct_io", .bool, default: .bool(true),
              help: "nxem-4d: uncompressed frames written on one node go past the page cache where the file system takes direct I/O (local disks)"),
        .init("alignment_mib", .number, help: "nxem-4d: align large objects to this (default: the site's stripe size, else 1 MiB)"),
        .init("scan_step_nm", .number, help: "nxem-4d: distance between probe positions, nm"),
        .init("detector_step", .number, help: "nxem-4d: detector pixel size in detector_units"),
        .init("detector_units", .string, default: .string("px"), allowed: ["px", "1/nm", "1/angstrom", "mrad"], help: "nxem-4d: unit of detector_step"),
        .init("voltage_kv", .number, help: "nxem-4d: accelerating voltage, kV"),
        .init("camera_length_m", .number, help: "nxem-4d: camera length, m"),
        .init("convergence_mrad", .number, help: "nxem-4d: probe semi-convergence angle, mrad"),
        .init("vendor", .string, help: "nxem-4d: microscope vendor (else context.instrument.vendor)"),
        .init("model", .string, help: "nxem-4d: microscope model (else context.instrument.model)"),
    ])
    public init() {}

    // MARK: Setup

    /// Mapping sets by folder, loaded once per process and reloaded when a file in it changes.
    static let cache = Mutex<[String: (stamp: String, set: MappingSet)]>([:])

    static func mappingsDirectory(_ parameters: [String: ParamValue], ctx: TaskContext) -> String {
        if let d = parameters["mappings"]?.stringValue { return Path.resolve(d, against: Path.directory(of: ctx.specPath)) }
        return defaultMappingsDirectory()
    }

    /// $EMFLOW_MAPPINGS, else the `Mappings` folder of the checkout or installation the binary belongs to.
    public static func defaultMappingsDirectory() -> String {
        if let e = environment("EMFLOW_MAPPINGS"), !e.isEmpty { return e }
        var dir = Path.directory(of: executablePath())
        for _ in 0..<5 {
            for candidate in [Path.join(dir, "Mappings"), Path.join(dir, "share/emflow/Mappings")] {
                if (try? FileStatus.ifExists(path: candidate))??.isDirectory == true { return candidate }
            }
            dir = Path.directory(of: dir)
        }
        return "Mappings"
    }

    static func executablePath() -> String {
        (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
    }

    public static func mappingSet(directory: String) throws(StageError) -> MappingSet {
        // The stamp: names, sizes and mtimes; cheap to compute on every task.
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).filter { $0.hasSuffix(".json") }.sorted()
        let stamp = names.map { n -> String in
            let st = try? FileStatus.of(path: Path.join(directory, n))
            return "\(n):\(st?.size ?? -1):\(st?.mtimeNanoseconds ?? -1)"
        }.joined(separator: "|")
        if let hit = cache.withLock({ $0[directory] }), hit.stamp == stamp { return hit.set }
        let set: MappingSet
        do { set = try MappingSet.load(directory: directory, hash: SHA256Hasher.hash) } catch { throw StageError(error.description) }
        cache.withLock { $0[directory] = (stamp, set) }
        return set
    }

    public func keyMaterial(parameters: [String: ParamValue], ctx: TaskContext) throws(StageError) -> ParamValue? {
        if parameters["to"]?.stringValue == "nxem-4d" {
            _ = try Self.fourDOptions(parameters, ctx: ctx)
            if parameters["compression"]?.stringValue == "bitshuffle" && !HDF5Library.filterAvailable(Compression.bitshuffleFilterID) {
                throw StageError("compression: bitshuffle needs the bitshuffle HDF5 filter (id 32008): install Debian's 'bitshuffle' package or set HDF5_PLUGIN_PATH, or use compression: deflate")
            }
            return nil
        }
        let dir = Self.mappingsDirectory(parameters, ctx: ctx)
        let set = try Self.mappingSet(directory: dir)
        var m: [String: ParamValue] = ["mappings": .string(set.combinedSHA256)]
        if let name = parameters["mapping"]?.stringValue, name != "auto" {
            if name.hasSuffix(".json") {
                let path = Path.resolve(name, against: Path.directory(of: ctx.specPath))
                guard let bytes = try? readFile(path) else { throw StageError("mapping file \(path) cannot be read") }
                do { _ = try MappingTable.parse(text: String(decoding: bytes, as: UTF8.self), file: path, sha256: "") } catch { throw StageError(error.description) }
                m["mapping"] = .string(SHA256Hasher.hash(bytes))
            } else if set.named(name) == nil {
                throw StageError("no mapping named '\(name)' in \(dir) (there are: \(set.tables.map(\.name).joined(separator: ", ")))")
            }
        }
        if parameters["compression"]?.stringValue == "bitshuffle" && !HDF5Library.filterAvailable(Compression.bitshuffleFilterID) {
            throw StageError("compression: bitshuffle needs the bitshuffle HDF5 filter (id 32008): install Debian's 'bitshuffle' package or set HDF5_PLUGIN_PATH, or use compression: deflate")
        }
        return .map(m)
    }

    /// Sidecar files (`.hdr`, `.txt`, `.xml`) are part of the input: editing one re-converts.
    public func inputIdentity(_ artifact: Artifact, item: Item) -> ParamValue {
        if Path.lastComponent(of: artifact.path).lowercased().hasSuffix(".mib") {
            // A Merlin .mib's .hdr sidecar describes the acquisition: editing it re-converts.
            var id = TaskKey.identity(of: artifact)
            let beside = (artifact.path as NSString).deletingPathExtension + ".hdr"
            let hdr = FileManager.default.fileExists(atPath: beside) ? beside : (item.source.path as NSString).deletingPathExtension + ".hdr"
            if case .map(var m) = id, let st = try? FileStatus.of(path: hdr) {
                m["hdr"] = TaskKey.identity(of: Artifact(path: hdr, size: st.size, mtimeNanoseconds: st.mtimeNanoseconds)); id = .map(m)
            }
            return id
        }
        var id = TaskKey.identity(of: artifact)
        let side = Self.sidecars(for: artifact, item: item)
        if !side.isEmpty, case .map(var m) = id {
            m["sidecars"] = .list(side.compactMap { p in
                (try? FileStatus.of(path: p)).map { TaskKey.identity(of: Artifact(path: p, size: $0.size, mtimeNanoseconds: $0.mtimeNanoseconds)) }
            })
            id = .map(m)
        }
        return id
    }

    /// Sidecars next to the input, else next to the item's original (ingest moves only the image).
    static func sidecars(for artifact: Artifact, item: Item?) -> [String] {
        let here = MetadataReader.sidecarCandidates(for: artifact.path).filter { FileManager.default.fileExists(atPath: $0) }
        if !here.isEmpty || item == nil { return here }
        return MetadataReader.sidecarCandidates(for: item!.source.path).filter { FileManager.default.fileExists(atPath: $0) }
    }

    // MARK: Run

    static func compression(_ p: [String: ParamValue]) -> Compression {
        switch p["compression"]?.stringValue {
        case "deflate": .deflate(level: p["deflate_level"]?.intValue ?? 4)
        case "bitshuffle": .bitshuffleLZ4
        default: .none
        }
    }

    /// The 4D conversion's options from `with:` (checked once per run by keyMaterial).
    static func fourDOptions(_ p: [String: ParamValue], ctx: TaskContext) throws(StageError) -> FourDSTEMToNXem.Options {
        var o = FourDSTEMToNXem.Options()
        o.format = p["format"]?.stringValue ?? "auto"
        if let s = p["scan_shape"]?.stringValue {
            guard let (y, x) = ShapeText.parse(s) else { throw StageError("scan_shape '\(s)' is not \"Y×X\", e.g. \"256×256\"") }
            o.scan = .init(y: y, x: x)
        }
        if p["dtype"] != nil || p["frame_shape"] != nil {
            guard let type = p["dtype"]?.stringValue.flatMap(PixelType.init(rawValue:)), let fs = p["frame_shape"]?.stringValue, let (h, w) = ShapeText.parse(fs) else {
                throw StageError("raw detector data needs both dtype (e.g. uint16) and frame_shape (\"H×W\") under with:")
            }
            var l = RawFrameSource.Layout(pixelType: type, frameHeight: h, frameWidth: w)
            l.bigEndian = p["byte_order"]?.stringValue == "big"
            l.fileHeader = p["file_header"]?.intValue ?? 0
            l.frameHeader = p["frame_header"]?.intValue ?? 0
            l.frameFooter = p["frame_footer"]?.intValue ?? 0
            guard l.fileHeader >= 0, l.frameHeader >= 0, l.frameFooter >= 0 else { throw StageError("file_header, frame_header and frame_footer are byte counts (0 or more)") }
            o.raw = l
        } else if o.format == "raw" {
            throw StageError("format: raw needs dtype and frame_shape (and byte_order, frame_header, frame_footer when not the defaults) under with:")
        }
        if o.format == "hdf5" && p["dataset"] == nil { throw StageError("format: hdf5 needs dataset: (the frames' path inside the file, e.g. /entry/data/data)") }
        o.dataset = p["dataset"]?.stringValue
        o.writer.compression = compression(p)
        o.writer.chunkFrames = max(1, p["chunk_frames"]?.intValue ?? 1)
        o.writer.bufferBytes = max(1, p["buffer_mib"]?.intValue ?? 64) << 20
        o.writer.directIO = p["direct_io"]?.boolValue ?? true
        if let a = p["alignment_mib"]?.doubleValue { o.writer.alignment = a > 0 ? Int(a * 1048576) : nil }
        else if let stripe = ctx.stripeBytes { o.writer.alignment = stripe }
        o.scanStepNM = p["scan_step_nm"]?.doubleValue
        o.detectorStep = p["detector_step"]?.doubleValue
        o.detectorUnits = p["detector_units"]?.stringValue ?? "px"
        o.voltageKV = p["voltage_kv"]?.doubleValue
        o.cameraLengthM = p["camera_length_m"]?.doubleValue
        o.convergenceMrad = p["convergence_mrad"]?.doubleValue
        o.vendor = p["vendor"]?.stringValue ?? ctx.context["instrument"]?["vendor"]?.text ?? "unknown"
        o.model = p["model"]?.stringValue ?? ctx.context["instrument"]?["model"]?.text ?? "unknown"
        if let tz = p["timezone"]?.stringValue, tz != "local" {
            guard TimeZone(identifier: tz) != nil else { throw StageError("timezone '\(tz)' is not an IANA zone name such as Europe/Rome") }
            o.timezone = tz
        }
        return o
    }

    func runFourD(_ task: TaskInput, input: Artifact, _ ctx: TaskContext) throws(StageError) -> TaskResult.Partial {
        let p = task.parameters
        var o = try Self.fourDOptions(p, ctx: ctx)
        let fields = task.item?.fields ?? [:]
        let sampleContext = fields["sample"].flatMap { ctx.context["samples"]?[$0] }
        o.sampleName = fields["sample"]
        o.atomTypes = p["atom_types"]?.stringValue ?? sampleContext?["atom_types"]?.text
        o.preparationDate = sampleContext?["preparation_date"]?.text
        o.specPath = ctx.specPath; o.specSHA256 = ctx.specSHA256; o.taskKey = task.key
        o.reportBytes = ctx.reportBytes
        let hdr = { (p: String) in (p as NSString).deletingPathExtension + ".hdr" }
        if !FileManager.default.fileExists(atPath: hdr(input.path)), let original = task.item?.source.path, FileManager.default.fileExists(atPath: hdr(original)) {
            o.mibHeader = hdr(original)
        }
        let comm = Communicator.current
        let output = outputPath(for: input, fields: fields, itemID: task.itemID, ctx: ctx)
        var dirError: String? = nil
        if comm.isRoot {
            do { try makeDirectories(Path.directory(of: output)) } catch { dirError = error.description }
            AtomicFile.removeStaleTemporaries(in: Path.directory(of: output))
        }
        if let e = comm.firstError(dirError) { throw StageError(e) }
        let r: FourDSTEMToNXem.Report
        do { r = try FourDSTEMToNXem(options: o).convert(input: input.path, inputSHA256: input.sha256 ?? task.recordedSHA256, output: output, communicator: comm) }
        catch { throw StageError(error.message, retryable: error.retryable) }
        let st: FileStatus
        do { st = try FileStatus.of(path: r.output) } catch { throw StageError(error) }
        var out = TaskResult.Partial(artifact: Artifact(path: r.output, size: st.size, mtimeNanoseconds: st.mtimeNanoseconds, sha256: r.outputSHA256))
        out.outputs = [OutputInfo(path: r.output, size: r.outputSize, sha256: r.outputSHA256, lineage: OutputLineage(
            dataset: output, version: r.version, predecessor: r.predecessor, instrument: "\(o.vendor) \(o.model)",
            acquiredAt: r.startTime, fields: Self.levelFields(fields)))]
        out.bytes = r.bytesIn
        let rate = r.seconds > 0 ? " at \(formatBytes(Int64(Double(r.bytesIn) / r.seconds)))/s" : ""
        out.notes = ["\(r.format) \(r.shape.map(String.init).joined(separator: "×")) \(r.dataType) on \(r.ranks) rank(s), \(r.compression)" +
                     (r.reused ? " (already written by this task)" : ", ratio \(String(format: "%.2f", r.compressionRatio))\(rate), peak RSS \(formatBytes(r.peakRSSMax)) per rank") +
                     (r.hashedWhileWriting == true ? ", output hashed while written" : "") +
                     (r.directIO == true ? ", frames written with direct I/O" : "") +
                     (r.storedByRoot == true ? ", chunks compressed on every rank and stored by rank 0" : "")] + r.warnings
        return out
    }

    public func run(_ task: TaskInput, _ ctx: TaskContext) throws(StageError) -> TaskResult.Partial {
        guard let input = task.input else { throw StageError("convert needs an input file") }
        let p = task.parameters
        if p["to"]?.stringValue == "nxem-4d" { return try runFourD(task, input: input, ctx) }
        var options = TIFFToNXem.Options(mappings: try Self.mappingSet(directory: Self.mappingsDirectory(p, ctx: ctx)))
        if let m = p["mapping"]?.stringValue, m != "auto" {
            options.mapping = m.hasSuffix(".json") ? Path.resolve(m, against: Path.directory(of: ctx.specPath)) : m
        }
        options.unmapped = p["unmapped"]?.stringValue == "keep" ? .keep : .fail
        options.compression = Self.compression(p)
        if let tz = p["timezone"]?.stringValue, tz != "local" {
            guard TimeZone(identifier: tz) != nil else { throw StageError("timezone '\(tz)' is not an IANA zone name such as Europe/Rome") }
            options.timezone = tz
        }
        let fields = task.item?.fields ?? [:]
        let sampleContext = fields["sample"].flatMap { ctx.context["samples"]?[$0] }
        options.sampleName = fields["sample"]
        options.atomTypes = p["atom_types"]?.stringValue ?? sampleContext?["atom_types"]?.text
        options.preparationDate = sampleContext?["preparation_date"]?.text
        options.specPath = ctx.specPath
        options.specSHA256 = ctx.specSHA256
        options.taskKey = task.key
        options.reportBytes = ctx.reportBytes

        let output = outputPath(for: input, fields: fields, itemID: task.itemID, ctx: ctx)
        do { try makeDirectories(Path.directory(of: output)) } catch { throw StageError(error) }
        AtomicFile.removeStaleTemporaries(in: Path.directory(of: output))
        let report: TIFFToNXem.Report
        do {
            // Sidecars next to the original count too, when ingest moved only the image.
            report = try TIFFToNXem(options: options).convert(input: input.path, inputSHA256: input.sha256 ?? task.recordedSHA256, output: output,
                                                              extraSidecars: Self.sidecars(for: input, item: task.item))
        } catch {
            throw StageError(error.message, retryable: error.retryable)
        }
        let st: FileStatus
        do { st = try FileStatus.of(path: report.output) } catch { throw StageError(error) }
        var out = TaskResult.Partial(artifact: Artifact(path: report.output, size: st.size, mtimeNanoseconds: st.mtimeNanoseconds, sha256: report.outputSHA256))
        out.outputs = [OutputInfo(path: report.output, size: report.outputSize, sha256: report.outputSHA256, lineage: OutputLineage(
            dataset: output, version: report.version, predecessor: report.predecessor, mapping: report.mapping,
            mappingVersion: report.mappingVersion, mappingSHA256: report.mappingSHA256, instrument: report.instrument,
            acquiredAt: report.startTime, fields: Self.levelFields(fields)))]
        out.bytes = input.size
        out.notes = ["mapping \(report.mapping ?? "none"): \(report.mapped.count) key(s) placed, \(report.kept.count) kept verbatim; \(report.shape.map(String.init).joined(separator: "×")) \(report.dataType)"] + report.warnings
        return out
    }

    static func levelFields(_ fields: [String: String]) -> [String: String] {
        fields.filter { ReadmeStage.levelFields.contains($0.key) }
    }

    func outputPath(for input: Artifact, fields: [String: String], itemID: String, ctx: TaskContext) -> String {
        let name = Path.lastComponent(of: input.path)
        let stem = name.contains(".") ? String(name[..<name.lastIndex(of: ".")!]) : name
        var f = fields
        f["stem"] = stem; f["file"] = name; f["ext"] = "nxs"; f["version"] = "1"
        let naming = (ctx.naming ?? (try? PathTemplate(Self.defaultNaming)))!
        let rel = naming.render(f) ?? "nexus/\(stem).nxs"
        if let p = fields["proposal"], let s = fields["sample"], let e = fields["experiment"] {
            return Path.join(ctx.outputRoot, "\(p)/\(s)/\(e)/\(rel)")
        }
        // No layout: mirror the item's relative directory.
        let dir = Path.directory(of: itemID.split(separator: ":", maxSplits: 1).last.map(String.init) ?? itemID)
        return Path.join(ctx.outputRoot, dir == "." || dir.isEmpty ? rel : "\(dir)/\(rel)")
    }
}
