import CofferCrypto
import CofferTraining
import Foundation
public import NIOSSL

/// A site's life over HTTP: join, then poll, handle, submit until the federation is over.
///
/// A refusal by the coordinator (a one-line body) is logged and the site goes on; so is a task the site refuses (its
/// part in that round ends). Connection failures are retried for ``patience``; after that the site gives up. A failed
/// TLS handshake (an untrusted certificate) is not retried: it ends the site at once.
///
/// ```swift
/// let summary = try await SiteRunner(site: site, coordinator: "http://127.0.0.1:8450").run()
/// ```
public struct SiteRunner: Sendable {
    public let site: FederatedSite
    let client: FederationClient
    /// How long the coordinator may be unreachable before the site gives up.
    public var patience: Duration = .seconds(120)

    /// - Parameters:
    ///   - coordinator: `http://HOST:PORT` or `https://HOST:PORT` of `coffer fl serve`.
    ///   - tls: with https, the TLS configuration (the CA to trust); the system's roots by default.
    ///   - plainHTTPOffLoopback: allow `http` to a coordinator beyond loopback (refused by default).
    public init(
        site: FederatedSite,
        coordinator url: String,
        tls: TLSConfiguration? = nil,
        plainHTTPOffLoopback: Bool = false
    )
        throws(FederatedError)
    {
        self.init(site: site, client: try FederationClient(url: url, tls: tls, plainHTTPOffLoopback: plainHTTPOffLoopback))
    }

    /// With a client made beforehand: a command checks the coordinator's URL before it asks for a passphrase.
    public init(site: FederatedSite, client: FederationClient) {
        self.site = site
        var client = client
        client.maximumAnswer = maximumAnswer(parameters: site.recipe.initialModel().parameterCount)
        self.client = client
    }

    /// Runs until the federation is over; returns the final summary.
    public func run() async throws(FederatedError) -> String {
        let welcome = try await exchange("/v1/fl/join", site.joinRequest(session: try await session()), wait: .seconds(30))
        guard let welcome else { throw .malformedMessage("the coordinator sent no welcome") }
        try site.welcomed(welcome)
        site.log("joined federation \(site.sessionHex.prefix(8)) (\(site.mechanism))")
        while true {
            guard let task = try await exchange("/v1/fl/poll", site.pollRequest(), wait: Coordinator.pollWait + .seconds(30)) else { continue }
            let submission: SignedMessage?
            do throws(FederatedError) {
                // Local training is seconds of CPU: on a thread of its own, so that the site's HTTP exchanges, and a
                // server's other requests when the site shares its process, never wait behind it on the cooperative pool.
                let site = self.site
                submission = try await Offload.run { () throws(FederatedError) -> SignedMessage? in try site.handle(task) }
            } catch {
                site.log("refused a task: \(error.description)")
                continue
            }
            guard let submission else { return site.summary ?? "finished" }
            do throws(FederatedError) {
                _ = try await exchange("/v1/fl/submit", submission, wait: .seconds(60))
            } catch .coordinatorRefused(let reason) {
                site.log("the coordinator refused a submission: \(reason)")
            }
        }
    }

    /// Sends one request, retrying connection failures until ``patience`` runs out. Returns the signed answer, or `nil`
    /// for 204. A 4xx or 5xx answer throws ``FederatedError/coordinatorRefused(_:)`` with the server's line.
    func exchange(_ path: String, _ signed: SignedMessage, wait: Duration) async throws(FederatedError) -> SignedMessage? {
        let answer = try await patiently { [client] () async throws(FederatedError) in try await client.post(path, signed, timeout: wait) }
        switch answer.status {
        case 200: return try SignedMessage(payload: answer.body, headerValue: answer.signature)
        case 204: return nil
        default: throw .coordinatorRefused(Self.line(answer))
        }
    }

    /// The coordinator's session, from `GET /v1/fl/status` (unsigned: a wrong one only makes the join refused, and the
    /// welcome that answers it is signed).
    func session() async throws(FederatedError) -> String {
        let answer = try await patiently { [client] () async throws(FederatedError) in try await client.get("/v1/fl/status", timeout: .seconds(30)) }
        guard answer.status == 200 else { throw .coordinatorRefused(Self.line(answer)) }
        guard let status = try? JSONSerialization.jsonObject(with: Data(answer.body)) as? [String: Any], let session = status["session"] as? String,
            session.count == 32, session.allSatisfy(\.isHexDigit)
        else { throw .malformedMessage("the coordinator's status names no session") }
        return session
    }

    /// Runs `request`, retrying connection failures (not TLS failures: retrying cannot mend them) until ``patience``
    /// runs out, with a backoff.
    private func patiently(_ request: () async throws(FederatedError) -> HTTPAnswer) async throws(FederatedError) -> HTTPAnswer {
        let giveUp = ContinuousClock.now + patience
        var delay = Duration.milliseconds(100)
        while true {
            do throws(FederatedError) {
                return try await request()
            } catch {
                if case .tlsFailed = error { throw error }
                guard ContinuousClock.now < giveUp else { throw error }
                try? await Task.sleep(for: delay)
                delay = min(delay * 2, .seconds(5))
            }
        }
    }

    /// The first line of a refusal's body.
    private static func line(_ answer: HTTPAnswer) -> String {
        String(decoding: answer.body, as: UTF8.self).split(separator: "\n").first.map(String.init) ?? "HTTP \(answer.status)"
    }
}
