import ArgumentParser

/// A byte count with an optional binary suffix: `4096`, `64K`, `1M`, `16M`.
struct ByteCount: ExpressibleByArgument {
    let bytes: Int

    init(_ bytes: Int) { self.bytes = bytes }

    init?(argument: String) {
        let units: [Character: Int] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30]
        var text = argument.uppercased()
        if text.hasSuffix("IB") { text.removeLast(2) } else if text.hasSuffix("B") { text.removeLast() }
        var multiplier = 1
        if let last = text.last, let unit = units[last] {
            multiplier = unit
            text.removeLast()
        }
        guard let value = Int(text), value >= 0 else { return nil }
        let (bytes, overflow) = value.multipliedReportingOverflow(by: multiplier)
        guard !overflow else { return nil }
        self.bytes = bytes
    }

    var defaultValueDescription: String { bytes % (1 << 10) == 0 ? "\(bytes >> 10)K" : "\(bytes)" }
}

/// A plaintext byte range `START:END`, END exclusive; an omitted START is 0, an omitted END is the end of the file.
struct ByteRange: ExpressibleByArgument {
    let start: Int
    let end: Int?

    init?(argument: String) {
        let parts = argument.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2 else { return nil }
        let start = parts[0].isEmpty ? 0 : Int(parts[0])
        let end = parts[1].isEmpty ? nil : Int(parts[1])
        guard let start, start >= 0, parts[1].isEmpty || (end != nil && end! >= start) else { return nil }
        self.start = start
        self.end = end
    }
}
