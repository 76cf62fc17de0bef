/// Shell quoting for values that reach a job script's command lines.
public enum Shell {
    /// `'…'` with embedded single quotes as `'\''`: bash takes everything inside literally, `$(…)`,
    /// backquotes, `;` and newlines included.
    public static func quote(_ s: String) -> String {
        if !s.isEmpty, s.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "_-./=:,+@%".contains($0)) }) { return s }
        return "'" + s.replacingOccurrences(of: "'", with: "'\\''") + "'"
    }

    /// Characters an `#SBATCH --opt=value` line carries as is: sbatch reads these lines itself (no
    /// shell), splitting on whitespace, so values are limited to a plain set.
    public static func isSbatchSafe(_ s: String) -> Bool {
        !s.isEmpty && s.unicodeScalars.allSatisfy { c in
            (c.value >= 0x30 && c.value <= 0x39) || (c.value >= 0x41 && c.value <= 0x5A) || (c.value >= 0x61 && c.value <= 0x7A) ||
            "_-./=:,+@[]()|&%".unicodeScalars.contains(c)
        }
    }
}

/// One job script: `#SBATCH` options, the site's set-up lines, and the command. Plain and readable
/// (it is kept in the run directory and is what an admin looks at); it holds no secrets — the
/// environment reaches the job through sbatch's default `--export=ALL`, never through the file.
public struct JobScript: Sendable {
    public var comment: [String] = []
    /// sbatch options without the leading `--`, in order (`("array", "0-9%4")`).
    public var options: [(String, String)] = []
    /// Lines run before the command (module loads, `source` of an environment), from the site profile.
    public var setup: [String] = []
    /// Assignments exported to the command, values quoted.
    public var variables: [(String, String)] = []
    /// Shell lines computed from Slurm's variables (already shell text, written by emflow itself).
    public var computed: [String] = []
    /// The command's words; each is quoted.
    public var command: [String] = []
    /// Words after the command that are shell text (e.g. `"$EMFLOW_SLICE"`).
    public var commandTail: [String] = []

    public init() {}

    public struct UnsafeValue: Error, CustomStringConvertible, Sendable {
        public var option: String
        public var value: String
        public var description: String {
            "the sbatch option --\(option) would be '\(value)', which has characters an #SBATCH line cannot carry (spaces, quotes, $, `, \\ or newlines)"
        }
    }

    /// The script text; throws when an option value cannot be written safely.
    public func render() throws(UnsafeValue) -> String {
        var s = "#!/bin/bash\n"
        for c in comment { s += "# " + c.replacingOccurrences(of: "\n", with: " ") + "\n" }
        for (k, v) in options {
            guard Shell.isSbatchSafe(v), Shell.isSbatchSafe(k) else { throw UnsafeValue(option: k, value: v) }
            s += "#SBATCH --\(k)=\(v)\n"
        }
        s += "\nset -u\n"
        for l in setup { s += l + "\n" }
        for (k, v) in variables { s += "export \(k)=\(Shell.quote(v))\n" }
        for l in computed { s += l + "\n" }
        s += "exec " + (command.map(Shell.quote) + commandTail).joined(separator: " ") + "\n"
        return s
    }
}

/// How a stage's items are packed into array tasks ("slices") and arrays.
public struct Packing: Sendable, Equatable, Codable {
    /// Items per array task.
    public var batch: Int
    /// Array tasks in all.
    public var slices: Int
    /// Arrays to submit: slice offset and task count (count ≤ MaxArraySize).
    public var arrays: [Part]
    public struct Part: Sendable, Equatable, Codable {
        public var offset: Int
        public var count: Int
        public init(offset: Int, count: Int) { self.offset = offset; self.count = count }
    }

    /// - items: tasks of the stage; batch: the spec's `batch:` (nil: choose);
    ///   perItemSeconds: expected run time of one item; timeLimitSeconds: the job's `time:`;
    ///   throttle: array tasks running at once; maxArraySize from `scontrol show config`.
    /// Chosen batches give each array task between `minTaskSeconds` and `targetTaskSeconds` of
    /// work (a task costs the scheduler the same whether it runs 1 s or 1 h), while keeping about
    /// `throttle` tasks so the cluster's parallelism is used, and never more than `maxTasks`.
    public static func plan(items: Int, batch: Int?, perItemSeconds: Double, timeLimitSeconds: Double?, throttle: Int,
                            maxArraySize: Int, minTaskSeconds: Double = 10, targetTaskSeconds: Double = 600,
                            maxTasks: Int = 20_000) -> Packing {
        guard items > 0 else { return Packing(batch: batch ?? 1, slices: 0, arrays: []) }
        var b: Int
        if let batch { b = batch } else {
            let per = max(perItemSeconds, 0.001)
            var target = targetTaskSeconds
            if let t = timeLimitSeconds { target = min(target, t / 2) }   // half the limit: room for slow items
            let upper = max(1, Int(target / per))
            let lower = max(1, Int((minTaskSeconds / per).rounded(.up)))
            let spread = (items + max(throttle, 1) - 1) / max(throttle, 1)
            b = min(max(spread, lower), upper)
            b = max(b, (items + maxTasks - 1) / maxTasks)
        }
        b = max(1, min(b, items))
        let slices = (items + b - 1) / b
        let m = max(1, maxArraySize)
        var parts: [Part] = []
        var off = 0
        while off < slices { let n = min(m, slices - off); parts.append(Part(offset: off, count: n)); off += n }
        return Packing(batch: b, slices: slices, arrays: parts)
    }

    /// Seconds in a Slurm time (`minutes`, `MM:SS`, `HH:MM:SS`, `D-HH`, `D-HH:MM`, `D-HH:MM:SS`).
    public static func seconds(slurmTime s: String) -> Double? {
        var days = 0.0
        var rest = Substring(s)
        if let dash = s.firstIndex(of: "-") {
            guard let d = Double(s[..<dash]) else { return nil }
            days = d; rest = s[s.index(after: dash)...]
            let p = rest.split(separator: ":").compactMap { Double($0) }
            switch p.count {
            case 1: return days * 86400 + p[0] * 3600
            case 2: return days * 86400 + p[0] * 3600 + p[1] * 60
            case 3: return days * 86400 + p[0] * 3600 + p[1] * 60 + p[2]
            default: return nil
            }
        }
        let p = rest.split(separator: ":").compactMap { Double($0) }
        switch p.count {
        case 1: return p[0] * 60
        case 2: return p[0] * 60 + p[1]
        case 3: return p[0] * 3600 + p[1] * 60 + p[2]
        default: return nil
        }
    }
}
