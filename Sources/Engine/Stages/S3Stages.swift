import Foundation
import POSIXFiles
import Checksums
import Catalog
import S3Stage
import EMFormats
import WorkflowSpec

extension StageError {
    init(_ e: S3Error) { self.init(e.description, retryable: e.retryable) }
}

/// Brings S3 objects (an `s3://bucket/prefix` input) to a POSIX directory, e.g. on CephFS, where
/// Slurm jobs read them: `<to>/<bucket>/<key>`. Verified against size and the recorded SHA-256 (or
/// the MD5 ETag), written under a temporary name and renamed; an unchanged object (same ETag and
/// size) is a done task and is not fetched again.
public struct StageInStage: Stage {
    public static let kind = "stage-in"
    public static let version = 1
    public static let schema = ParameterSchema(summary: "download s3:// inputs to a POSIX directory, verified", fields: [
        .init("to", .string, default: .string(""),
              help: "directory that receives <bucket>/<key> (relative to the spec); default: <workspace>/staging"),
        .init("sidecars", .bool, default: .bool(true),
              help: "also fetch metadata sidecars next to each object (stem.txt, stem.hdr, stem.xml, name.hdr), as conversions read them"),
    ])
    public init() {}

    func root(_ parameters: [String: ParamValue], _ ctx: TaskContext) -> String {
        let to = parameters["to"]?.stringValue ?? ""
        return to.isEmpty ? Path.join(ctx.workspace, "staging") : Path.resolve(to, against: Path.directory(of: ctx.specPath))
    }

    public func run(_ task: TaskInput, _ ctx: TaskContext) throws(StageError) -> TaskResult.Partial {
        guard let item = task.item, let src = task.input else { throw StageError("stage-in needs an input object") }
        guard src.isS3, let uri = S3URI(src.path) else {
            throw StageError("\(src.path) is not an s3:// object; stage-in is for s3:// inputs (local inputs need no staging)")
        }
        let rel: String
        switch ObjectPaths.relativePath(key: uri.key, prefix: "") {
        case .success(let r): rel = r
        case .failure(let e): throw StageError(e.description)
        }
        let dest = Path.join(Path.join(root(task.parameters, ctx), uri.bucket), rel)
        do throws(S3Error) {
            let client = try S3Access.client(ctx.s3)
            let known = S3Object(key: uri.key, size: src.size, etag: src.etag ?? "", lastModified: Double(src.mtimeNanoseconds) / 1e9)
            AtomicFile.removeStaleTemporaries(in: Path.directory(of: dest))
            let r = try client.download(bucket: uri.bucket, key: uri.key, to: dest, known: known, permissions: 0o444, progress: ctx.reportBytes)
            guard let st = try? FileStatus.of(path: dest) else { throw S3Error(operation: "stage-in", bucket: uri.bucket, key: uri.key, status: nil, code: nil, message: "\(dest) vanished after it was written", hint: "check the staging file system") }
            var out = TaskResult.Partial(artifact: Artifact(path: dest, size: st.size, mtimeNanoseconds: st.mtimeNanoseconds, sha256: r.sha256))
            out.objects = [ObjectInfo(path: dest, size: st.size, mtimeNanoseconds: st.mtimeNanoseconds, sha256: r.sha256,
                                      fields: item.fields, sourceURI: src.path)]
            out.bytes = r.size
            out.notes = ["downloaded \(src.path), verified by \(r.verifiedBy)"]
            if task.parameters["sidecars"]?.boolValue ?? true {
                // One listing finds them all: every candidate starts with "<dir>/<stem>.".
                let wanted = Set(MetadataReader.sidecarCandidates(for: uri.key))
                let name = Path.lastComponent(of: uri.key)
                let stem = name.lastIndex(of: ".").map { String(name[..<$0]) } ?? name
                let dirKey = uri.key.dropLast(name.count)
                for o in try client.list(bucket: uri.bucket, prefix: dirKey + stem + ".").objects where wanted.contains(o.key) {
                    let side = Path.join(Path.directory(of: dest), Path.lastComponent(of: o.key))
                    let sr = try client.download(bucket: uri.bucket, key: o.key, to: side, known: o, permissions: 0o444)
                    out.notes.append("sidecar s3://\(uri.bucket)/\(o.key) (\(sr.size) bytes)")
                }
            }
            return out
        } catch {
            throw StageError(error)
        }
    }
}

