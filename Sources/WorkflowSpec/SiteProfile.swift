import Foundation
import Yams

/// A site profile (sites/*.yaml): what a cluster's users share — storage roots, partition names,
/// default sbatch resources, environment set-up lines and polite scheduler settings. A spec names
/// it with `executor.site`; stage `resources:` are merged over the profile's.
public struct SiteProfile: Sendable, Equatable {
    public static let keys = ["name", "description", "storage", "partitions", "resources", "setup", "throttle", "poll_interval", "mpi"]
    public var name: String
    public var description: String?
    /// Named storage roots (scratch, fast, home, lts …) and `stripe_size_mib` for HDF5 alignment.
    public var storage: [String: String] = [:]
    /// Partition names as settings: a stage may say `partition: short` and the site maps it.
    public var partitions: [String: String] = [:]
    /// Defaults under every stage's resources.
    public var resources = Resources()
    /// Shell lines run first in every job script (module loads); written by the site's admins.
    public var setup: [String] = []
    /// Array tasks of one array running at once (`%M`).
    public var throttle: Int = 100
    /// Seconds between two squeue calls of a waiting driver.
    public var pollInterval: Double = 30
    /// srun's --mpi plugin for MPI stages.
    public var mpi: String = "pmix"
    public var sourceFile: String = ""

    public init(name: String) { self.name = name }

    /// The stage's resources over the profile's, with partition aliases resolved.
    public func merged(_ stage: Resources) -> Resources {
        var r = resources
        for (k, v) in stage.values { r.values[k] = v }
        if let p = r.values["partition"], let real = partitions[p] { r.values["partition"] = real }
        return r
    }

    public static func load(path: String) throws(WorkflowSpecError) -> SiteProfile {
        guard let data = FileManager.default.contents(atPath: path), let text = String(data: data, encoding: .utf8) else {
            throw WorkflowSpecError([SpecIssue(file: path, line: 0, column: 0, message: "cannot read the site profile",
                                               hint: "executor.site names a YAML file such as sites/orfeo.yaml")])
        }
        let root: Node
        do {
            guard let r = try Yams.compose(yaml: text) else {
                throw WorkflowSpecError([SpecIssue(file: path, line: 1, column: 1, message: "the site profile is empty")])
            }
            root = r
        } catch let e as WorkflowSpecError { throw e }
        catch let e as YamlError { throw WorkflowSpecError([SpecParsing.issue(from: e, file: path)]) }
        catch { throw WorkflowSpecError([SpecIssue(file: path, line: 0, column: 0, message: "\(error)")]) }
        var p = SpecParsing(file: path, base: (path as NSString).deletingLastPathComponent, kinds: [:])
        var site = SiteProfile(name: ((path as NSString).lastPathComponent as NSString).deletingPathExtension)
        site.sourceFile = path
        for (k, _, v) in p.mapping(root, "the site profile", allowed: keys) ?? [] {
            switch k {
            case "name": if let s = p.string(v, "name") { site.name = s }
            case "description": site.description = p.string(v, "description")
            case "storage":
                for (sk, _, sv) in p.mapping(v, "storage", allowed: nil) ?? [] { if let s = p.string(sv, "storage.\(sk)") { site.storage[sk] = s } }
            case "partitions":
                for (pk, _, pv) in p.mapping(v, "partitions", allowed: nil) ?? [] {
                    guard let s = p.string(pv, "partitions.\(pk)") else { continue }
                    if s.range(of: #"^[A-Za-z0-9_.,\-]+$"#, options: .regularExpression) == nil { p.fail(pv, "partition '\(s)' is not a Slurm partition name"); continue }
                    site.partitions[pk] = s
                }
            case "resources": site.resources = p.parseResources(v, stage: "the site")
            case "setup":
                for (line, node) in p.stringList(v, "setup") ?? [] {
                    if line.contains(where: { $0.isNewline }) { p.fail(node, "each setup entry is one shell line"); continue }
                    site.setup.append(line)
                }
            case "throttle": if let t = p.int(v, "throttle", min: 1) { site.throttle = t }
            case "poll_interval":
                if let d = v.float, d >= 0.2, d <= 3600 { site.pollInterval = d } else { p.fail(v, "poll_interval is seconds between 0.2 and 3600") }
            case "mpi": if let s = p.string(v, "mpi") { site.mpi = s }
            default: break
            }
        }
        if !p.issues.isEmpty { throw WorkflowSpecError(p.issues) }
        return site
    }
}
