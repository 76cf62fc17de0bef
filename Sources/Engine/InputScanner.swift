import POSIXFiles
import S3Stage
import WorkflowSpec

/// Expands a workflow's inputs into items: a walk of each local tree or a listing of each S3 prefix,
/// filtered by the globs, with the hierarchy fields parsed from each relative path by the input's
/// layout. Sorted, so runs are reproducible.
public struct InputScanner {
    public struct Result {
        public var items: [Item]
        /// Paths that could not be read (named, with the reason); the run reports them and goes on.
        public var problems: [String]
    }

    public static func scan(_ workflow: Workflow, skip: [String] = []) throws(EngineError) -> Result {
        var items: [Item] = []
        var problems: [String] = []
        var seen = Set<String>()
        for (n, input) in workflow.inputs.enumerated() {
            let prefix = workflow.inputs.count > 1 ? "\(n):" : ""
            // What the input holds: (path relative to the input, the file or object).
            var found: [(rel: String, artifact: Artifact)] = []
            switch input.location {
            case .s3(let bucket, let keyPrefix):
                for (rel, obj) in try listS3(bucket: bucket, prefix: keyPrefix, settings: workflow.s3, n: n, problems: &problems) {
                    found.append((rel, Artifact(path: "s3://\(bucket)/\(obj.key)", size: obj.size,
                                                mtimeNanoseconds: Int64(obj.lastModified * 1e9), etag: obj.etag)))
                }
            case .local(let root):
                let st: FileStatus?
                do { st = try FileStatus.ifExists(path: root) } catch { throw .io(error) }
                guard let st else {
                    throw .input("input directory \(root) does not exist (inputs[\(n)].path in \(workflow.sourceFile)); check the path, or create it")
                }
                var files: [(rel: String, status: FileStatus)] = []
                if st.isRegularFile {
                    files.append((Path.lastComponent(of: root), st))
                } else {
                    walk(root, rel: "", skip: Set(skip), into: &files, problems: &problems)
                }
                for (rel, fst) in files {
                    found.append((rel, Artifact(path: st.isRegularFile ? root : Path.join(root, rel), size: fst.size, mtimeNanoseconds: fst.mtimeNanoseconds)))
                }
            }
            for (rel, artifact) in found {
                guard let item = makeItem(rel: rel, artifact: artifact, input: input, n: n, prefix: prefix),
                      seen.insert(artifact.path).inserted else { continue }
                items.append(item)
            }
        }
        items.sort { $0.id < $1.id }
        return Result(items: items, problems: problems)
    }

    /// The item for a file or object of input `n`, unless the input's globs leave it out.
    static func makeItem(rel: String, artifact: Artifact, input: InputSpec, n: Int, prefix: String) -> Item? {
        if !input.include.isEmpty && !input.include.contains(where: { $0.matches(rel) }) { return nil }
        if input.exclude.contains(where: { $0.matches(rel) }) { return nil }
        var fields: [String: String] = [:]
        var problem: String? = nil
        if let layout = input.layout {
            if let f = layout.match(rel) { fields = f }
            else { problem = "\(artifact.path): its path '\(rel)' does not fit the layout '\(layout)' of inputs[\(n)]; move it into place or adjust the layout" }
        }
        return Item(id: prefix + rel, source: artifact, fields: fields, layoutProblem: problem)
    }

