import CofferTraining
import Foundation
import Hummingbird
import HummingbirdTesting
import Logging
import Testing

@testable import CofferCrypto
@testable import CofferFederated

/// The coordinator's real Hummingbird application on a loopback port, with sites talking to it over HTTP.
struct HTTPFederationTests {
    static func configuration(_ edit: (inout FederationConfiguration) -> Void = { _ in }) -> FederationConfiguration {
        var c = FederationConfiguration()
        c.rounds = 2
        c.clipRange = 2
        c.joinTimeout = 30
        c.trainTimeout = 60
        c.stageTimeout = 30
        edit(&c)
        return c
    }

    static var quiet: Logger {
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        return logger
    }

    /// Runs `coordinator` and one `SiteRunner` per site against a live server; returns the records and each site's
    /// summary or error.
    static func federate(
        _ coordinator: Coordinator,
        sites: [FederatedSite]
    ) async throws -> (records: [RoundRecord], outcomes: [Result<String, FederatedError>]) {
        let app = buildFederationApplication(coordinator: coordinator, host: "127.0.0.1", port: 0, logger: quiet)
        return try await app.test(.live) { client in
            let url = "http://127.0.0.1:\(client.port!)"
            async let records = coordinator.run()
            let outcomes = await withTaskGroup(of: (Int, Result<String, FederatedError>).self) { group in
                for (i, site) in sites.enumerated() {
                    group.addTask {
                        do throws(FederatedError) {
                            var runner = try SiteRunner(site: site, coordinator: url)
                            runner.patience = .seconds(5)
                            return (i, .success(try await runner.run()))
                        } catch {
                            return (i, .failure(error))
                        }
                    }
                }
                var out = [Result<String, FederatedError>](repeating: .failure(.io("not run")), count: sites.count)
                for await (i, result) in group { out[i] = result }
                return out
            }
            return (try await records, outcomes)
        }
    }

