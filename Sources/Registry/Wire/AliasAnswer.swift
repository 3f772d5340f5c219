/// `PUT /v1/alias?ref=NAME@ALIAS`'s body: the version the alias is to point at.
public struct SetAliasRequest: Sendable, Equatable, Codable {
    public var version: String

    public init(version: String) { self.version = version }
}

/// `PUT /v1/alias`'s answer: where the alias points now.
public struct AliasAnswer: Sendable, Equatable, Codable {
    public var model: String
    public var alias: String
    public var version: String

    public init(model: String, alias: String, version: String) {
        self.model = model
        self.alias = alias
        self.version = version
    }
}
