public import CofferRegistry
public import Hummingbird

/// A registry error as an HTTP answer: the same one-line message, with the status that fits, so handlers throw
/// registry errors as they come (Hummingbird renders any `HTTPResponseError`).
extension CofferRegistryError: HTTPResponseError {
    public var status: HTTPResponse.Status {
        switch self {
        case .unauthenticated: .unauthorized
        case .refused, .sessionRefused: .forbidden
        case .unknownModel, .unknownVersion, .unknownAlias, .unknownPrincipal, .unknownSession, .noBudget, .unknownUpload: .notFound
        case .erased: .gone
        case .versionExists, .principalExists, .uploadOffset, .uploadRestarted: .conflict
        case .budgetExceeded, .policyViolation: .forbidden
        case .tampered: .unprocessableContent
        case .tooManyUploads: .tooManyRequests
        case .uploadTooLarge: .contentTooLarge
        case .databaseBusy, .registryKeyRetired, .ledgerMoved, .unavailable, .uploadSessionLost: .serviceUnavailable
        case .database, .io: .internalServerError
        default: .badRequest
        }
    }

    public func response(from request: Request, context: some RequestContext) throws -> Response {
        try HTTPError(status, message: description).response(from: request, context: context)
    }

    /// Whether the error is a refusal of who asked (counted in the metrics), not a failure.
    var isRefusal: Bool {
        switch self {
        case .refused, .sessionRefused, .unauthenticated: true
        default: false
        }
    }
}