/// Publishes derived files to the proposal's mirror bucket: the raw bucket's name rewritten
/// (`lame-raw-…` → `lame-ofed-…`), the same key with the derived file's extension, `x-amz-meta-sha256`
/// set. After all items: README.txt beside the data, and per proposal a SHA256SUMS and an aria2 input
/// file of presigned URLs. Never writes into a raw bucket.
public struct PublishStage: Stage {
    public static let kind = "publish"
    public static let version = 1
    public static let schema = ParameterSchema(summary: "upload outputs to the mirror bucket with checksums, README and manifests", fields: [
        .init("bucket", .string, default: .string(""), help: "target bucket; default: the input's bucket name rewritten (rewrite_from → rewrite_to)"),
        .init("rewrite_from", .string, default: .string("lame-raw-"), help: "raw bucket name prefix to replace"),
        .init("rewrite_to", .string, default: .string("lame-ofed-"), help: "mirror bucket name prefix"),
        .init("raw_prefix", .string, default: .string("lame-raw-"), help: "buckets with this prefix are raw data: never written"),
        .init("key_prefix", .string, default: .string(""), help: "for local inputs: key prefix before the item's relative path"),
        .init("url_expiry", .int, default: .int(3600), help: "seconds the presigned URLs of the aria2 manifest stay valid (max 604800 = 7 days)"),
        .init("readme", .bool, default: .bool(true), help: "upload README.txt beside the published data"),
    ])
    public init() {}

    public static let manifestName = "SHA256SUMS"
    public static let aria2Name = "download.aria2"

    struct Target { var bucket: String; var key: String }

