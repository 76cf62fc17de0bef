// swift-tools-version:6.1
import PackageDescription

// MARK: - C libraries
// Each is found through pkg-config, so a site's module system (PKG_CONFIG_PATH) works on login nodes.
let cModules: [Target] = [
    .systemLibrary(
        name: "CCrypto", path: "Sources/CCrypto", pkgConfig: "libcrypto",
        providers: [.apt(["libssl-dev"])]),
    .systemLibrary(
        name: "CTIFF", path: "Sources/CTIFF", pkgConfig: "libtiff-4",
        providers: [.apt(["libtiff-dev"])]),
    .systemLibrary(
        name: "CCurl", path: "Sources/CCurl", pkgConfig: "libcurl",
        providers: [.apt(["libcurl4-openssl-dev"])]),
    .systemLibrary(
        name: "CHDF5", path: "Sources/CHDF5", pkgConfig: "hdf5-openmpi",
        providers: [.apt(["libhdf5-openmpi-dev", "libopenmpi-dev"])]),
]

// MARK: - Libraries
let libraries: [Target] = [
    // Bitshuffle+LZ4 chunks with a vector bit transposition (AVX-512 + GFNI or AVX2) and the HDF5
    // filter function that uses it, in C for the intrinsics (LZ4 comes from the plugin's liblz4).
    .target(name: "CBitshuffle", path: "Sources/CBitshuffle"),
    // SHA-256 (SHA-NI) and MD5 whose streams can be hashed two at a time on one core, in C for the
    // intrinsics; OpenSSL stays the single-stream code where pairing does not pay.
    .target(name: "CChecksums", path: "Sources/CChecksums", cSettings: [.unsafeFlags(["-O2"])]),
    .target(name: "POSIXFiles", exclude: ["README.md"]),
    .target(name: "Checksums", dependencies: ["CCrypto", "CChecksums", "POSIXFiles"], exclude: ["README.md"]),
    .target(name: "WorkflowSpec", dependencies: [.product(name: "Yams", package: "Yams")], exclude: ["README.md"]),
    .target(name: "Catalog", dependencies: [.product(name: "GRDB", package: "GRDB.swift")], exclude: ["README.md"]),
    .target(name: "EMFormats", dependencies: ["CTIFF", "POSIXFiles", .product(name: "Yams", package: "Yams")], exclude: ["README.md"]),
    .target(name: "S3Stage", dependencies: ["CCurl", "Checksums", "POSIXFiles"], exclude: ["README.md"]),
    .target(name: "ParallelNexus", dependencies: ["CHDF5", "CBitshuffle", "POSIXFiles", "EMFormats", "Checksums"], exclude: ["README.md"]),
    .target(name: "SlurmAdapter", dependencies: ["POSIXFiles"], exclude: ["README.md"]),
    .target(name: "Engine", dependencies: ["WorkflowSpec", "Catalog", "Checksums", "POSIXFiles", "EMFormats", "ParallelNexus", "S3Stage", "SlurmAdapter"], exclude: ["README.md"]),
]

// MARK: - Executables
let executables: [Target] = [
    .executableTarget(
        name: "emflow",
        dependencies: ["Engine", "WorkflowSpec", "Catalog", "Checksums", "POSIXFiles", "EMFormats", "ParallelNexus", "S3Stage",
                       .product(name: "ArgumentParser", package: "swift-argument-parser")]),
]

// MARK: - Tests
let tests: [Target] = [
    .target(name: "TestSupport", dependencies: ["POSIXFiles"], path: "Tests/TestSupport"),
    .testTarget(name: "ChecksumsTests", dependencies: ["Checksums", "POSIXFiles", "TestSupport"]),
    .testTarget(name: "WorkflowSpecTests", dependencies: ["WorkflowSpec", "TestSupport"]),
    .testTarget(name: "EMFormatsTests", dependencies: ["EMFormats", "Checksums", "TestSupport"]),
    .testTarget(name: "ConversionTests", dependencies: ["Engine", "EMFormats", "ParallelNexus", "Checksums", "TestSupport"]),
    .testTarget(name: "S3StageTests", dependencies: ["S3Stage", "Checksums", "POSIXFiles", "TestSupport"]),
    .testTarget(name: "ParallelNexusTests", dependencies: ["ParallelNexus", "POSIXFiles", "Checksums", "TestSupport"]),
    .testTarget(name: "CatalogTests", dependencies: ["Catalog", "TestSupport"]),
    .testTarget(name: "SlurmAdapterTests", dependencies: ["SlurmAdapter", "TestSupport"]),
    .testTarget(name: "EngineTests", dependencies: ["Engine", "Catalog", "WorkflowSpec", "S3Stage", "TestSupport"]),
    .testTarget(name: "CLITests", dependencies: ["TestSupport", "ParallelNexus", "POSIXFiles"]),
]

let package = Package(
    name: "emflow",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "emflow", targets: ["emflow"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
    ],
    targets: cModules + libraries + executables + tests,
    swiftLanguageModes: [.v6]
)
