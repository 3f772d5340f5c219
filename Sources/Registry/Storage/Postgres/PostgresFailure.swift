import Foundation
import NIOCore
import NIOPosix
import NIOSSL
import PostgresNIO

#if canImport(Glibc)
import Glibc
#endif

/// What went wrong talking to PostgreSQL, told apart and said in one line.
///
/// postgres-nio's errors print as multi-line debug dumps (the query included); the registry prints
/// `PostgreSQL at HOST:PORT/DB: REASON` instead, with the server's own message when it sent one.
enum PostgresFailure {
    /// SQLSTATE codes the registry acts on (PostgreSQL, Appendix A).
    enum SQLState {
        static let uniqueViolation = "23505"
        static let foreignKeyViolation = "23503"
        static let checkViolation = "23514"
        static let serializationFailure = "40001"
        static let deadlockDetected = "40P01"
        static let raiseException = "P0001"
        static let invalidPassword = "28P01"
        static let invalidAuthorization = "28000"
        static let unknownDatabase = "3D000"
        static let duplicateDatabase = "42P04"
        static let insufficientPrivilege = "42501"
        static let undefinedTable = "42P01"
        static let adminShutdown = "57P01"
        static let cannotConnectNow = "57P03"
    }

    /// The SQLSTATE the server sent with `error`, if it is a server error.
    static func sqlState(_ error: any Error) -> String? {
        guard let error = error as? PSQLError, error.code == .server else { return nil }
        return error.serverInfo?[.sqlState]
    }

    /// The constraint a unique-key violation hit (e.g. `ledger_pkey`: another writer appended record n + 1 first),
    /// `nil` for any other error.
    static func uniqueViolation(_ error: any Error) -> String? {
        guard sqlState(error) == SQLState.uniqueViolation, let error = error as? PSQLError else { return nil }
        return error.serverInfo?[.constraintName] ?? ""
    }

    /// Whether running the whole transaction again may succeed: a serialization failure or a deadlock.
    static func isRetryable(_ error: any Error) -> Bool {
        let state = sqlState(error)
        return state == SQLState.serializationFailure || state == SQLState.deadlockDetected
    }

    /// The registry error for `error`, naming `endpoint`'s engine. Registry errors pass through unchanged.
    ///
    /// Errors of the engine and of the way to it (postgres-nio, NIO, TLS, cancellation) become
    /// ``CofferRegistryError/unavailable(engine:reason:)``; anything else a transaction's body threw becomes
    /// ``CofferRegistryError/database(_:)`` with its description.
    static func translate(_ error: any Error, endpoint: PostgresEndpoint) -> CofferRegistryError {
        if let registryError = error as? CofferRegistryError { return registryError }
        guard isEngineError(error) else { return .database(oneLine("\(error)")) }
        return .unavailable(engine: endpoint.engine, reason: reason(error, sslMode: endpoint.sslMode))
    }

    private static func isEngineError(_ error: any Error) -> Bool {
        switch error {
        case is PSQLError, is PostgresDecodingError, is IOError, is NIOConnectionError, is ChannelError, is NIOSSLError,
            is NIOSSLExtraError, is CancellationError:
            true
        default:
            String(reflecting: type(of: error)).hasSuffix("ConnectionPoolError")
        }
    }

    /// One line saying what `error` means, without the query or any bound value.
    static func reason(_ error: any Error, sslMode: PostgresEndpoint.SSLMode) -> String {
        switch error {
        case let error as PSQLError: return reason(error, sslMode: sslMode)
        case let error as PostgresDecodingError:
            return "cannot decode column \(error.columnName) (\(error.postgresType)) as \(error.targetType)"
        case is CancellationError:
            return "cancelled"
        default:
            return transportReason(error) ?? oneLine("\(error)")
        }
    }

    private static func reason(_ error: PSQLError, sslMode: PostgresEndpoint.SSLMode) -> String {
        switch error.code {
        case .server:
            let message = error.serverInfo?[.message] ?? "server error"
            let state = error.serverInfo?[.sqlState].map { " (SQLSTATE \($0))" } ?? ""
            return oneLine(message) + state
        case .sslUnsupported:
            return "the server does not support TLS (sslmode=\(sslMode.rawValue))"
        case .authMechanismRequiresPassword:
            return "the server asks for a password and none was found (set PGPASSWORD, or add a line for this server to PGPASSFILE or ~/.pgpass)"
        case .unsupportedAuthMechanism:
            return "the server asks for an authentication method Coffer does not support (configure scram-sha-256 or md5 in pg_hba.conf)"
        case .saslError:
            return "SCRAM authentication failed" + (error.underlying.map { ": \(oneLine("\($0)"))" } ?? "")
        case .serverClosedConnection:
            if let underlying = error.underlying, let transport = transportReason(underlying) { return transport }
            return "the server closed the connection"
        case .clientClosedConnection, .uncleanShutdown:
            return "the connection was closed"
        case .poolClosed:
            return "the connection pool is shut down"
        case .queryCancelled:
            return "the query was cancelled"
        case .tooManyParameters:
            return "a query has more than 65535 parameters"
        case .connectionError, .failedToAddSSLHandler, .receivedUnencryptedDataAfterSSLRequest:
            if let underlying = error.underlying, let transport = transportReason(underlying) { return transport }
            return "cannot connect" + (error.underlying.map { ": \(oneLine("\($0)"))" } ?? "")
        default:
            return "protocol error (\(error.code))"
        }
    }

    /// Connection-level causes: refused, timed out, unresolvable host, TLS handshake.
    private static func transportReason(_ error: any Error) -> String? {
        switch error {
        case let error as PSQLError:
            return error.underlying.flatMap(transportReason)
        case let error as IOError:
            return errnoReason(error.errnoCode)
        case let error as NIOConnectionError:
            if error.dnsAError != nil || error.dnsAAAAError != nil, error.connectionErrors.isEmpty {
                return "cannot resolve host \(error.host)"
            }
            if let first = error.connectionErrors.first { return transportReason(first.error) ?? oneLine("\(first.error)") }
            return "cannot connect"
        case let error as ChannelError:
            if case .connectTimeout(let amount) = error { return "connection timed out after \(amount.nanoseconds / 1_000_000_000) s" }
            if case .ioOnClosedChannel = error { return "the connection was closed" }
            return "connection failed (\(error))"
        case let error as NIOSSLError:
            if case .handshakeFailed(let underlying) = error { return "TLS handshake failed: \(tlsReason(underlying))" }
            return "TLS failed: \(oneLine("\(error)"))"
        case let error as NIOSSLExtraError:
            return "TLS failed: \(oneLine("\(error)"))"
        default:
            return nil
        }
    }

    private static func errnoReason(_ code: CInt) -> String {
        switch code {
        case ECONNREFUSED: "connection refused"
        case ETIMEDOUT: "connection timed out"
        case EHOSTUNREACH, ENETUNREACH: "host unreachable"
        case ECONNRESET: "connection reset by the server"
        case EPIPE: "the server closed the connection"
        default: String(cString: strerror(code)).lowercased()
        }
    }

    /// BoringSSL's error stack reduced to its first reason (`CERTIFICATE_VERIFY_FAILED` reads as "certificate verify failed").
    private static func tlsReason(_ error: BoringSSLError) -> String {
        let text = "\(error)"
        if text.contains("CERTIFICATE_VERIFY_FAILED") { return "the server's certificate did not verify" }
        if text.contains("WRONG_VERSION_NUMBER") { return "the server does not speak TLS" }
        return oneLine(text)
    }

    private static func oneLine(_ text: String) -> String {
        text.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }.joined(separator: " ")
    }
}
