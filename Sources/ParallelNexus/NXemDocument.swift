/// A NeXus/NXem file to write, described as data: fields at paths under the entry, the images, and
/// the classes of groups the layout cannot infer. `NXemWriter` turns it into HDF5.
public struct NXemDocument: Sendable {
    /// A scalar or small field with optional units and extra attributes.
    public struct Field: Sendable, Equatable {
        public var value: H5Value
        public var units: String?
        public var attributes: [String: H5Value]
        public init(_ value: H5Value, units: String? = nil, attributes: [String: H5Value] = [:]) {
            self.value = value; self.units = units; self.attributes = attributes
        }
    }

    /// One calibrated axis of an image: `values` along its dimension.
    public struct Axis: Sendable, Equatable {
        public var name: String          // axis_i, axis_j, axis_k
        public var values: [Double]
        public var units: String?
        public var longName: String
        public init(name: String, values: [Double], units: String?, longName: String) {
            self.name = name; self.values = values; self.units = units; self.longName = longName
        }
    }

    /// An image (NXimage with one NXdata `image_2d`/`image_3d`) whose pixels are written by a callback.
    public struct Image: Sendable {
        /// The NXimage group, e.g. `measurement/event1/image1`.
        public var group: String
        public var type: ElementType
        /// Slowest dimension first: (j, i) or (k, j, i).
        public var shape: [Int]
        public var chunks: [Int]
        /// Axes in the order of `shape`.
        public var axes: [Axis]
        public var signalLongName: String
        /// Fields of the image's NXprocess (detector_identifier, input/...), relative to the image group.
        public var process: [String: Field]
        public init(group: String, type: ElementType, shape: [Int], chunks: [Int], axes: [Axis], signalLongName: String,
                    process: [String: Field] = [:]) {
            self.group = group; self.type = type; self.shape = shape; self.chunks = chunks; self.axes = axes
            self.signalLongName = signalLongName; self.process = process
        }

        /// `image_2d`, `image_3d`, `image_4d` by rank: NXem's names, which the validator does not check.
        public var dataGroup: String { "\(group)/image_\(shape.count)d" }
    }

    public var entry = "entry1"
    /// Fields by path relative to the entry, e.g. `measurement/instrument/fabrication/vendor`.
    public var fields: [String: Field] = [:]
    /// Group classes by path relative to the entry, for groups `NXemLayout` cannot name (collections).
    public var groupClasses: [String: String] = [:]
    public var images: [Image] = []
    /// Attributes of the file root (creator, file_time, ...).
    public var rootAttributes: [String: H5Value] = [:]
    /// Attributes on groups, by group path relative to the entry (`@default`).
    public var groupAttributes: [String: [String: H5Value]] = [:]

    public init() {}
}

/// The NeXus classes of NXem's group names (infra/nxem-validator.md §2): a path's class follows from
/// its last component and its parent, so documents only list fields.
public enum NXemLayout {
    public static func nxClass(of components: [String]) -> String? {
        guard let last = components.last else { return nil }
        let parent = components.count >= 2 ? components[components.count - 2] : ""
        func numbered(_ prefix: String) -> Bool {
            last == prefix || (last.hasPrefix(prefix) && last.dropFirst(prefix.count).allSatisfy { $0.isNumber || $0 == "_" })
        }
        if components.count == 1 { return "NXentry" }
        switch last {
        case "measurement": return "NXem_measurement"
        case "instrument": return "NXem_instrument"
        case "fabrication": return "NXfabrication"
        case "ebeam_column": return "NXebeam_column"
        case "electron_source": return "NXsource"
        case "optics": return "NXem_optical_system"
        case "scan_controller": return "NXscan_controller"
        case "profiling": return "NXcs_profiling"
        case "process": return "NXprocess"
        case "input" where parent == "process": return "NXnote"
        case "image_1d", "image_2d", "image_3d", "image_4d": return "NXdata"
        default: break
        }
        if components.count == 2 && numbered("sample") { return "NXsample" }
        if numbered("event") && parent == "measurement" { return "NXem_event_data" }
        if numbered("detector") { return "NXdetector" }
        if numbered("program") { return "NXprogram" }
        if numbered("stage") { return "NXmanipulator" }
        if numbered("image") && parent.hasPrefix("event") { return "NXimage" }
        if last.hasPrefix("note") { return "NXnote" }
        return nil
    }
}
