import Foundation
import Yams

/// Turns a YAML spec into a `Workflow`, or every problem it has, each at its file:line:column.
public struct WorkflowParser: Sendable {
    public let stageKinds: [String: ParameterSchema]

    public init(stageKinds: [String: ParameterSchema]) { self.stageKinds = stageKinds }

    public func load(path: String) throws(WorkflowSpecError) -> Workflow {
        let absolute = path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
        guard let data = FileManager.default.contents(atPath: absolute) else {
            let exists = FileManager.default.fileExists(atPath: absolute)
            throw WorkflowSpecError([SpecIssue(file: path, line: 0, column: 0,
                message: exists ? "cannot read the spec file" : "no such spec file",
                hint: exists ? "check its permissions" : "give the path of a workflow YAML file, e.g. workflows/checksum.yaml")])
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw WorkflowSpecError([SpecIssue(file: path, line: 0, column: 0, message: "the spec is not UTF-8 text")])
        }
        let base = (absolute as NSString).deletingLastPathComponent
        return try parse(text: text, file: path, baseDirectory: base)
    }

    public func parse(text: String, file: String, baseDirectory: String) throws(WorkflowSpecError) -> Workflow {
        let root: Node
        do {
            guard let r = try Yams.compose(yaml: text) else {
                throw WorkflowSpecError([SpecIssue(file: file, line: 1, column: 1, message: "the spec is empty",
                                                   hint: "see docs/spec.md for the format")])
            }
            root = r
        } catch let e as WorkflowSpecError {
            throw e
        } catch let e as YamlError {
            throw WorkflowSpecError([SpecParsing.issue(from: e, file: file)])
        } catch {
            throw WorkflowSpecError([SpecIssue(file: file, line: 0, column: 0, message: "\(error)")])
        }
        var p = SpecParsing(file: file, base: baseDirectory, kinds: stageKinds)
        let wf = p.workflow(root)
        if !p.issues.isEmpty { throw WorkflowSpecError(p.issues) }
        return wf!
    }
}

struct SpecParsing {
    let file: String
    let base: String
    let kinds: [String: ParameterSchema]
    var issues: [SpecIssue] = []

    static func issue(from e: YamlError, file: String) -> SpecIssue {
        switch e {
        case let .scanner(context, problem, mark, _), let .parser(context, problem, mark, _), let .composer(context, problem, mark, _):
            let ctx = context.map { " (\($0.text) at line \($0.mark.line))" } ?? ""
            return SpecIssue(file: file, line: mark.line, column: mark.column, message: "YAML syntax: \(problem)\(ctx)",
                             hint: "check indentation and quoting near this line")
        case let .duplicatedKeysInMapping(dups, context):
            return SpecIssue(file: file, line: context.mark.line, column: context.mark.column,
                             message: "duplicated key(s) \(dups.joined(separator: ", "))", hint: "each key may appear once")
        default:
            return SpecIssue(file: file, line: 1, column: 1, message: "YAML: \(e)")
        }
    }

    mutating func fail(_ node: Node?, _ message: String, hint: String? = nil) {
        issues.append(SpecIssue(file: file, line: node?.mark?.line ?? 0, column: node?.mark?.column ?? 0, message: message, hint: hint))
    }

    /// The pairs of a mapping, with unknown keys reported.
    mutating func mapping(_ node: Node, _ what: String, allowed: [String]?) -> [(key: String, keyNode: Node, value: Node)]? {
        guard case .mapping(let m) = node else {
            fail(node, "\(what) must be a mapping (key: value lines)"); return nil
        }
        var out: [(String, Node, Node)] = []
        for (k, v) in m {
            guard let ks = k.string else { fail(k, "keys in \(what) must be text"); continue }
            if let allowed, !allowed.contains(ks) {
                let near = Self.nearest(ks, in: allowed)
                fail(k, "unknown key '\(ks)' in \(what)",
                     hint: near.map { "did you mean '\($0)'? " } ?? "" + "allowed: \(allowed.joined(separator: ", "))")
                continue
            }
            out.append((ks, k, v))
        }
        return out
    }

