import Foundation

/// A model as the models page lists it: how many versions it has and its newest one.
public struct ModelOverview: Sendable, Equatable {
    public var name: String
    public var versions: Int
    public var latestVersion: String
    /// When the newest version was created (RFC 3339, as `list` shows it).
    public var latestCreated: String
}

extension Registry {
    /// Every model that has a version, the one with the newest version first, with its number of versions and its
    /// newest version, from the metadata tables in one query. Unlike ``list(model:where:limit:)`` nothing is checked
    /// against the signed statements: a model's page (``versionPage(model:before:limit:)``) checks each version it shows.
    ///
    /// ```swift
    /// for model in try await registry.modelOverviews() { print(model.name, model.versions, model.latestVersion) }
    /// ```
    public func modelOverviews() async throws(CofferRegistryError) -> [ModelOverview] {
        try await metadata.modelOverviews()
    }
}