    /// Where an item's derived file goes.
    func target(for artifact: Artifact, item: Item, parameters p: [String: ParamValue]) throws(StageError) -> Target {
        let explicit = p["bucket"]?.stringValue ?? ""
        let from = p["rewrite_from"]?.stringValue ?? "lame-raw-", to = p["rewrite_to"]?.stringValue ?? "lame-ofed-"
        let raw = p["raw_prefix"]?.stringValue ?? "lame-raw-"
        let source = S3URI(item.source.path)
        var bucket = explicit
        if bucket.isEmpty {
            guard let source else {
                throw StageError("\(item.source.path) is a local input, so there is no raw bucket to derive the mirror from; set publish.bucket")
            }
            guard !from.isEmpty, source.bucket.hasPrefix(from) else {
                throw StageError("cannot derive the mirror bucket of s3://\(source.bucket): its name does not start with '\(from)'; set publish.bucket, or rewrite_from/rewrite_to")
            }
            bucket = to + source.bucket.dropFirst(from.count)
        }
        if (!raw.isEmpty && bucket.hasPrefix(raw)) || bucket == source?.bucket {
            throw StageError("refusing to write into s3://\(bucket): it is a raw data bucket (\(bucket == source?.bucket ? "the input's own bucket" : "prefix '\(raw)'")), which emflow never modifies; publish to the mirror bucket (publish.bucket or rewrite_to)")
        }
        // The same key as the source, with the derived file's name: x.tif -> x.nxs (x.v2.nxs stays so).
        let sourceKey: String
        if let source { sourceKey = source.key } else {
            let rel = item.id.firstIndex(of: ":").map { String(item.id[item.id.index(after: $0)...]) } ?? item.id
            let prefix = p["key_prefix"]?.stringValue ?? ""
            sourceKey = prefix.isEmpty || prefix.hasSuffix("/") ? prefix + rel : prefix + "/" + rel
        }
        let dir = sourceKey.contains("/") ? String(sourceKey[..<sourceKey.lastIndex(of: "/")!]) + "/" : ""
        let srcName = Path.lastComponent(of: sourceKey)
        let stem = srcName.lastIndex(of: ".").map { String(srcName[..<$0]) } ?? srcName
        let name = Path.lastComponent(of: artifact.path)
        let derived = name.hasPrefix(stem + ".") ? stem + name.dropFirst(stem.count) : name
        return Target(bucket: bucket, key: dir + derived)
    }

    public func run(_ task: TaskInput, _ ctx: TaskContext) throws(StageError) -> TaskResult.Partial {
        guard let item = task.item, let art = task.input else { throw StageError("publish needs an input file") }
        guard !art.isS3 else { throw StageError("\(art.path) is still in S3; publish uploads local files (the output of a conversion)") }
        let t = try target(for: art, item: item, parameters: task.parameters)
        let uri = "s3://\(t.bucket)/\(t.key)"
        do throws(S3Error) {
            let client = try S3Access.client(ctx.s3)
            guard let sha = art.sha256 ?? (try? FileHasher.sha256(path: art.path).sha256) else {
                throw S3Error(operation: "publish", bucket: t.bucket, key: t.key, status: nil, code: nil, message: "cannot read \(art.path)", hint: "check that the file exists and is readable")
            }
            var out = TaskResult.Partial(artifact: art)
            // Already there with this content (a re-run after a lost catalog): nothing to send.
            if let head = try client.head(bucket: t.bucket, key: t.key), head.size == art.size, head.metadata["sha256"] == sha {
                out.notes = ["already published as \(uri)"]
            } else {
                let type = [".nxs", ".h5", ".hdf5", ".nx5"].contains(where: art.path.hasSuffix) ? "application/x-hdf5" : "application/octet-stream"
                let r = try client.upload(file: art.path, bucket: t.bucket, key: t.key, sha256: sha, contentType: type,
                                          metadata: ["emflow-source": item.source.path], progress: ctx.reportBytes)
                out.bytes = r.size
                out.notes = ["published as \(uri)"]
            }
            out.outputs = [OutputInfo(path: uri, size: art.size, sha256: sha)]
            out.objects = [ObjectInfo(path: uri, size: art.size, mtimeNanoseconds: art.mtimeNanoseconds, sha256: sha,
                                      fields: item.fields, sourceURI: art.path)]
            return out
        } catch {
            throw StageError(error)
        }
    }

    /// README.txt beside the data, and per proposal (or per directory without a layout) a SHA256SUMS
    /// and an aria2 input file (`aria2c -i download.aria2` fetches and checks everything).
    public func finish(stage: StageSpec, results: [TaskResult], catalog: Catalog, ctx: TaskContext) throws(StageError) -> [OutputInfo] {
        struct Published { var uri: S3URI; var size: Int64; var sha256: String; var fields: [String: String]; var itemID: String }
        var published: [Published] = []
        for r in results where r.state != .failed {
            for o in r.objects { if let u = S3URI(o.path), let s = o.sha256 { published.append(.init(uri: u, size: o.size, sha256: s, fields: o.fields, itemID: r.itemID)) } }
        }
        guard !published.isEmpty else { return [] }
        let client: S3Client
        do { client = try S3Access.client(ctx.s3) } catch { throw StageError(error) }
        let p = stage.parameters
        let expiry = max(1, min(p["url_expiry"]?.intValue ?? 3600, 604_800))
        var outputs: [OutputInfo] = []
        func put(_ bucket: String, _ key: String, _ text: String, _ type: String) throws(StageError) {
            do { try client.put(bucket: bucket, key: key, body: Array(text.utf8), contentType: type) } catch { throw StageError(error) }
            outputs.append(OutputInfo(path: "s3://\(bucket)/\(key)", size: Int64(text.utf8.count), sha256: SHA256Hasher.hash(text)))
        }
        func root(_ x: Published) -> String {
            if let prop = x.fields["proposal"], x.uri.key.hasPrefix(prop + "/") { return prop + "/" }
            return x.uri.key.contains("/") ? String(x.uri.key[..<x.uri.key.lastIndex(of: "/")!]) + "/" : ""
        }
        // Manifests per (bucket, root).
        let groups = Dictionary(grouping: published) { "\($0.uri.bucket)\u{0}\(root($0))" }
        for k in groups.keys.sorted() {
            let g = groups[k]!.sorted { $0.uri.key < $1.uri.key }
            let bucket = g[0].uri.bucket, base = root(g[0])
            let sums = g.map { "\($0.sha256)  \($0.uri.key.dropFirst(base.count))\n" }.joined()
            try put(bucket, base + Self.manifestName, sums, "text/plain; charset=utf-8")
            let aria = g.map { x in
                "\(client.presignedURL(bucket: bucket, key: x.uri.key, expires: expiry))\n  out=\(x.uri.key.dropFirst(base.count))\n  checksum=sha-256=\(x.sha256)\n"
            }.joined()
            try put(bucket, base + Self.aria2Name, aria, "text/plain; charset=utf-8")
        }
        // README.txt per proposal, sample and experiment directory of the mirror, as in the raw layout.
        if p["readme"]?.boolValue ?? true {
            let readme = ReadmeStage()
            let byBucket = Dictionary(grouping: published.filter { x in ReadmeStage.levelFields.allSatisfy { x.fields[$0] != nil } }) { $0.uri.bucket }
            for bucket in byBucket.keys.sorted() {
                var rctx = ctx
                rctx.outputRoot = "s3://\(bucket)"
                let members = byBucket[bucket]!.map {
                    TaskInput.GroupMember(itemID: $0.itemID, artifact: Artifact(path: $0.uri.description, size: $0.size, mtimeNanoseconds: 0, sha256: $0.sha256), fields: $0.fields)
                }
                for (dir, group) in readme.groups(members, outputRoot: rctx.outputRoot, parameters: [:]) {
                    guard let rel = Path.relative(dir, to: rctx.outputRoot) else { continue }
                    try put(bucket, rel + "/" + ReadmeStage.fileName, ReadmeStage.render(directory: dir, members: group, ctx: rctx), "text/plain; charset=utf-8")
                }
            }
        }
        return outputs
    }
}