    /// The inputs' items a page at a time (S3: a listing page; files: `pageSize` of a walk), never
    /// the whole archive in memory: what a backfill of 10^6 objects lists with. Unreadable paths are
    /// counted and the first `keepProblems` named.
    public static func stream(_ workflow: Workflow, skip: [String] = [], pageSize: Int = 1000, keepProblems: Int = 100,
                              _ body: ([Item]) throws(EngineError) -> Void) throws(EngineError) -> (problems: [String], problemCount: Int) {
        var problems: [String] = []
        var problemCount = 0
        func note(_ p: String) { problemCount += 1; if problems.count < keepProblems { problems.append(p) } }
        for (n, input) in workflow.inputs.enumerated() {
            let prefix = workflow.inputs.count > 1 ? "\(n):" : ""
            switch input.location {
            case .s3(let bucket, let keyPrefix):
                var failure: EngineError? = nil
                do {
                    try S3Access.client(workflow.s3).listPages(bucket: bucket, prefix: keyPrefix) { objects, _ in
                        var page: [Item] = []
                        for o in objects where !o.key.hasSuffix("/") {
                            switch ObjectPaths.relativePath(key: o.key, prefix: keyPrefix) {
                            case .success(let rel):
                                let a = Artifact(path: "s3://\(bucket)/\(o.key)", size: o.size, mtimeNanoseconds: Int64(o.lastModified * 1e9), etag: o.etag)
                                if let item = makeItem(rel: rel, artifact: a, input: input, n: n, prefix: prefix) { page.append(item) }
                            case .failure(let e): note("s3://\(bucket)/: \(e)")
                            }
                        }
                        do throws(EngineError) { try body(page) } catch { failure = error; return false }
                        return true
                    }
                } catch { throw .input("inputs[\(n)] s3://\(bucket)/\(keyPrefix): \(error)") }
                if let failure { throw failure }
            case .local(let root):
                let st: FileStatus?
                do { st = try FileStatus.ifExists(path: root) } catch { throw .io(error) }
                guard let st else {
                    throw .input("input directory \(root) does not exist (inputs[\(n)].path in \(workflow.sourceFile)); check the path, or create it")
                }
                var page: [Item] = []
                var failure: EngineError? = nil
                func add(_ rel: String, _ path: String, _ fst: FileStatus) -> Bool {
                    let a = Artifact(path: path, size: fst.size, mtimeNanoseconds: fst.mtimeNanoseconds)
                    if let item = makeItem(rel: rel, artifact: a, input: input, n: n, prefix: prefix) { page.append(item) }
                    if page.count >= pageSize {
                        do throws(EngineError) { try body(page) } catch { failure = error; return false }
                        page.removeAll(keepingCapacity: true)
                    }
                    return true
                }
                if st.isRegularFile {
                    _ = add(Path.lastComponent(of: root), root, st)
                } else {
                    walk(root, rel: "", skip: Set(skip), problem: note) { rel, fst in add(rel, Path.join(root, rel), fst) }
                }
                if let failure { throw failure }
                if !page.isEmpty { try body(page) }
            }
        }
        return (problems, problemCount)
    }

    /// The objects under an S3 prefix with their paths relative to it. Keys no file system can hold
    /// safely, and keys that are also a "directory" of other keys, are problems (named), not items.
    static func listS3(bucket: String, prefix: String, settings: S3Settings, n: Int, problems: inout [String]) throws(EngineError) -> [(String, S3Object)] {
        let objects: [S3Object]
        do { objects = try S3Access.client(settings).list(bucket: bucket, prefix: prefix).objects }
        catch { throw .input("inputs[\(n)] s3://\(bucket)/\(prefix): \(error)") }
        var out: [(String, S3Object)] = []
        for o in objects where !o.key.hasSuffix("/") {
            switch ObjectPaths.relativePath(key: o.key, prefix: prefix) {
            case .success(let rel): out.append((rel, o))
            case .failure(let e): problems.append("s3://\(bucket)/: \(e)")
            }
        }
        let clashes = ObjectPaths.fileDirectoryClashes(out.map(\.0))
        for (rel, o) in out where clashes.contains(rel) {
            problems.append("s3://\(bucket)/\(o.key) is both an object and the prefix of other objects; a directory cannot also be a file, so it was not staged — rename it")
        }
        return out.filter { !clashes.contains($0.0) }
    }

    static func walk(_ dir: String, rel: String, skip: Set<String>, into out: inout [(rel: String, status: FileStatus)], problems: inout [String]) {
        var found: [(rel: String, status: FileStatus)] = []
        var notes: [String] = []
        walk(dir, rel: rel, skip: skip, problem: { notes.append($0) }) { r, st in found.append((r, st)); return true }
        out += found
        problems += notes
    }

    /// Calls `file` for each regular file under `dir` in name order (depth first); it returns false
    /// to stop the walk. Returns false when stopped.
    @discardableResult
    static func walk(_ dir: String, rel: String, skip: Set<String>, problem: (String) -> Void, file: (String, FileStatus) -> Bool) -> Bool {
        let entries: [DirectoryEntry]
        do { entries = try listDirectory(dir) } catch { problem(error.description); return true }
        for e in entries.sorted(by: { $0.name < $1.name }) {
            if e.name.hasPrefix(AtomicFile.temporaryPrefix) { continue }
            let path = Path.join(dir, e.name)
            if skip.contains(path) { continue }
            let r = rel.isEmpty ? e.name : rel + "/" + e.name
            // Directory symlinks are not followed (no loops); file symlinks are.
            if e.kind == .directory {
                if !walk(path, rel: r, skip: skip, problem: problem, file: file) { return false }
                continue
            }
            do {
                let st = try FileStatus.of(path: path)
                if st.isRegularFile { if !file(r, st) { return false } }
                else if st.isDirectory && e.kind == .unknown { if !walk(path, rel: r, skip: skip, problem: problem, file: file) { return false } }
            } catch {
                problem(error.description)
            }
        }
        return true
    }
}
