import POSIXFiles
import WorkflowSpec

/// Expands a workflow's inputs into items: a walk of each local tree, filtered by the globs, with the
/// hierarchy fields parsed from each path by the input's layout. Sorted, so runs are reproducible.
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
            guard case .local(let root) = input.location else {
                throw .input("input \(input.location) of \(workflow.sourceFile): S3 inputs need the S3 staging stage, which this build of emflow does not have yet; stage the objects to a directory and list that directory")
            }
            let st: FileStatus?
            do { st = try FileStatus.ifExists(path: root) } catch { throw .io(error) }
            guard let st else {
                throw .input("input directory \(root) does not exist (inputs[\(n)].path in \(workflow.sourceFile)); check the path, or create it")
            }
            let prefix = workflow.inputs.count > 1 ? "\(n):" : ""
            var found: [(rel: String, status: FileStatus)] = []
            if st.isRegularFile {
                found.append((Path.lastComponent(of: root), st))
            } else {
                walk(root, rel: "", skip: Set(skip), into: &found, problems: &problems)
            }
            for (rel, fst) in found {
                if !input.include.isEmpty && !input.include.contains(where: { $0.matches(rel) }) { continue }
                if input.exclude.contains(where: { $0.matches(rel) }) { continue }
                let path = st.isRegularFile ? root : Path.join(root, rel)
                guard seen.insert(path).inserted else { continue }
                var fields: [String: String] = [:]
                var problem: String? = nil
                if let layout = input.layout {
                    if let f = layout.match(rel) { fields = f }
                    else { problem = "\(path): its path '\(rel)' does not fit the layout '\(layout)' of inputs[\(n)]; move it into place or adjust the layout" }
                }
                items.append(Item(id: prefix + rel, source: Artifact(path: path, size: fst.size, mtimeNanoseconds: fst.mtimeNanoseconds),
                                  fields: fields, layoutProblem: problem))
            }
        }
        items.sort { $0.id < $1.id }
        return Result(items: items, problems: problems)
    }

    static func walk(_ dir: String, rel: String, skip: Set<String>, into out: inout [(rel: String, status: FileStatus)], problems: inout [String]) {
        let entries: [DirectoryEntry]
        do { entries = try listDirectory(dir) } catch { problems.append(error.description); return }
        for e in entries.sorted(by: { $0.name < $1.name }) {
            if e.name.hasPrefix(AtomicFile.temporaryPrefix) { continue }
            let path = Path.join(dir, e.name)
            if skip.contains(path) { continue }
            let r = rel.isEmpty ? e.name : rel + "/" + e.name
            // Directory symlinks are not followed (no loops); file symlinks are.
            if e.kind == .directory {
                walk(path, rel: r, skip: skip, into: &out, problems: &problems)
                continue
            }
            do {
                let st = try FileStatus.of(path: path)
                if st.isRegularFile { out.append((r, st)) }
                else if st.isDirectory && e.kind == .unknown { walk(path, rel: r, skip: skip, into: &out, problems: &problems) }
            } catch {
                problems.append(error.description)
            }
        }
    }
}