    static func nearest(_ s: String, in candidates: [String]) -> String? {
        func dist(_ a: [Character], _ b: [Character]) -> Int {
            var prev = Array(0...b.count)
            for i in 1...max(a.count, 1) where !a.isEmpty {
                var cur = [i] + Array(repeating: 0, count: b.count)
                for j in 1...max(b.count, 1) where !b.isEmpty {
                    cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
                }
                prev = cur
            }
            return a.isEmpty ? b.count : prev[b.count]
        }
        let best = candidates.map { ($0, dist(Array(s), Array($0))) }.min { $0.1 < $1.1 }
        return best.flatMap { $0.1 <= max(2, s.count / 3) ? $0.0 : nil }
    }

    mutating func string(_ node: Node, _ what: String) -> String? {
        guard case .scalar(let s) = node else { fail(node, "\(what) must be a text value"); return nil }
        if node.tag.rawValue == Tag.Name.null.rawValue && s.style == .plain && (s.string.isEmpty || s.string == "~" || s.string == "null") {
            fail(node, "\(what) is empty"); return nil
        }
        return s.string
    }

    mutating func int(_ node: Node, _ what: String, min lo: Int = Int.min) -> Int? {
        guard case .scalar = node, let i = node.int else { fail(node, "\(what) must be a whole number"); return nil }
        if i < lo { fail(node, "\(what) must be at least \(lo)"); return nil }
        return i
    }

    mutating func stringList(_ node: Node, _ what: String) -> [(String, Node)]? {
        switch node {
        case .scalar: return string(node, what).map { [($0, node)] }
        case .sequence(let seq):
            var out: [(String, Node)] = []
            for n in seq { if let s = string(n, "each entry of \(what)") { out.append((s, n)) } }
            return out
        default: fail(node, "\(what) must be a text value or a list of them"); return nil
        }
    }

    func value(_ node: Node) -> ParamValue {
        switch node {
        case .scalar(let s):
            if s.style != .plain { return .string(s.string) }
            let t = node.tag.rawValue
            if t == Tag.Name.null.rawValue, node.null != nil { return .null }
            if let b = node.bool, t == Tag.Name.bool.rawValue { return .bool(b) }
            if t == Tag.Name.int.rawValue, let i = node.int { return .int(i) }
            if t == Tag.Name.float.rawValue, let d = node.float { return .number(d) }
            return .string(s.string)
        case .sequence(let seq): return .list(seq.map(value))
        case .mapping(let m):
            var d: [String: ParamValue] = [:]
            for (k, v) in m { d[k.string ?? ""] = value(v) }
            return .map(d)
        case .alias: return .null
        }
    }

    func path(_ p: String) -> String {
        var s = p
        if s.hasPrefix("~/"), let home = ProcessInfo.processInfo.environment["HOME"] { s = home + s.dropFirst(1) }
        let abs = s.hasPrefix("/") ? s : base + "/" + s
        return URL(fileURLWithPath: abs).standardizedFileURL.path
    }

    static let topKeys = ["name", "description", "inputs", "outputs", "workspace", "executor", "s3", "context", "stages"]

