public import Foundation

/// Which audit entries `audit` shows: by principal, action, model and time, all given conditions together.
///
/// ```swift
/// let filter = try AuditFilter(principal: "bob", action: "pull", model: "icu/", since: "1h")
/// let entries = try await registry.auditEntries(since: filter.since).filter(filter.matches)
/// ```
public struct AuditFilter: Sendable, Equatable {
    public var principal: String?
    public var action: String?
    /// A model name (its versions, aliases and sessions' targets named after it) or a namespace ending in `/`.
    public var model: String?
    /// An RFC 3339 time, as ``Registry/auditEntries(since:)`` takes it.
    public var since: String?

    /// `since` is an RFC 3339 time or a time before `now`: a positive number and a unit of s, m, h or d (`90m`, `1h`,
    /// `7d`).
    ///
    /// - Throws: ``CofferRegistryError/invalidInput(_:)`` for a `since` that is neither.
    public init(
        principal: String? = nil,
        action: String? = nil,
        model: String? = nil,
        since: String? = nil,
        now: Date = Date()
    )
        throws(CofferRegistryError)
    {
        self.principal = principal
        self.action = action
        self.model = model
        self.since = try since.map { text throws(CofferRegistryError) in try Self.absolute(text, now: now) }
    }

    /// Whether `entry` meets every condition given (the time is left to the query).
    public func matches(_ entry: AuditEntry) -> Bool {
        if let principal, entry.principal != principal { return false }
        if let action, entry.action != action { return false }
        if let model {
            let target = entry.target
            let named =
                model.hasSuffix("/")
                ? target.hasPrefix(model)
                : target == model || target.hasPrefix("\(model):") || target.hasPrefix("\(model)@") || target.hasPrefix("\(model) ")
            if !named { return false }
        }
        return true
    }

    static func absolute(_ text: String, now: Date) throws(CofferRegistryError) -> String {
        let units: [Character: Double] = ["s": 1, "m": 60, "h": 3600, "d": 86400]
        if let unit = text.last.flatMap({ units[$0] }), let value = Double(text.dropLast()), value > 0, value.isFinite {
            return Registry.timestamp(now.addingTimeInterval(-value * unit))
        }
        _ = try Registry.parseTime(text, field: "since")
        return text
    }
}
