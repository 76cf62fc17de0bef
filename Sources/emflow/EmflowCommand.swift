import ArgumentParser
import Foundation
import Engine

@main
struct Emflow: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "emflow",
        abstract: "Batch workflows for electron-microscopy data: ingest, checksum, README context, catalog.",
        discussion: """
            Start with a workflow spec (see workflows/ and docs/spec.md):
              emflow validate workflows/checksum.yaml     check a spec without running it
              emflow run workflows/checksum.yaml          run it (again: finishes what is left, skips what is done)
              emflow run --dry-run workflows/checksum.yaml   list what would run and what is done
              emflow status --spec workflows/checksum.yaml   runs and their per-stage counts
              emflow catalog find --sha256 HEX --spec ...     which files have this content

            Exit codes: 0 all done; 1 some items failed (the others were done); 2 bad usage or spec;
            3 environment problem (missing input, unwritable workspace, catalog); 75 another backfill of
            the workflow is running (try later); 130 interrupted.
            """,
        version: EmflowVersion.current,
        subcommands: [RunCommand.self, BackfillCommand.self, ReprocessCommand.self, DiffCommand.self, ReportCommand.self, ScheduleCommand.self, ValidateCommand.self, StatusCommand.self, LogsCommand.self, CancelCommand.self, WorkerCommand.self, CatalogCommand.self, ConvertCommand.self, MappingsCommand.self,
                      ChecksumCommand.self, InspectCommand.self, S3Command.self, StagesCommand.self, VersionCommand.self])

    /// A usage error (an unknown option, a bad value, a failed validation) exits 2, as documented,
    /// rather than ArgumentParser's 64.
    static func main() {
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch {
            guard exitCode(for: error) == .validationFailure else { exit(withError: error) }
            printError(fullMessage(for: error))
            Foundation.exit(Exit.usage)
        }
    }
}

/// Exit codes, documented in `emflow --help` and README.
enum Exit {
    static let itemsFailed: Int32 = 1
    static let usage: Int32 = 2
    static let environment: Int32 = 3
    static let interrupted: Int32 = 130
    /// EX_TEMPFAIL: another backfill of the workflow holds its lock; nothing was done.
    static let busy: Int32 = 75
}

/// The one place errors become messages and exit codes.
func failing<T>(_ body: () throws -> T) throws -> T {
    do { return try body() }
    catch let e as ExitCode { throw e }
    catch let e as EngineError {
        printError("error: \(e)")
        switch e {
        case .spec, .usage: throw ExitCode(Exit.usage)
        case .interrupted: throw ExitCode(Exit.interrupted)
        case .busy: throw ExitCode(Exit.busy)
        default: throw ExitCode(Exit.environment)
        }
    }
    catch let e as ValidationError { throw e }
    catch {
        printError("error: \(error)")
        throw ExitCode(Exit.environment)
    }
}

func printError(_ s: String) { FileHandle.standardError.write(Data((s + "\n").utf8)) }

func printJSON<T: Encodable>(_ value: T) throws {
    let e = JSONEncoder()
    e.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    print(String(decoding: try e.encode(value), as: UTF8.self))
}

struct VersionCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "version", abstract: "Print emflow's version.")
    func run() { print("emflow \(EmflowVersion.current)") }
}