    mutating func workflow(_ root: Node) -> Workflow? {
        guard let top = mapping(root, "the spec", allowed: Self.topKeys) else { return nil }
        var name: String?, description: String?, inputs: [InputSpec] = [], outputs: OutputSpec?
        var workspace: String?, executor = ExecutorSpec(), s3 = S3Settings(), context = ParamValue.map([:]), stages: [StageSpec] = []
        var sawInputs = false, sawStages = false
        for (k, _, v) in top {
            switch k {
            case "name":
                name = string(v, "name")
                if let n = name, n.isEmpty || n.contains(where: { $0 == "/" || $0.isNewline }) {
                    fail(v, "name must be a non-empty single line without '/'")
                }
            case "description": description = string(v, "description")
            case "inputs": sawInputs = true; inputs = parseInputs(v)
            case "outputs": outputs = parseOutputs(v)
            case "workspace": workspace = string(v, "workspace").map(path)
            case "executor": executor = parseExecutor(v)
            case "s3": s3 = parseS3(v)
            case "context":
                if case .mapping = v { context = value(v) } else { fail(v, "context must be a mapping of README fields") }
            case "stages": sawStages = true; stages = parseStages(v)
            default: break
            }
        }
        let here = root
        if name == nil && !issues.contains(where: { $0.message.hasPrefix("name") }) { fail(here, "missing key 'name'", hint: "give the workflow a short name, e.g. name: tiff-to-nxem") }
        if !sawInputs { fail(here, "missing key 'inputs'", hint: "list where the data comes from, e.g. inputs: [{path: /data/drop}]") }
        if outputs == nil && !issues.contains(where: { $0.message.contains("outputs") }) { fail(here, "missing key 'outputs'", hint: "say where results go, e.g. outputs: {root: /data/managed}") }
        if !sawStages { fail(here, "missing key 'stages'", hint: "add at least one stage, e.g. stages: {checksum: {uses: checksum}}") }
        guard let name, let outputs else { return nil }
        var w = Workflow(name: name, description: description, inputs: inputs, outputs: outputs,
                         workspace: workspace ?? (outputs.root + "/.emflow"), executor: executor,
                         context: context, stages: stages, sourceFile: file)
        w.s3 = s3
        return w
    }

    mutating func parseInputs(_ node: Node) -> [InputSpec] {
        guard case .sequence(let seq) = node, seq.count > 0 else {
            fail(node, "inputs must be a non-empty list", hint: "e.g. inputs:\n      - path: /data/drop\n        include: ['**/*.tif']")
            return []
        }
        var out: [InputSpec] = []
        for entry in seq {
            guard let pairs = mapping(entry, "an input", allowed: ["path", "include", "exclude", "layout"]) else { continue }
            var loc: InputLocation?, include: [Glob] = [], exclude: [Glob] = [], layout: PathTemplate?
            for (k, _, v) in pairs {
                switch k {
                case "path":
                    guard let s = string(v, "path") else { continue }
                    if s.hasPrefix("s3://") {
                        let rest = s.dropFirst(5)
                        let bucket = rest.prefix { $0 != "/" }
                        if bucket.isEmpty { fail(v, "s3 input '\(s)' has no bucket", hint: "write s3://BUCKET/PREFIX") }
                        else { loc = .s3(bucket: String(bucket), prefix: String(rest.dropFirst(bucket.count + 1))) }
                    } else if s.contains("://") {
                        fail(v, "unsupported input scheme in '\(s)'", hint: "use a local path or s3://bucket/prefix")
                    } else { loc = .local(path: path(s)) }
                case "include", "exclude":
                    for (g, gn) in stringList(v, k) ?? [] {
                        do { let glob = try Glob(g); if k == "include" { include.append(glob) } else { exclude.append(glob) } }
                        catch { fail(gn, "bad glob '\(g)': \(Self.describe(error))", hint: "globs use *, **, ?, [abc] and {a,b}") }
                    }
                case "layout":
                    guard let s = string(v, "layout") else { continue }
                    do { layout = try PathTemplate(s) }
                    catch { fail(v, "bad layout '\(s)': \(error)", hint: "e.g. {proposal}/{sample}/{experiment}/{file}") }
                default: break
                }
            }
            guard let loc else {
                if !issues.contains(where: { $0.line == entry.mark?.line }) { fail(entry, "an input needs a 'path'", hint: "a local directory or s3://bucket/prefix") }
                continue
            }
            out.append(InputSpec(location: loc, include: include, exclude: exclude, layout: layout))
        }
        return out
    }

