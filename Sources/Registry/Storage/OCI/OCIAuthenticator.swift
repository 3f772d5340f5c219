import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1

/// Answers an OCI registry's `WWW-Authenticate` challenges: Basic with the auth file's credentials, or Bearer through
/// distribution's token flow (`GET REALM?service=SERVICE&scope=SCOPE`, with Basic credentials when there are any),
/// keeping each scope's token until shortly before it expires.
///
/// The registry's scheme is learnt once from `GET /v2/` and every request then carries its `Authorization` from the
/// start, so that a request whose body is a stream (which cannot be sent twice) is never answered 401 for lack of it.
actor OCIAuthenticator {
    /// What the registry asked for at `GET /v2/`.
    enum Scheme: Equatable {
        case anonymous
        case basic
        case bearer(realm: String, service: String?)
    }

    struct Token {
        var value: String
        var expires: ContinuousClock.Instant
    }

    private let endpoint: OCIEndpoint
    private let credentials: OCICredentials?
    private let http: HTTPClient
    private var scheme: Scheme?
    private var tokens: [String: Token] = [:]

    init(endpoint: OCIEndpoint, credentials: OCICredentials?, http: HTTPClient) {
        self.endpoint = endpoint
        self.credentials = credentials
        self.http = http
    }

    /// The `Authorization` header for a request needing `scope` (`repository:REPO:pull`), or nil when none is needed.
    func authorization(scope: String) async throws(CofferRegistryError) -> String? {
        let scheme = try await learnScheme()
        switch scheme {
        case .anonymous:
            return nil
        case .basic:
            return try basicHeader()
        case .bearer(let realm, let service):
            if let token = tokens[scope], token.expires > .now { return "Bearer \(token.value)" }
            return "Bearer \(try await fetchToken(realm: realm, service: service, scope: scope))"
        }
    }

    /// Takes in a 401's challenge: forgets the token that was refused and adopts the scheme and realm the registry now
    /// names. Returns whether sending the request again could succeed (false when the same credentials were just refused).
    func refused(challenge: String?, scope: String, sent: String?) -> Bool {
        guard let challenge = challenge.flatMap(Self.parse) else { return false }
        tokens[scope] = nil
        let before = scheme
        switch challenge.scheme {
        case "basic":
            scheme = .basic
            // Basic credentials that were sent and refused will be refused again.
            return before != .basic || sent == nil
        case "bearer":
            guard let realm = challenge.parameters["realm"] else { return false }
            scheme = .bearer(realm: realm, service: challenge.parameters["service"])
            return true
        default:
            return false
        }
    }

    private func learnScheme() async throws(CofferRegistryError) -> Scheme {
        if let scheme { return scheme }
        var request = HTTPClientRequest(url: "\(endpoint.baseURL)/v2/")
        request.method = .GET
        let response: HTTPClientResponse
        do {
            response = try await http.execute(request, timeout: .seconds(30))
        } catch {
            throw .unavailable(engine: endpoint.name, reason: OCIDistributionClient.describe(error, endpoint: endpoint))
        }
        _ = try? await response.body.collect(upTo: 1 << 16)
        let learnt: Scheme
        switch response.status.code {
        case 200:
            learnt = .anonymous
        case 401:
            guard let challenge = response.headers.first(name: "WWW-Authenticate").flatMap(Self.parse) else {
                throw .unavailable(engine: endpoint.name, reason: "authentication required (401) without a WWW-Authenticate challenge")
            }
            switch challenge.scheme {
            case "basic":
                learnt = .basic
            case "bearer":
                guard let realm = challenge.parameters["realm"] else {
                    throw .unavailable(engine: endpoint.name, reason: "a Bearer challenge without a realm")
                }
                learnt = .bearer(realm: realm, service: challenge.parameters["service"])
            default:
                throw .unavailable(engine: endpoint.name, reason: "unsupported authentication scheme '\(challenge.scheme)'")
            }
        case 404:
            throw .unavailable(engine: endpoint.name, reason: "GET /v2/ answered 404: not an OCI distribution registry")
        default:
            throw .unavailable(engine: endpoint.name, reason: "GET /v2/ answered \(response.status.code)")
        }
        scheme = learnt
        return learnt
    }

    private func basicHeader() throws(CofferRegistryError) -> String {
        guard let credentials else { throw missingCredentials() }
        return "Basic " + Data("\(credentials.username):\(credentials.password)".utf8).base64EncodedString()
    }

    private func missingCredentials() -> CofferRegistryError {
        .unavailable(
            engine: endpoint.name,
            reason:
                "authentication required (401) and no credentials for \(endpoint.authority) in the containers auth file (REGISTRY_AUTH_FILE; skopeo login writes one)"
        )
    }

    /// distribution's token flow (docker/distribution docs/spec/auth/token.md).
    private func fetchToken(realm: String, service: String?, scope: String) async throws(CofferRegistryError) -> String {
        guard var components = URLComponents(string: realm), let realmScheme = components.scheme, ["http", "https"].contains(realmScheme) else {
            throw .unavailable(engine: endpoint.name, reason: "the Bearer realm '\(realm)' is not an http(s) URL")
        }
        // Credentials sent in clear text to a token service would undo the registry's TLS.
        if realmScheme == "http", endpoint.scheme == "https", credentials != nil {
            throw .unavailable(engine: endpoint.name, reason: "the registry sends its credentials to a plain-HTTP token service \(realm); refused")
        }
        var query = components.queryItems ?? []
        if let service { query.append(URLQueryItem(name: "service", value: service)) }
        query.append(URLQueryItem(name: "scope", value: scope))
        components.queryItems = query
        guard let url = components.string else { throw .unavailable(engine: endpoint.name, reason: "bad Bearer realm '\(realm)'") }
        var request = HTTPClientRequest(url: url)
        request.method = .GET
        if credentials != nil { request.headers.add(name: "Authorization", value: try basicHeader()) }
        let started = ContinuousClock.now
        let body: ByteBuffer
        let status: UInt
        do {
            let response = try await http.execute(request, timeout: .seconds(30))
            status = response.status.code
            body = try await response.body.collect(upTo: 1 << 20)
        } catch {
            throw .unavailable(engine: endpoint.name, reason: "token service \(realm): \(OCIDistributionClient.describe(error, endpoint: endpoint))")
        }
        guard status == 200 else {
            let what = status == 401 || status == 403 ? "authentication failed" : "token request failed"
            throw .unavailable(engine: endpoint.name, reason: "\(what) (\(status) from the token service)")
        }
        guard let object = (try? JSONSerialization.jsonObject(with: Data(body.readableBytesView))) as? [String: Any],
            let token = (object["token"] as? String) ?? (object["access_token"] as? String), !token.isEmpty
        else {
            throw .unavailable(engine: endpoint.name, reason: "the token service answered without a token")
        }
        // The token spec's default lifetime is 60 s; renew 10 s early so a token never expires in flight.
        let lifetime = (object["expires_in"] as? Int).map { max($0, 1) } ?? 60
        tokens[scope] = Token(value: token, expires: started + .seconds(max(lifetime - 10, 1)))
        return token
    }

    /// A parsed challenge: `Bearer realm="https://auth/token",service="registry",scope="repository:x:pull"`.
    struct Challenge: Equatable {
        var scheme: String
        var parameters: [String: String]
    }

    /// Parses the first challenge of a `WWW-Authenticate` value (RFC 9110 §11.6.1: auth-params, quoted or not).
    static func parse(_ header: String) -> Challenge? {
        let characters = Array(header.unicodeScalars)
        var i = 0
        func skipSpaces() { while i < characters.count, characters[i] == " " || characters[i] == "\t" { i += 1 } }
        func token() -> String {
            var out = ""
            while i < characters.count, !" \t,=\"".unicodeScalars.contains(characters[i]) {
                out.unicodeScalars.append(characters[i])
                i += 1
            }
            return out
        }
        skipSpaces()
        let scheme = token().lowercased()
        guard !scheme.isEmpty else { return nil }
        var parameters: [String: String] = [:]
        while i < characters.count {
            skipSpaces()
            if i < characters.count, characters[i] == "," {
                i += 1
                continue
            }
            let name = token().lowercased()
            skipSpaces()
            guard !name.isEmpty, i < characters.count, characters[i] == "=" else { break }
            i += 1
            skipSpaces()
            var value = ""
            if i < characters.count, characters[i] == "\"" {
                i += 1
                while i < characters.count, characters[i] != "\"" {
                    if characters[i] == "\\", i + 1 < characters.count { i += 1 }
                    value.unicodeScalars.append(characters[i])
                    i += 1
                }
                i += 1
            } else {
                value = token()
            }
            parameters[name] = value
        }
        return Challenge(scheme: scheme, parameters: parameters)
    }
}
