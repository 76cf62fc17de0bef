import POSIXFiles
import Catalog
import WorkflowSpec

/// Why a task failed, and whether trying again could help.
public struct StageError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public var retryable: Bool
    public init(_ message: String, retryable: Bool = false) { self.message = message; self.retryable = retryable }
    public init(_ e: POSIXFileError) { message = e.description; retryable = e.isTransient }
    public var description: String { message }
}

/// Errors that stop a whole run before or outside its tasks.
public enum EngineError: Error, Sendable, CustomStringConvertible {
    case spec(WorkflowSpecError)
    case catalog(CatalogError)
    case io(POSIXFileError)
    case input(String)
    case usage(String)
    case interrupted(runID: String)
    /// Another process holds the lock this one needs (a backfill of the same workflow): try later.
    case busy(String)

    public var description: String {
        switch self {
        case .spec(let e): return e.description
        case .catalog(let e): return e.description
        case .io(let e): return e.description
        case .input(let s), .usage(let s), .busy(let s): return s
        case .interrupted(let id): return "run \(id) interrupted; run the same command again to finish it"
        }
    }
}
