/// The body of every error answer of the HTTP API: `{"error": {"message": "<one line>"}}` (docs/openapi.yaml,
/// `Error`). The server renders it through Hummingbird's `HTTPError`, which writes this shape; clients decode it.
public struct WireError: Sendable, Equatable, Codable {
    public struct Detail: Sendable, Equatable, Codable {
        public var message: String

        public init(message: String) { self.message = message }
    }

    public var error: Detail

    public init(message: String) { error = Detail(message: message) }
}
