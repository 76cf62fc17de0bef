/// The physical quantities mappings convert, and the unit emflow writes for each (SI, spelled as
/// pint and the NXem validator read it).
public enum Dimension: String, Sendable, CaseIterable, Codable {
    case voltage, length, time, current, angle, pressure, magnification

    /// The unit written to NeXus files.
    public var siUnit: String? {
        switch self {
        case .voltage: "V"
        case .length: "m"
        case .time: "s"
        case .current: "A"
        case .angle: "rad"
        case .pressure: "Pa"
        case .magnification: nil   // NX_DIMENSIONLESS: no @units
        }
    }
}

/// A small unit table: SI prefixes on V, m, s, A, rad, Pa; Å, degrees, minutes, bar/mbar/Torr;
/// magnification written as `x`, `X`, `kx`, `K X`. Unknown units are errors, never copied.
public enum Units {
    public struct Unit: Sendable, Equatable { public let dimension: Dimension; public let factor: Double }

    static let bases: [String: Unit] = [
        "V": .init(dimension: .voltage, factor: 1), "volt": .init(dimension: .voltage, factor: 1),
        "m": .init(dimension: .length, factor: 1), "meter": .init(dimension: .length, factor: 1), "metre": .init(dimension: .length, factor: 1),
        "s": .init(dimension: .time, factor: 1), "sec": .init(dimension: .time, factor: 1), "second": .init(dimension: .time, factor: 1),
        "A": .init(dimension: .current, factor: 1), "amp": .init(dimension: .current, factor: 1),
        "rad": .init(dimension: .angle, factor: 1),
        "Pa": .init(dimension: .pressure, factor: 1),
    ]

    static let specials: [String: Unit] = [
        "Å": .init(dimension: .length, factor: 1e-10),   // Swift equates U+00C5 and U+212B
        "angstrom": .init(dimension: .length, factor: 1e-10), "A°": .init(dimension: .length, factor: 1e-10),
        "micron": .init(dimension: .length, factor: 1e-6), "microns": .init(dimension: .length, factor: 1e-6),
        "min": .init(dimension: .time, factor: 60), "h": .init(dimension: .time, factor: 3600),
        "deg": .init(dimension: .angle, factor: Double.pi / 180), "°": .init(dimension: .angle, factor: Double.pi / 180),
        "degree": .init(dimension: .angle, factor: Double.pi / 180), "degrees": .init(dimension: .angle, factor: Double.pi / 180),
        "mrad": .init(dimension: .angle, factor: 1e-3), "µrad": .init(dimension: .angle, factor: 1e-6),
        "bar": .init(dimension: .pressure, factor: 1e5), "mbar": .init(dimension: .pressure, factor: 100),
        "Torr": .init(dimension: .pressure, factor: 133.322368), "torr": .init(dimension: .pressure, factor: 133.322368),
        "x": .init(dimension: .magnification, factor: 1), "X": .init(dimension: .magnification, factor: 1),
        "kx": .init(dimension: .magnification, factor: 1e3), "kX": .init(dimension: .magnification, factor: 1e3),
        "KX": .init(dimension: .magnification, factor: 1e3), "K X": .init(dimension: .magnification, factor: 1e3),
        "k X": .init(dimension: .magnification, factor: 1e3), "Kx": .init(dimension: .magnification, factor: 1e3),
        "M X": .init(dimension: .magnification, factor: 1e6), "MX": .init(dimension: .magnification, factor: 1e6),
        "Mx": .init(dimension: .magnification, factor: 1e6),
        "1": .init(dimension: .magnification, factor: 1),
    ]

    static let prefixes: [String: Double] = [
        "G": 1e9, "M": 1e6, "k": 1e3, "c": 1e-2, "m": 1e-3, "µ": 1e-6, "μ": 1e-6, "u": 1e-6, "n": 1e-9, "p": 1e-12, "f": 1e-15,
    ]

    /// The unit for a symbol (`kV`, `µm`, `K X`, `deg`), or nil if unknown.
    public static func unit(_ symbol: String) -> Unit? {
        let s = symbol.trimmingCharacters(in: .whitespaces)
        if let u = specials[s] ?? bases[s] { return u }
        guard let first = s.first, s.count >= 2 else { return nil }
        let rest = String(s.dropFirst())
        if let p = prefixes[String(first)], let b = bases[rest] { return .init(dimension: b.dimension, factor: b.factor * p) }
        return nil
    }

    public struct ConversionError: Error, CustomStringConvertible, Sendable {
        public let message: String
        public var description: String { message }
    }

    /// `value` in `unit` expressed in the dimension's SI unit.
    public static func toSI(_ value: Double, unit symbol: String, expecting dim: Dimension) throws(ConversionError) -> Double {
        guard let u = unit(symbol) else {
            throw ConversionError(message: "unknown unit '\(symbol)' (known: V, m, s, A, rad, Pa with SI prefixes, Å, deg, mrad, min, mbar, Torr, x/kx for magnification)")
        }
        guard u.dimension == dim else { throw ConversionError(message: "unit '\(symbol)' is a \(u.dimension.rawValue), not a \(dim.rawValue)") }
        return value * u.factor
    }

    /// Splits "5.00 kV", "10.00 K X", "8.5mm", "1.2e-3 mbar" into number and unit text.
    public static func splitQuantity(_ text: String) -> (Double, String)? {
        let s = text.trimmingCharacters(in: .whitespaces)
        var end = s.startIndex
        var sawDigit = false
        var i = s.startIndex
        while i < s.endIndex {
            let c = s[i]
            if c.isASCII && c.isNumber { sawDigit = true; end = s.index(after: i) }
            else if c == "." || c == "+" || c == "-" { end = s.index(after: i) }
            else if (c == "e" || c == "E"), sawDigit, s.index(after: i) < s.endIndex,
                    let n = s[s.index(after: i)...].first, n.isNumber || n == "-" || n == "+" { end = s.index(after: i) }
            else { break }
            i = s.index(after: i)
        }
        guard sawDigit, let v = Double(s[..<end]) else { return nil }
        return (v, s[end...].trimmingCharacters(in: .whitespaces))
    }
}

import Foundation