    static func describe(_ e: Glob.ParseError) -> String {
        switch e {
        case .unbalanced(let c): return "unbalanced '\(c)'"
        case .emptyPattern: return "empty pattern"
        case .emptyAlternative: return "empty {} alternative"
        }
    }

    mutating func parseOutputs(_ node: Node) -> OutputSpec? {
        guard let pairs = mapping(node, "outputs", allowed: ["root", "naming"]) else { return nil }
        var root: String?, naming: PathTemplate?
        for (k, _, v) in pairs {
            if k == "root" { root = string(v, "outputs.root").map(path) }
            if k == "naming", let s = string(v, "outputs.naming") {
                do {
                    let t = try PathTemplate(s)
                    let known: Set<String> = ["proposal", "sample", "experiment", "stem", "ext", "file", "version"]
                    if let bad = t.fieldNames.first(where: { !known.contains($0) }) {
                        fail(v, "unknown field {\(bad)} in outputs.naming", hint: "known: \(known.sorted().joined(separator: ", "))")
                    } else { naming = t }
                } catch { fail(v, "bad naming template '\(s)': \(error)") }
            }
        }
        guard let root else { fail(node, "outputs needs a 'root'", hint: "the directory that receives managed and derived data"); return nil }
        return OutputSpec(root: root, naming: naming)
    }

    mutating func parseExecutor(_ node: Node) -> ExecutorSpec {
        var e = ExecutorSpec()
        guard let pairs = mapping(node, "executor", allowed: ["kind", "jobs", "site", "poll_interval"]) else { return e }
        for (k, _, v) in pairs {
            switch k {
            case "kind":
                if let s = string(v, "executor.kind") {
                    if let kind = ExecutorSpec.Kind(rawValue: s) { e.kind = kind }
                    else { fail(v, "unknown executor '\(s)'", hint: "use local or slurm") }
                }
            case "jobs": e.jobs = int(v, "executor.jobs", min: 1)
            case "site": e.site = string(v, "executor.site").map(path)
            case "poll_interval":
                if let d = v.float, d >= 0.2, d <= 3600 { e.pollInterval = d } else { fail(v, "executor.poll_interval is seconds between 0.2 and 3600") }
            default: break
            }
        }
        return e
    }

    mutating func parseS3(_ node: Node) -> S3Settings {
        var o = S3Settings()
        if case .mapping(let m) = node {
            for (k, _) in m {
                let name = (k.string ?? "").lowercased()
                if name.contains("secret") || name.contains("access_key") || name.contains("token") || name.contains("password") {
                    fail(k, "credentials do not belong in a spec ('\(k.string ?? "")' in s3)",
                         hint: "export AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or name a profile of ~/.aws/credentials with s3.profile")
                    return o
                }
            }
        }
        guard let pairs = mapping(node, "s3", allowed: S3Settings.keys) else { return o }
        for (k, _, v) in pairs {
            switch k {
            case "endpoint":
                o.endpoint = string(v, "s3.endpoint")
                if let e = o.endpoint, !(e.hasPrefix("http://") || e.hasPrefix("https://")) {
                    fail(v, "s3.endpoint '\(e)' is not an http(s) URL", hint: "e.g. endpoint: https://rgw.example.org")
                }
            case "region": o.region = string(v, "s3.region")
            case "profile": o.profile = string(v, "s3.profile")
            case "addressing":
                o.addressing = string(v, "s3.addressing")
                if let a = o.addressing, a != "path" && a != "virtual" { fail(v, "s3.addressing must be path or virtual") }
            case "insecure":
                if let b = v.bool { o.insecure = b } else { fail(v, "s3.insecure must be true or false") }
            case "ca_bundle": o.caBundle = string(v, "s3.ca_bundle").map(path)
            case "concurrency": o.concurrency = int(v, "s3.concurrency", min: 1)
            case "part_size_mib": o.partSizeMiB = int(v, "s3.part_size_mib", min: 5)
            case "etags":
                o.etags = string(v, "s3.etags")
                if let e = o.etags, e != "md5" && e != "opaque" {
                    fail(v, "s3.etags must be md5 or opaque, not '\(e)'", hint: "opaque for a server whose ETags are not MD5 digests of the content (md5 is the default)")
                }
            default: break
            }
        }
        return o
    }

