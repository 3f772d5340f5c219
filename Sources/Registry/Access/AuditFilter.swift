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
    /// The sessions opened on `model`: their entries (`infer`, `predict`, `session.revoke`, refusals) name only the
    /// session id, so ``including(_:)`` adds them from the session list for the model filter to find.
    public private(set) var sessionIDs: Set<String> = []

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
        if let model, !Self.names(entry.target, model) && !sessionIDs.contains(entry.target) { return false }
        return true
    }

    /// This filter, finding also the entries of those of `sessions` opened on its model (or namespace).
    public func including(_ sessions: [SessionInfo]) -> AuditFilter {
        guard let model else { return self }
        var filter = self
        filter.sessionIDs.formUnion(sessions.filter { Self.names($0.model, model) }.map(\.id))
        return filter
    }

    /// Whether `target` is about `model`: the name, a version or alias of it, or under it when it is a namespace.
    private static func names(_ target: String, _ model: String) -> Bool {
        model.hasSuffix("/")
            ? target.hasPrefix(model)
            : target == model || target.hasPrefix("\(model):") || target.hasPrefix("\(model)@") || target.hasPrefix("\(model) ")
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
