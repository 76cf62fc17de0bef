import Foundation
import POSIXFiles
import Checksums
import EMFormats
import ParallelNexus

/// One 4D-STEM detector file (Merlin MIB, raw/EMPAD, TIFF stack, detector HDF5) → one NXem file with
/// the stack in `measurement/event1/image1/image_4d` (scan y, scan x, detector y, detector x) and the
/// sum of every frame as `image2/image_2d`, written by all ranks of the communicator at once.
/// Every rank calls `convert` with the same options.
public struct FourDSTEMToNXem: Sendable {
    public struct Options: Sendable {
        /// auto (by extension), mib, raw, empad, tiff-stack, hdf5.
        public var format = "auto"
        public var scan: ScanShape?
        public var raw: RawFrameSource.Layout?
        public var dataset: String?
        /// A Merlin `.hdr` found elsewhere (next to the original when ingest moved only the .mib).
        public var mibHeader: String?
        public var writer = ParallelStackWriter.Options()
        /// Calibration: scan step in nm, detector pixel step with its unit (1/nm, mrad, px).
        public var scanStepNM: Double?
        public var detectorStep: Double?
        public var detectorUnits = "px"
        public var voltageKV: Double?
        public var cameraLengthM: Double?
        public var convergenceMrad: Double?
        public var vendor = "unknown"
        public var model = "unknown"
        public var sampleName: String?
        public var atomTypes: String?
        public var preparationDate: String?
        public var timezone = TimeZone.current.identifier
        public var specPath: String?
        public var specSHA256: String?
        public var taskKey: String?
        public var reportBytes: @Sendable (Int) -> Void = { _ in }
        public init() {}
    }

    public struct ScanShape: Sendable, Equatable { public var y: Int; public var x: Int; public init(y: Int, x: Int) { self.y = y; self.x = x } }

    public struct Report: Sendable, Codable {
        public var input: String
        public var output: String
        public var format: String
        public var shape: [Int]
        public var dataType: String
        public var compression: String
        public var ranks: Int
        public var inputSHA256: String
        public var outputSHA256: String
        public var outputSize: Int64
        public var bytesIn: Int64
        public var seconds: Double
        public var peakRSSMax: Int64
        public var peakRSSRoot: Int64
        public var reused: Bool
        public var warnings: [String]
        public var version: Int
        public var predecessor: String?
        /// start_time as written: the input file's modification time.
        public var startTime: String
        /// The output was hashed while it was written (one process, uncompressed, input checksum known).
        public var hashedWhileWriting: Bool? = nil
        /// The frames were written past the page cache (direct I/O).
        public var directIO: Bool? = nil
        /// The ranks (one node) compressed the chunks, and rank 0 stored them.
        public var storedByRoot: Bool? = nil
        public var compressionRatio: Double { outputSize > 0 ? Double(bytesIn) / Double(outputSize) : 0 }
    }

    public let options: Options
    public init(options: Options) { self.options = options }

    /// Opens the input as `options.format` says (or by its extension).
    public func openSource(_ input: String) throws(EMFormatsError) -> FrameSource {
        let scan = options.scan.map { ($0.y, $0.x) }
        var format = options.format
        if format == "auto" {
            switch (input as NSString).pathExtension.lowercased() {
            case "mib": format = "mib"
            case "tif", "tiff": format = "tiff-stack"
            case "h5", "hdf5", "hdf", "nxs": format = "hdf5"
            case "raw" where options.raw == nil: format = "empad"
            default: format = "raw"
            }
        }
        switch format {
        case "mib": return try MIBFrameSource(path: input, scan: scan, sidecar: options.mibHeader)
        case "tiff-stack": return try TIFFStackFrameSource(path: input, scan: scan)
        case "hdf5":
            guard let d = options.dataset else { throw EMFormatsError(path: input, message: "an HDF5 detector file needs dataset: (the path of the frames inside it)") }
            return try HDF5FrameSource(path: input, dataset: d, scan: scan)
        case "empad": return try RawFrameSource(path: input, layout: options.raw ?? .empad, scan: scan, format: "empad")
        default:
            guard let l = options.raw else {
                throw EMFormatsError(path: input, message: "raw detector data needs its layout: dtype, frame_shape (and byte_order, frame_header, frame_footer, file_header when not 0) under with:")
            }
            return try RawFrameSource(path: input, layout: l, scan: scan)
        }
    }