    mutating func parseStages(_ node: Node) -> [StageSpec] {
        guard let pairs = mapping(node, "stages", allowed: nil), !pairs.isEmpty else {
            if case .mapping = node { fail(node, "stages is empty", hint: "add at least one stage") }
            return []
        }
        var out: [StageSpec] = []
        var seen: [String: Int] = [:]
        for (idx, (name, keyNode, v)) in pairs.enumerated() {
            if name.isEmpty || !name.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" }) {
                fail(keyNode, "stage name '\(name)' may only use letters, digits, '-' and '_'"); continue
            }
            guard let fields = mapping(v, "stage '\(name)'", allowed: ["uses", "needs", "with", "resources", "retry"]) else { continue }
            var uses: String?, usesNode: Node?, needs: [String] = [], params: [String: ParamValue] = [:]
            var withNode: Node?, resources = Resources(), retry = RetryPolicy()
            for (k, _, fv) in fields {
                switch k {
                case "uses": uses = string(fv, "uses"); usesNode = fv
                case "needs":
                    for (n, nn) in stringList(fv, "needs") ?? [] {
                        if seen[n] != nil { needs.append(n) }
                        else if pairs.contains(where: { $0.key == n }) {
                            fail(nn, "stage '\(name)' needs '\(n)', which comes later", hint: "order stages so each comes after what it needs (this also rules out cycles)")
                        } else {
                            fail(nn, "stage '\(name)' needs '\(n)', which is not a stage of this workflow",
                                 hint: "stages: \(pairs.map(\.key).joined(separator: ", "))")
                        }
                    }
                case "with": withNode = fv
                case "resources": resources = parseResources(fv, stage: name)
                case "retry": retry = parseRetry(fv)
                default: break
                }
            }
            guard let uses else {
                if usesNode == nil { fail(v, "stage '\(name)' has no 'uses'", hint: "name a stage kind: \(kinds.keys.sorted().joined(separator: ", "))") }
                continue
            }
            guard let schema = kinds[uses] else {
                let near = Self.nearest(uses, in: Array(kinds.keys))
                fail(usesNode, "unknown stage kind '\(uses)'",
                     hint: (near.map { "did you mean '\($0)'? " } ?? "") + "known kinds: \(kinds.keys.sorted().joined(separator: ", "))")
                continue
            }
            params = parseParameters(withNode, schema: schema, stage: name, at: v)
            seen[name] = idx
            out.append(StageSpec(name: name, uses: uses, needs: needs, parameters: params, resources: resources,
                                 retry: retry, line: keyNode.mark?.line ?? 0))
        }
        return out
    }

    mutating func parseParameters(_ node: Node?, schema: ParameterSchema, stage: String, at stageNode: Node) -> [String: ParamValue] {
        var out: [String: ParamValue] = [:]
        let allowed = schema.fields.map(\.name)
        if let node, case .mapping = node {
            for (k, _, v) in mapping(node, "'with' of stage '\(stage)'", allowed: allowed) ?? [] {
                let f = schema.fields.first { $0.name == k }!
                let val = value(v)
                let ok: Bool
                switch f.type {
                case .string: ok = val.stringValue != nil
                case .int: ok = val.intValue != nil
                case .number: ok = val.doubleValue != nil
                case .bool: ok = val.boolValue != nil
                case .stringList: ok = val.listValue?.allSatisfy { $0.stringValue != nil } ?? false
                case .map: ok = val.mapValue != nil
                }
                if !ok { fail(v, "'\(k)' of stage '\(stage)' must be \(f.type == .int ? "a whole number" : "a \(f.type.rawValue)")", hint: f.help); continue }
                if let allowedValues = f.allowed, let s = val.stringValue, !allowedValues.contains(s) {
                    fail(v, "'\(k)' of stage '\(stage)' cannot be '\(s)'", hint: "one of: \(allowedValues.joined(separator: ", "))"); continue
                }
                out[k] = val
            }
        } else if let node, !(node.null != nil) {
            fail(node, "'with' of stage '\(stage)' must be a mapping")
        }
        for f in schema.fields where out[f.name] == nil {
            if let d = f.defaultValue { out[f.name] = d }
            else if f.required { fail(node ?? stageNode, "stage '\(stage)' needs '\(f.name)' under 'with'", hint: f.help) }
        }
        return out
    }

    mutating func parseResources(_ node: Node, stage: String) -> Resources {
        var r = Resources()
        for (k, _, v) in mapping(node, "resources of stage '\(stage)'", allowed: Resources.knownKeys) ?? [] {
            guard case .scalar = v, let s = v.string else { fail(v, "resource '\(k)' must be a single value"); continue }
            if s.contains(where: { $0.isNewline || $0 == "\0" }) { fail(v, "resource '\(k)' must be one line"); continue }
            switch k {
            case "time":
                if !Self.isSlurmTime(s) { fail(v, "time '\(s)' is not a Slurm time", hint: "use minutes, MM:SS, HH:MM:SS or D-HH:MM:SS, e.g. 01:30:00"); continue }
            case "mem", "mem-per-cpu":
                if s.range(of: #"^[0-9]+[KMGT]?$"#, options: .regularExpression) == nil { fail(v, "\(k) '\(s)' is not a Slurm memory size", hint: "e.g. 4G or 500M"); continue }
            case "cpus-per-task", "ntasks", "nodes", "ranks", "batch", "throttle":
                if Int(s).map({ $0 < 1 }) ?? true { fail(v, "\(k) must be a whole number of at least 1"); continue }
            default:
                // Names and lists that go to sbatch: a conservative character set keeps job scripts safe.
                if s.range(of: #"^[A-Za-z0-9_.,:=+\-/|&()\[\]]+$"#, options: .regularExpression) == nil {
                    fail(v, "\(k) '\(s)' has characters Slurm does not use in \(k)", hint: "letters, digits and _ . , : = + - / | & ( ) [ ]"); continue
                }
            }
            r.values[k] = s
        }
        return r
    }

    static func isSlurmTime(_ s: String) -> Bool {
        let patterns = [#"^[0-9]+$"#, #"^[0-9]+:[0-9]{1,2}$"#, #"^[0-9]+:[0-9]{1,2}:[0-9]{1,2}$"#,
                        #"^[0-9]+-[0-9]{1,2}$"#, #"^[0-9]+-[0-9]{1,2}:[0-9]{1,2}$"#, #"^[0-9]+-[0-9]{1,2}:[0-9]{1,2}:[0-9]{1,2}$"#]
        return patterns.contains { s.range(of: $0, options: .regularExpression) != nil }
    }

    mutating func parseRetry(_ node: Node) -> RetryPolicy {
        var r = RetryPolicy()
        for (k, _, v) in mapping(node, "retry", allowed: ["tries", "backoff"]) ?? [] {
            if k == "tries", let t = int(v, "retry.tries", min: 1) { r.tries = t }
            if k == "backoff" {
                let items: [Node]
                if case .sequence(let s) = v { items = Array(s) } else { items = [v] }
                var delays: [Double] = []
                for n in items {
                    guard let d = n.float, d >= 0, d <= 86_400 else { fail(n, "backoff values are seconds between 0 and 86400"); continue }
                    delays.append(d)
                }
                r.backoff = delays
            }
        }
        return r
    }
}