    @Test func threeSitesFederateOverHTTPOnLoopback() async throws {
        let fixture = try FederationFixture(sites: 3, rowsPerSite: 400)
        let core = try fixture.core(Self.configuration())
        let sites = try (0..<3).map { try fixture.site($0, rounds: 2) }
        let (records, outcomes) = try await Self.federate(Coordinator(core: core), sites: sites)
        #expect(records.map(\.outcome) == ["ok", "ok", "ok"])
        for outcome in outcomes { #expect((try? outcome.get()) == "2 rounds, 2 aggregated") }
        // Every site ends with the coordinator's final model.
        for site in sites { #expect(site.latestModel.map(ModelVector.flatten) == core.global) }
    }

    @Test func aSiteThatNeverAnswersTimesOutAndTheRoundGoesOnWithoutIt() async throws {
        let fixture = try FederationFixture(sites: 4, rowsPerSite: 300)
        let core = try fixture.core(
            Self.configuration {
                // Long enough for the answering sites to train in a debug build on 2 busy cores (3 s was not), and for their
                // later stages while the rest of the suite holds the cooperative pool (30 s was not, once, in CI).
                $0.trainTimeout = 10
                $0.stageTimeout = 120
                $0.rounds = 1
            }
        )
        let lines = LogLines()
        core.log = { lines.append($0) }
        // Site 3 joins, then never answers a task.
        let silent = try fixture.site(3, rounds: 1)
        try silent.welcomed(try core.join(silent.joinRequest(session: core.sessionHex)))
        let sites = try (0..<3).map { try fixture.site($0, rounds: 1) }
        let (records, _) = try await Self.federate(Coordinator(core: core), sites: sites)
        #expect(records.map(\.outcome) == ["ok", "ok"])
        #expect(records[1].participants.count == 3 && !records[1].participants.contains(silent.keyID))
        #expect(lines.all.contains { $0 == "round 0: no advertise answer within 10 s from \(silent.keyID)" }, "\(lines.all)")
    }

    @Test func twoSilentSitesOfFourAbortTheRoundAndNothingIsAggregated() async throws {
        let fixture = try FederationFixture(sites: 4, rowsPerSite: 300)
        var configuration = Self.configuration {
            // Long enough for the two answering sites to train on a loaded machine: at 2 s, fewer than 2 of 4 answered
            // once locally, and the reason named another count.
            $0.trainTimeout = 10
            $0.rounds = 1
        }
        configuration.standardisation = PublicStandardisation(means: [0, 0, 0, 0, 0], standardDeviations: [1, 1, 1, 1, 1])
        let core = try fixture.core(configuration)
        for i in 2..<4 {
            let silent = try fixture.site(i, rounds: 1)
            try silent.welcomed(try core.join(silent.joinRequest(session: core.sessionHex)))
        }
        let sites = try (0..<2).map { try fixture.site($0, rounds: 1) }
        let rounds = LogLines()
        let (records, outcomes) = try await Self.federate(Coordinator(core: core) { rounds.append($0.outcome) }, sites: sites)
        #expect(records.map(\.outcome) == ["aborted"])
        #expect(
            records[0].reason?.hasPrefix("round 1 aborted: only 2 of 4 sites answered the advertise stage, the threshold is 3") == true,
            "\(records[0].reason ?? "no reason")"
        )
        #expect(core.global == ModelVector.flatten(fixture.recipe.initialModel()))
        #expect(rounds.all == ["aborted"])
        for outcome in outcomes { #expect((try? outcome.get()) == "1 rounds, 0 aggregated") }
    }

    @Test func routesRefuseUnsignedStaleAndMismatchedRequestsWithOneLine() async throws {
        let fixture = try FederationFixture(sites: 3, rowsPerSite: 200)
        let core = try fixture.core(Self.configuration())
        let logged = LogLines()
        let router = buildFederationRouter(coordinator: Coordinator(core: core), maximumBody: 1 << 20, logger: logged.logger)
        let site = try fixture.site(0)
        let join = site.joinRequest(session: core.sessionHex)
        try await Application(router: router).test(.router) { client in
            /// POSTs `message` with its signature header, as a site does.
            func post(_ uri: String, _ message: SignedMessage, _ check: (TestResponse) throws -> Void) async throws {
                let headers: HTTPFields = [.init(SignedMessage.header)!: message.headerValue]
                try check(try await client.execute(uri: uri, method: .post, headers: headers, body: ByteBuffer(bytes: message.payload)) { $0 })
            }
            try await client.execute(uri: "/v1/fl/join", method: .post, body: ByteBuffer(bytes: join.payload)) { response in
                #expect(response.status == .unauthorized)
                #expect(String(buffer: response.body) == "signature does not verify: the request has no Coffer-Signature header\n")
            }
            var tampered = join
            tampered.payload[tampered.payload.count - 2] ^= 0x01
            try await post("/v1/fl/join", tampered) { response in
                #expect(response.status == .unauthorized)
                #expect(String(buffer: response.body).hasSuffix("was not signed by it (or was altered)\n"))
            }
            try await post("/v1/fl/join", join) { response in
                #expect(response.status == .ok)
                let welcome = try SignedMessage(
                    payload: Array(response.body.readableBytesView),
                    headerValue: response.headers[.init(SignedMessage.header)!]
                )
                try welcome.verify(by: fixture.coordinator.publicIdentity)
            }
            // A join signed for another federation (recorded, and replayed here): 409, and the site is not counted twice
            // nor the other one admitted (helper-47: joins named no session).
            let elsewhere = String(repeating: "ab", count: 16)
            try await post("/v1/fl/join", try fixture.site(1).joinRequest(session: elsewhere)) { response in
                #expect(response.status == .conflict)
                #expect(
                    String(buffer: response.body)
                        == "replayed or duplicate message: a join for another session than this federation's \(core.sessionHex) (GET /v1/fl/status names it)\n"
                )
            }
            // A site with other settings: 409 and the reason.
            var other = fixture.recipe.recipe
            other.epochs = 3
            let mismatched = try FederatedSite(
                identity: UnlockedIdentity(try Identity.generate(name: "x").withSameKeys(as: fixture.sites[1])),
                coordinator: fixture.coordinator.publicIdentity,
                recipe: try FederatedRecipe(other),
                data: try LocalData(path: fixture.paths[1], recipe: try FederatedRecipe(other)),
                rounds: 2
            )
            let request = mismatched.joinRequest(session: core.sessionHex)
            try await post("/v1/fl/join", request) { response in
                #expect(response.status == .conflict)
                let line = String(buffer: response.body)
                #expect(line.hasPrefix("recipe mismatch: site \(mismatched.keyID) has recipe ") && line.filter { $0 == "\n" }.count == 1)
            }
            // A submission before any round: stale.
            var submission = Submission(session: core.sessionHex, site: site.keyID, round: 7, stage: .advertise)
            submission.maskKey = Base64Bytes([1])
            let signed = SignedMessage.sign(MessageCoding.encode(submission, as: .binary), by: fixture.sites[0].identity)
            try await post("/v1/fl/submit", signed) { response in
                #expect(response.status == .conflict)
                #expect(String(buffer: response.body) == "site \(site.keyID) sent a message for round 7, the current round is 0\n")
            }
            // A site's own text in a refusal (here a site field naming another site, with terminal controls in it) is
            // logged with its controls escaped: an enrolled site cannot redraw the operator's terminal.
            let hostile = Submission(session: core.sessionHex, site: "x\u{1B}[2J\u{202E}y", round: 0, stage: .advertise)
            let sideways = SignedMessage.sign(MessageCoding.encode(hostile, as: .binary), by: fixture.sites[0].identity)
            try await post("/v1/fl/submit", sideways) { response in
                #expect(response.status == .unauthorized)
            }
            let refusal = try #require(logged.all.last)
            #expect(refusal == "refused submission: signature does not verify: a submission for site x\\u001b[2J\\u202ey signed by \(site.keyID)")
            #expect(!logged.all.joined().unicodeScalars.contains { $0.value == 0x1B || $0.value == 0x202E }, "\(logged.all)")
            // Bodies are read before their signature is checked: one over the limit is refused unread.
            try await client.execute(uri: "/v1/fl/submit", method: .post, body: ByteBuffer(repeating: 0x41, count: (1 << 20) + 1)) { response in
                #expect(response.status == .contentTooLarge)
                #expect(String(buffer: response.body).contains("the request body is over 1048576 bytes"))
            }
            #expect(maximumBody(parameters: 100_998) == 1_339_466)
            try await client.execute(uri: "/v1/fl/status", method: .get) { response in
                #expect(String(buffer: response.body).contains("\"joined\":\"1\""))
            }
            // Another method on a route: 405 naming the one it takes (docs/openapi.yaml), not 404.
            for (uri, method, allowed) in [("/v1/fl/join", HTTPRequest.Method.get, "POST"), ("/v1/fl/status", .delete, "GET")] {
                try await client.execute(uri: uri, method: method) { response in
                    #expect(response.status == .methodNotAllowed)
                    #expect(response.headers[.allow] == allowed)
                    #expect(String(buffer: response.body) == "\(method.rawValue) is not allowed here: use \(allowed)\n")
                }
            }
            try await client.execute(uri: "/v1/fl/nothing", method: .get) { response in #expect(response.status == .notFound) }
        }
    }
}

/// Lines collected from several tasks.
final class LogLines: @unchecked Sendable {
    /// A logger of warnings and worse whose messages are collected here.
    var logger: Logger {
        var logger = Logger(label: "test") { _ in Handler(lines: self) }
        logger.logLevel = .warning
        return logger
    }

    struct Handler: LogHandler {
        let lines: LogLines
        var logLevel: Logger.Level = .warning
        var metadata: Logger.Metadata = [:]
        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }
        func log(event: LogEvent) { lines.append("\(event.message)") }
    }

    private let lock = NSLock()
    private var lines: [String] = []
    func append(_ line: String) {
        lock.lock()
        lines.append(line)
        lock.unlock()
    }
    var all: [String] {
        lock.lock()
        defer { lock.unlock() }
        return lines
    }
}