    /// Converts `input` to `output` (or the next free version `name.vN.nxs` when `output` holds a file
    /// of another task; one of this task is reused).
    public func convert(input: String, inputSHA256 known: String?, output: String, communicator comm: Communicator) throws(TIFFToNXem.Failure) -> Report {
        func agree(_ e: String?) throws(TIFFToNXem.Failure) { if let m = comm.firstError(e) { throw TIFFToNXem.Failure(m) } }
        // Every rank opens the source itself (a bad file is found before anything is written).
        var source: FrameSource?
        var openError: String?
        do { source = try openSource(input) } catch { openError = error.description }
        if options.writer.compression == .bitshuffleLZ4 && !HDF5Library.filterAvailable(Compression.bitshuffleFilterID) && openError == nil {
            openError = "compression: bitshuffle needs the bitshuffle+LZ4 HDF5 filter (id 32008), which is not installed: install Debian's 'bitshuffle' package or set HDF5_PLUGIN_PATH, or use compression: deflate"
        }
        try agree(openError)
        let src = source!
        let g = src.geometry
        var warnings: [String] = []

        // Rank 0 chooses where to write (a new version unless this task already wrote one) and hashes
        // the version it supersedes; every rank writes the same provenance.
        var decision = ""
        if comm.isRoot {
            let choice = OutputVersion.choose(output: output, taskKey: options.taskKey)
            var note: [String: String] = [:]
            var problem: String? = nil
            if !choice.reuse {
                do { for (k, f) in try choice.predecessorNote() { if case .string(let v) = f.value { note[k] = v } } } catch { problem = error.description }
            }
            let d = Decision(choice: choice, note: note, error: problem)
            decision = String(decoding: (try? JSONEncoder().encode(d)) ?? Data(), as: UTF8.self)
        }
        decision = comm.broadcast(decision)
        guard let decided = try? JSONDecoder().decode(Decision.self, from: Data(decision.utf8)) else {
            throw TIFFToNXem.Failure("\(output): the ranks could not agree where to write")
        }
        try agree(decided.error)
        let choice = decided.choice, target = choice.target
        if target != output { warnings.append("\(output) exists from an earlier conversion (other parameters); wrote version \(choice.version)") }
        let mtime = (try? FileStatus.of(path: input)).map { Date(timeIntervalSince1970: Double($0.mtimeNanoseconds) / 1e9) } ?? Date()
        let startTime = TIFFToNXem.iso(mtime, timezone: options.timezone)
        if choice.reuse {
            var sha = "", size: Int64 = 0, err: String? = nil
            if comm.isRoot {
                do { let d = try FileHasher.sha256(path: target); sha = d.sha256; size = d.size } catch { err = error.description }
            }
            try agree(err)
            return Report(input: input, output: target, format: src.format, shape: g.shape, dataType: g.pixelType.rawValue,
                          compression: options.writer.compression.name, ranks: comm.size, inputSHA256: comm.broadcast(known ?? ""),
                          outputSHA256: comm.broadcast(sha), outputSize: Int64(comm.max(Int(size))), bytesIn: g.totalBytes,
                          seconds: 0, peakRSSMax: 0, peakRSSRoot: 0, reused: true, warnings: warnings,
                          version: choice.version, predecessor: choice.predecessor, startTime: startTime)
        }

        // The input's checksum, when the upstream stage has none, is computed on rank 0 beside the writing.
        let inputHash: BackgroundTask<Result<FileDigest, POSIXFileError>>? = known == nil && comm.isRoot ? BackgroundTask {
            do throws(POSIXFileError) { return .success(try FileHasher.sha256(path: input)) } catch { return .failure(error) }
        } : nil
        let now = comm.broadcast(TIFFToNXem.iso(Date(), timezone: options.timezone))
        var doc = document(source: src, input: input, target: target, knownSHA: known, now: now, fileTime: startTime, warnings: &warnings)
        for (k, v) in decided.note { doc.fields[k] = .init(.string(v)) }
        var inputSHA = known ?? ""
        let outcome: ParallelStackWriter.Outcome
        do {
            // Fields written after the data only when the input's checksum is still being computed.
            let late: (() throws -> [String: String])? = known != nil ? nil : {
                guard let h = inputHash else { return [:] }
                switch h.wait() {
                case .success(let d): inputSHA = d.sha256
                case .failure(let e): throw e
                }
                return Dictionary(uniqueKeysWithValues: Self.checksumFields.map { ($0, inputSHA) })
            }
            outcome = try ParallelStackWriter.write(doc, source: src, to: target, communicator: comm, options: options.writer, late: late,
                                                    checksum: { try FileHasher.sha256(path: $0).sha256 }, progress: options.reportBytes)
        } catch let e as ParallelNexusError {
            throw TIFFToNXem.Failure(e.message)
        } catch let e as POSIXFileError {
            throw TIFFToNXem.Failure(e.description, retryable: e.isTransient)
        } catch {
            throw TIFFToNXem.Failure("\(target): \(error)")
        }
        inputSHA = comm.broadcast(inputSHA)
        return Report(input: input, output: target, format: src.format, shape: g.shape, dataType: g.pixelType.rawValue,
                      compression: options.writer.compression.name, ranks: comm.size, inputSHA256: inputSHA,
                      outputSHA256: outcome.outputSHA256, outputSize: outcome.outputSize, bytesIn: outcome.bytesIn, seconds: outcome.seconds,
                      peakRSSMax: outcome.peakRSSMax, peakRSSRoot: outcome.peakRSSRoot, reused: false, warnings: warnings,
                      version: choice.version, predecessor: choice.predecessor, startTime: startTime, hashedWhileWriting: outcome.hashedWhileWriting,
                      directIO: outcome.directIO, storedByRoot: outcome.storedByRoot)
    }

