/// One problem in a workflow spec, located in its file.
public struct SpecIssue: Sendable, Equatable, CustomStringConvertible {
    public let file: String
    public let line: Int
    public let column: Int
    public let message: String
    public let hint: String?

    public init(file: String, line: Int, column: Int, message: String, hint: String? = nil) {
        self.file = file; self.line = line; self.column = column; self.message = message; self.hint = hint
    }

    public var description: String {
        var s = "\(file):\(line):\(column): error: \(message)"
        if let hint { s += "\n    hint: \(hint)" }
        return s
    }
}

/// Every problem found in a spec; a spec with any problem is not run.
public struct WorkflowSpecError: Error, Sendable, CustomStringConvertible {
    public let issues: [SpecIssue]
    public init(_ issues: [SpecIssue]) { self.issues = issues }
    public var description: String { issues.map(\.description).joined(separator: "\n") }
}
