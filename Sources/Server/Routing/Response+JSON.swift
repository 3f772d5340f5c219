import CofferRegistry
import Hummingbird
import NIOCore

extension Response {
    /// A JSON answer written as every answer of the API is (``WireJSON``: keys sorted).
    static func json(_ value: some Encodable, status: HTTPResponse.Status = .ok) throws -> Response {
        Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: try WireJSON.encode(value))))
    }
}