    /// Rank 0's choice of version, with the predecessor note, as broadcast to the other ranks.
    struct Decision: Codable { var choice: OutputVersion; var note: [String: String]; var error: String? }

    /// Fields that hold the input's SHA-256 (written after the data when it had to be computed).
    static let checksumFields = ["note_input/checksum", "measurement/event1/image1/process/input/checksum",
                                 "measurement/event1/image2/process/input/checksum"]

    // MARK: - The NXem tree (identical on every rank)

    func document(source: FrameSource, input: String, target: String, knownSHA: String?, now: String, fileTime: String,
                  warnings: inout [String]) -> NXemDocument {
        let g = source.geometry
        var doc = NXemDocument()
        func f(_ path: String, _ v: H5Value, units: String? = nil) { doc.fields[path] = .init(v, units: units) }
        let ev = "measurement/event1"
        f("definition", .string("NXem"))
        f("start_time", .string(fileTime))
        f("\(ev)/start_time", .string(fileTime))
        if let n = options.sampleName { f("sample/name", .string(n)) }
        f("sample/atom_types", .string(options.atomTypes ?? ""))
        f("sample/is_simulation", .bool(false))
        var prep = fileTime
        if let p = options.preparationDate, let iso = MappingTable.isoDate(p, format: "iso", timezone: options.timezone) { prep = iso }
        f("sample/preparation_date", .string(prep))
        f("measurement/instrument/fabrication/vendor", .string(options.vendor))
        f("measurement/instrument/fabrication/model", .string(options.model))
        if options.vendor == "unknown" { warnings.append("instrument vendor/model unknown: set vendor: and model: (or context.instrument) in the spec") }
        doc.groupClasses["measurement/instrument/ebeam_column"] = "NXebeam_column"
        doc.groupClasses["\(ev)/instrument/ebeam_column"] = "NXebeam_column"
        let detectorName = ["mib": "Quantum Detectors Merlin", "empad": "EMPAD", "tiff-stack": "TIFF frame stack", "hdf5": "HDF5 detector data"][source.format] ?? "raw frame detector"
        f("measurement/instrument/detector1/name", .string(detectorName))
        f("\(ev)/instrument/detector1/operation_mode", .string(source.format == "mib" ? "counting" : "integrating"))
        if let kv = options.voltageKV { f("\(ev)/instrument/ebeam_column/electron_source/voltage", .double(kv), units: "kV") }
        if let l = options.cameraLengthM { f("\(ev)/instrument/optics/camera_length", .double(l), units: "m") }
        if let a = options.convergenceMrad { f("\(ev)/instrument/optics/semi_convergence_angle", .double(a), units: "mrad") }

        func axis(_ name: String, _ n: Int, step: Double?, units: String, what: String) -> NXemDocument.Axis {
            if let step, step > 0 {
                return .init(name: name, values: (0..<n).map { Double($0) * step }, units: units, longName: "\(what) along \(name.dropFirst(5))-axis (\(units))")
            }
            return .init(name: name, values: (0..<n).map(Double.init), units: "px", longName: "\(what) index along \(name.dropFirst(5))-axis")
        }
        let detUnits = options.detectorUnits
        func detAxis(_ name: String, _ n: Int) -> NXemDocument.Axis {
            // Reciprocal axes are centred on the frame's middle pixel.
            guard let s = options.detectorStep, s > 0, detUnits != "px" else { return axis(name, n, step: nil, units: "px", what: "Detector pixel") }
            return .init(name: name, values: (0..<n).map { (Double($0) - Double(n / 2)) * s }, units: detUnits,
                         longName: "\(detUnits == "mrad" ? "Scattering angle" : "Reciprocal coordinate") along \(name.dropFirst(5))-axis (\(detUnits))")
        }
        // Without a known checksum the checksum fields are written after the data (checksumFields).
        let k = max(1, min(options.writer.chunkFrames, g.scanX))
        let inputURI = TIFFToNXem.uri(input)
        func process(_ context: String) -> [String: NXemDocument.Field] {
            var p: [String: NXemDocument.Field] = [
                "detector_identifier": .init(.string("detector1")),
                "input/type": .init(.string(source.mediaType)), "input/file_name": .init(.string(inputURI)),
                "input/algorithm": .init(.string("sha256")), "input/context": .init(.string(context))]
            if let knownSHA { p["input/checksum"] = .init(.string(knownSHA)) }
            return p
        }
        doc.images.append(.init(group: "\(ev)/image1", type: g.pixelType, shape: g.shape, chunks: [1, k, g.frameHeight, g.frameWidth],
                                axes: [axis("axis_m", g.scanY, step: options.scanStepNM, units: "nm", what: "Scan position"),
                                       axis("axis_k", g.scanX, step: options.scanStepNM, units: "nm", what: "Scan position"),
                                       detAxis("axis_j", g.frameHeight), detAxis("axis_i", g.frameWidth)],
                                signalLongName: "Counts", process: process("all \(g.frames) frames, scan order")))
        doc.images.append(.init(group: "\(ev)/image2", type: .float64, shape: [g.scanY, g.scanX], chunks: [max(1, min(g.scanY, 256)), g.scanX],
                                axes: [axis("axis_j", g.scanY, step: options.scanStepNM, units: "nm", what: "Scan position"),
                                       axis("axis_i", g.scanX, step: options.scanStepNM, units: "nm", what: "Scan position")],
                                signalLongName: "Sum of each diffraction frame (bright-field-like overview)",
                                process: process("sum over every pixel of each frame")))
        doc.groupAttributes["\(ev)/image1"] = ["default": .string("image_4d")]
        doc.groupAttributes["\(ev)/image2"] = ["default": .string("image_2d")]

        // The detector's own header facts, verbatim.
        doc.groupClasses["\(ev)/detector_metadata"] = "NXcollection"
        var used = Set<String>()
        for (key, value) in source.metadata {
            var name = key.replacingOccurrences(of: "/", with: "_")
            while used.contains(name) { name += "_" }
            used.insert(name)
            f("\(ev)/detector_metadata/\(name)", .string(value))
        }

        f("note_input/file_name", .string(inputURI))
        if let knownSHA { f("note_input/checksum", .string(knownSHA)) }
        f("note_input/algorithm", .string("sha256"))
        f("note_input/type", .string(source.mediaType))
        f("note_input/description", .string("\(source.format) \(g.scanY)×\(g.scanX) scan of \(g.frameHeight)×\(g.frameWidth) \(g.pixelType.rawValue) frames; start_time is the input file's modification time"))
        doc.groupAttributes[""] = ["default": .string("measurement")]
        doc.groupAttributes["measurement"] = ["default": .string("event1")]
        doc.groupAttributes[ev] = ["default": .string("image2")]
        doc.addProvenance(fileTime: now, specPath: options.specPath, specSHA256: options.specSHA256, taskKey: options.taskKey)
        doc.rootAttributes["file_name"] = .string((target as NSString).lastPathComponent)
        return doc
    }
}
