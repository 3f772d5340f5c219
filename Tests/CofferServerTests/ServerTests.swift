import CofferCrypto
import CofferRegistry
import CofferTestSupport
import CofferTraining
import Foundation
import Hummingbird
import HummingbirdTesting
import Testing

@testable import CofferServer

/// The HTTP API through Hummingbird's router test client, on a real registry directory with a trained model.
struct ServerTests {
    /// A registry owned by alice (admin), with bob (reader + inference on m/), and m/risk:1 a small trained checkpoint.
    final class Fixture: @unchecked Sendable {
        let root: URL
        let registry: Registry
        let registryIdentity: UnlockedIdentity
        /// alice, the owner, once `world()` made her.
        var publisher: UnlockedIdentity!
        var home: String { root.appendingPathComponent("home").path }
        /// Where the registry keeps its metadata: `sqlite`, or its PostgreSQL database's URL (``TestBackends``).
        let metadata = TestBackends.newMetadata()

        init() async throws {
            root = FileManager.default.temporaryDirectory.appendingPathComponent("coffer-server-\(UUID().uuidString)")
            try FileManager.default.createDirectory(at: root, withIntermediateDirectories: true)
            let secret = SecureBytes(count: 8)
            secret.withUnsafeMutableBytes { $0.copyBytes(from: Array("pass1234".utf8)) }
            registry = try await Registry.create(
                at: root.appendingPathComponent("home").path,
                passphrase: secret,
                kdf: KDFParameters(opsLimit: 1, memLimit: 8192),
                backends: Backends(metadata: metadata, blobs: TestBackends.newBlobs()),
                memory: ClientMemory(directory: root.appendingPathComponent("client-state").path)
            )
            let keyFile = Array(try Data(contentsOf: root.appendingPathComponent("home/registry.key")))
            registryIdentity = UnlockedIdentity(try Identity.decrypt(keyFile: keyFile, passphrase: secret))
        }

        deinit { try? FileManager.default.removeItem(at: root) }

        func path(_ name: String) -> String { root.appendingPathComponent(name).path }

        /// A directory holding a trained checkpoint (``TrainedCheckpoint``).
        func checkpoint() async throws -> String { try await TrainedCheckpoint.write(into: path("ckpt")) }
    }

    struct World: Sendable {
        let fixture: Fixture
        let tokens: [String: String]  // name -> bearer token text
    }

    func world() async throws -> World {
        let f = try await Fixture()
        let alice = UnlockedIdentity(try Identity.generate(name: "alice"))
        f.publisher = alice
        let bob = try Identity.generate(name: "bob")
        let carol = try Identity.generate(name: "carol")
        try await f.registry.addPrincipal(name: "alice", identity: alice.publicIdentity, roles: [], by: Signer(f.registryIdentity))
        let signer = Signer(alice)
        try await f.registry.addPrincipal(name: "bob", identity: bob.publicIdentity, roles: [], by: signer)
        try await f.registry.addPrincipal(name: "carol", identity: carol.publicIdentity, roles: [], by: signer)
        try await f.registry.grant(Grant(principal: "bob", role: .reader, scope: "m/"), by: signer)
        try await f.registry.grant(Grant(principal: "bob", role: .inference, scope: "m/"), by: signer)
        try await f.registry.grant(Grant(principal: "bob", role: .publisher, scope: "m/"), by: signer)
        // carol may read another namespace only: her read token works, but not on m/.
        try await f.registry.grant(Grant(principal: "carol", role: .reader, scope: "other/"), by: signer)
        try await f.registry.trust(alice.publicIdentity, by: signer)
        var request = PushRequest(model: "m/risk", paths: [try await f.checkpoint()])
        request.alias = "prod"
        _ = try await f.registry.push(request, publisher: alice)
        func token(_ principal: String, _ scope: TokenScope, ttl: TimeInterval = 600, now: Date = Date()) async throws -> String {
            let created = try await f.registry.createToken(principal: principal, scope: scope, ttl: ttl, by: signer, now: now)
            return created.token.text().withUnsafeBytes { String(decoding: $0, as: UTF8.self) }
        }
        let revoked = try await f.registry.createToken(principal: "bob", scope: .read, ttl: 600, by: signer)
        try await f.registry.revokeToken(id: revoked.info.id, by: signer)
        return await World(
            fixture: f,
            tokens: [
                "admin": try token("alice", .admin), "admin-infer": try token("alice", .infer),
                "bob-read": try token("bob", .read), "bob-infer": try token("bob", .infer),
                "bob-publish": try token("bob", .publish),
                "carol-read": try token("carol", .read), "expired": try token("bob", .read, ttl: 60, now: Date().addingTimeInterval(-3600)),
                "revoked": revoked.token.text().withUnsafeBytes { String(decoding: $0, as: UTF8.self) },
            ]
        )
    }

    func app(_ w: World, configuration: ServerConfiguration = .init(port: 0)) async throws -> some ApplicationProtocol {
        try await buildApplication(registry: w.fixture.registry, registryIdentity: w.fixture.registryIdentity, configuration: configuration)
    }

    func bearer(_ token: String) -> HTTPFields { [.authorization: "Bearer \(token)"] }

    func text(_ response: TestResponse) -> String { String(buffer: response.body) }

    func data(_ response: TestResponse) -> Data { Data(response.body.readableBytesView) }

    /// Opens a session on m/risk@prod for `ttl` seconds with `headers`: the status, and the session's id or the
    /// refusal's message.
    func openSession(_ client: some TestClientProtocol, _ headers: HTTPFields, ttl: Int) async throws -> (status: HTTPResponse.Status, said: String) {
        try await client.execute(
            uri: "/v1/sessions",
            method: .post,
            headers: headers,
            body: ByteBuffer(string: #"{"ref": "m/risk@prod", "ttl_seconds": \#(ttl)}"#)
        ) { response in
            let object = try? JSONSerialization.jsonObject(with: data(response)) as? [String: Any]
            let refusal = (object?["error"] as? [String: Any])?["message"] as? String
            return (response.status, object?["id"] as? String ?? refusal ?? text(response))
        }
    }

    @Test func everyAuthenticationFailureHasItsCode() async throws {
        let w = try await world()
        try await app(w).test(.router) { client in
            try await client.execute(uri: "/healthz", method: .get) { #expect($0.status == .ok) }
            try await client.execute(uri: "/v1/versions", method: .get) { response in
                #expect(response.status == .unauthorized && response.headers[.wwwAuthenticate] == "Bearer")
            }
            let cases: [(String, HTTPResponse.Status, String)] = [
                ("cft_nothex", .unauthorized, "malformed bearer token"),
                ("cft_" + String(repeating: "0", count: 64), .unauthorized, "unknown bearer token"),
                (w.tokens["expired"]!, .unauthorized, "expired at"),
                (w.tokens["revoked"]!, .unauthorized, "was revoked at"),
                (w.tokens["carol-read"]!, .forbidden, "carol lacks the reader role on m"),
            ]
            for (token, status, message) in cases {
                try await client.execute(uri: "/v1/version?ref=m/risk:1", method: .get, headers: bearer(token)) { response in
                    #expect(response.status == status, "\(message)")
                    #expect(text(response).contains(message), "\(text(response))")
                }
            }
            // A read-scoped token cannot open a session, whatever its principal's grants.
            try await client.execute(
                uri: "/v1/sessions",
                method: .post,
                headers: bearer(w.tokens["bob-read"]!),
                body: ByteBuffer(string: #"{"ref": "m/risk@prod", "ttl_seconds": 60}"#)
            ) { response in
                #expect(response.status == .forbidden && text(response).contains("scope read, which does not allow the inference role"))
            }
            try await client.execute(uri: "/v1/audit", method: .get, headers: bearer(w.tokens["bob-read"]!)) { #expect($0.status == .forbidden) }
            try await client.execute(uri: "/metrics", method: .get) { response in
                let refusals = text(response).split(separator: "\n").first { $0.hasPrefix("coffer_refusals_total ") }
                #expect(Int(refusals?.split(separator: " ").last ?? "") == 8, "\(text(response))")
                #expect(text(response).contains(#"coffer_http_requests_total{route="/v1/version",status="401"} 4"#))
            }
        }
        // The tally is written every few seconds and once more as the server stops, which may finish after the client
        // has its last answer: wait for it (a loaded full run read the log with only a first flush in it).
        var refusals: [AuditEntry] = []
        for _ in 0..<250 {
            refusals = try await w.fixture.registry.auditEntries().filter { $0.outcome == .refused }
            if refusals.count >= 8 { break }
            try await Task.sleep(for: .milliseconds(40))
        }
        #expect(refusals.count >= 8, "every refusal is audited")
        await #expect(try !w.fixture.registry.auditEntries().contains { $0.reason.contains(w.tokens["bob-read"]!) }, "no token in the log")
    }

    @Test func metadataAndCiphertextWithRanges() async throws {
        let w = try await world()
        let show = try await w.fixture.registry.show(try ModelReference(parsing: "m/risk:1"))
        let blob = show.files.first { $0.path == "model.safetensors" }!
        var read = Data()
        for try await piece in try await w.fixture.registry.readBlob(blob.sealedSHA256) { read.append(contentsOf: piece.readableBytesView) }
        let bytes = read
        try await app(w).test(.router) { client in
            try await client.execute(uri: "/v1/versions?model=m/risk", method: .get, headers: bearer(w.tokens["bob-read"]!)) { response in
                let list = try JSONSerialization.jsonObject(with: data(response)) as? [[String: Any]]
                #expect(list?.first?["version"] as? String == "1" && list?.first?["model"] as? String == "m/risk")
            }
            try await client.execute(uri: "/v1/verify?ref=m/risk@prod", method: .get, headers: bearer(w.tokens["bob-read"]!)) { response in
                #expect(response.status == .ok && text(response).contains("\"ok\":true"))
            }
            try await client.execute(uri: "/v1/blobs/\(blob.sealedSHA256)", method: .get, headers: bearer(w.tokens["bob-read"]!)) { response in
                #expect(response.status == .ok && data(response) == bytes)
            }
            var ranged = bearer(w.tokens["bob-read"]!)
            ranged[.range] = "bytes=100-1099"
            try await client.execute(uri: "/v1/blobs/\(blob.sealedSHA256)", method: .get, headers: ranged) { response in
                #expect(response.status == .partialContent && data(response) == bytes[100..<1100])
                #expect(response.headers[.contentRange] == "bytes 100-1099/\(bytes.count)")
            }
            ranged[.range] = "bytes=-16"
            try await client.execute(uri: "/v1/blobs/\(blob.sealedSHA256)", method: .get, headers: ranged) { response in
                #expect(data(response) == bytes.suffix(16))
            }
            ranged[.range] = "bytes=\(bytes.count)-"
            try await client.execute(uri: "/v1/blobs/\(blob.sealedSHA256)", method: .get, headers: ranged) {
                #expect($0.status == .rangeNotSatisfiable)
            }
            try await client.execute(uri: "/v1/blobs/\(String(repeating: "a", count: 64))", method: .get, headers: bearer(w.tokens["bob-read"]!)) {
                #expect($0.status == .notFound)
            }
            try await client.execute(uri: "/v1/version?ref=m/nothing:1", method: .get, headers: bearer(w.tokens["bob-read"]!)) { response in
                #expect(response.status == .forbidden || response.status == .notFound)
            }
        }
    }

    @Test func anUploadBelongsToThePrincipalWhoStartedIt() async throws {
        let w = try await world()
        let owner = bearer(w.tokens["admin"]!)
        let other = bearer(w.tokens["bob-publish"]!)
        try await app(w).test(.router) { client in
            let id = try await client.execute(uri: "/v1/uploads", method: .post, headers: owner) { response in
                #expect(response.status == .created)
                return (try JSONSerialization.jsonObject(with: data(response)) as? [String: Any])?["id"] as? String ?? ""
            }
            var append = other
            append[UploadController.uploadOffset] = "0"
            try await client.execute(uri: "/v1/uploads/\(id)", method: .patch, headers: append, body: ByteBuffer(string: "intruder")) {
                #expect($0.status == .notFound, "another publisher cannot append to the upload")
            }
            try await client.execute(uri: "/v1/uploads/\(id)", method: .get, headers: other) { #expect($0.status == .notFound) }
            try await client.execute(uri: "/v1/uploads/\(id)?digest=\(String(repeating: "0", count: 64))", method: .put, headers: other) {
                #expect($0.status == .notFound)
            }
            append = owner
            append[UploadController.uploadOffset] = "0"
            try await client.execute(uri: "/v1/uploads/\(id)", method: .patch, headers: append, body: ByteBuffer(string: "sealed")) {
                #expect($0.status == .ok)
            }
            try await client.execute(uri: "/v1/uploads/\(id)", method: .get, headers: owner) { response in
                let object = try JSONSerialization.jsonObject(with: data(response)) as? [String: Any]
                #expect(object?["offset"] as? Int == 6)
            }
        }
    }

    @Test func sessionsPredictFromLockedMemoryAndStopWhenRevoked() async throws {
        let w = try await world()
        let infer = bearer(w.tokens["bob-infer"]!)
        try await app(w).test(.router) { client in
            let id = try await client.execute(
                uri: "/v1/sessions",
                method: .post,
                headers: infer,
                body: ByteBuffer(string: #"{"ref": "m/risk@prod", "ttl_seconds": 600, "max_uses": 4}"#)
            ) { response in
                #expect(response.status == .created, "\(text(response))")
                let object = try JSONSerialization.jsonObject(with: data(response)) as? [String: Any]
                return object?["id"] as? String ?? ""
            }
            // A feature's name is a name, never CSV: one holding line breaks made rows of its own (helper-46).
            let smuggling = ByteBuffer(string: #"{"rows": [{"x0": 0.1, "x1": -1.0, "x2\n0,0,0\n0,0,0": 2.0}]}"#)
            try await client.execute(uri: "/v1/sessions/\(id)/predict", method: .post, headers: infer, body: smuggling) { response in
                #expect(response.status == .badRequest && text(response).contains("x2"), "\(text(response))")
            }
            let rows = ByteBuffer(string: #"{"rows": [{"x0": 0.1, "x1": -1.0, "x2": 2.0}, {"x0": 1.5, "x1": 0.0, "x2": -0.3}]}"#)
            try await client.execute(uri: "/v1/sessions/\(id)/predict", method: .post, headers: infer, body: rows) { response in
                #expect(response.status == .ok, "\(text(response))")
                let object = try JSONSerialization.jsonObject(with: data(response)) as? [String: Any]
                let predictions = object?["predictions"] as? [[String: Any]]
                #expect(predictions?.count == 2 && predictions?[0]["reg"] is Double && predictions?[0]["cls"] is [String: Any])
            }
            // A request that cannot be answered spends no use: two rows' uses are still there after it.
            let missing = ByteBuffer(string: #"{"rows": [{"x0": 0.1}]}"#)
            try await client.execute(uri: "/v1/sessions/\(id)/predict", method: .post, headers: infer, body: missing) { response in
                #expect(response.status == .badRequest && text(response).contains("x1"), "\(text(response))")
            }
            // Someone else asking for it is told it is unknown, and the model stays loaded for its principal (helper-46:
            // the refusal wiped it, and the principal's next predict without its token got 404).
            try await client.execute(uri: "/v1/sessions/\(id)/predict", method: .post, headers: bearer(w.tokens["admin-infer"]!), body: rows) {
                #expect($0.status == .forbidden && text($0).contains("unknown session"), "\(text($0))")
            }
            try await client.execute(uri: "/v1/sessions/\(id)/predict", method: .post, headers: infer, body: rows) { response in
                #expect(response.status == .ok, "\(text(response))")
            }
            try await client.execute(uri: "/v1/sessions/\(id)/predict", method: .post, headers: infer, body: rows) { response in
                #expect(response.status == .forbidden && text(response).contains("has used all 4 of its uses"), "\(text(response))")
            }
            let second = try await openSession(client, infer, ttl: 600).said
            try await client.execute(uri: "/v1/sessions/\(second)", method: .delete, headers: infer) { #expect($0.status == .noContent) }
            try await client.execute(uri: "/v1/sessions/0123456789abcdef", method: .delete, headers: infer) { #expect($0.status == .notFound) }
            // An admin revokes anyone's session, but only with an admin-scoped token: its inference token is as bob's.
            let third = try await openSession(client, infer, ttl: 600).said
            try await client.execute(uri: "/v1/sessions/\(third)", method: .delete, headers: bearer(w.tokens["admin-infer"]!)) {
                #expect($0.status == .notFound)
            }
            try await client.execute(uri: "/v1/sessions/\(third)", method: .delete, headers: bearer(w.tokens["admin"]!)) {
                #expect($0.status == .noContent)
            }
            try await client.execute(uri: "/v1/sessions/\(second)/predict", method: .post, headers: infer, body: rows) { response in
                #expect(response.status == .forbidden && text(response).contains("was revoked"))
            }
            try await client.execute(
                uri: "/v1/sessions",
                method: .post,
                headers: infer,
                body: ByteBuffer(string: #"{"ref": "m/risk:1", "ttl_seconds": -5}"#)
            ) { response in
                #expect(response.status == .badRequest && text(response).contains("ttl_seconds must be from 1 to 31536000"))
            }
        }
    }

    /// A session the registry recorded but whose model this server cannot load (a blob altered in the store) is
    /// revoked at once: it must not hold a limited grant's predictions, nor a slot, for its lifetime.
    @Test func aSessionWhoseModelCannotLoadIsRevoked() async throws {
        let w = try await world()
        let infer = bearer(w.tokens["bob-infer"]!)
        let file = try await w.fixture.registry.show(try ModelReference(parsing: "m/risk@prod")).files[0]
        let blob = TestBackends.blobFile(file.sealedSHA256, home: w.fixture.home)
        var bytes = try Data(contentsOf: URL(fileURLWithPath: blob))
        bytes[bytes.count / 2] ^= 0x01
        try bytes.write(to: URL(fileURLWithPath: blob))
        let configuration = ServerConfiguration(port: 0, predictLimits: .init(sessionsPerPrincipal: 1))
        try await app(w, configuration: configuration).test(.router) { client in
            for _ in 0..<2 {
                let refused = try await openSession(client, infer, ttl: 3600)
                #expect(refused.status != .created && refused.status != .tooManyRequests, "\(refused)")
            }
        }
        let recorded = try await w.fixture.registry.sessions().filter { $0.principal == "bob" }
        #expect(recorded.count == 2 && recorded.allSatisfy { $0.revokedAt != nil }, "\(recorded)")
    }

    /// A principal holds at most `sessionsPerPrincipal` decrypted models on a server: another open is refused with 429
    /// before the registry records it, and a revoked session makes room (helper-46: 20 year-long sessions of one
    /// principal held 435 MB).
    @Test func aPrincipalHoldsAtMostItsShareOfLoadedSessions() async throws {
        let w = try await world()
        let infer = bearer(w.tokens["bob-infer"]!)
        let configuration = ServerConfiguration(port: 0, predictLimits: .init(sessionsPerPrincipal: 2))
        try await app(w, configuration: configuration).test(.router) { client in
            func open() async throws -> (HTTPResponse.Status, String) { try await openSession(client, infer, ttl: 31_536_000) }
            let first = try await open()
            let second = try await open()
            #expect(first.0 == .created && second.0 == .created, "\(first) \(second)")
            let third = try await open()
            #expect(third.0 == .tooManyRequests, "\(third)")
            #expect(third.1 == "bob holds 2 sessions open on this server, its limit: revoke one (DELETE /v1/sessions/ID) or wait for one to end")
            // At its limit, a principal asking for what it may not open hears 403, not 429 (helper-48).
            let forbidden = try await client.execute(
                uri: "/v1/sessions",
                method: .post,
                headers: infer,
                body: ByteBuffer(string: #"{"ref": "other/model:1", "ttl_seconds": 60}"#)
            ) { $0.status }
            #expect(forbidden == .forbidden)
            #expect(try await w.fixture.registry.sessions().filter { $0.principal == "bob" }.count == 2)
            try await client.execute(uri: "/v1/sessions/\(first.1)", method: .delete, headers: infer) { #expect($0.status == .noContent) }
            #expect(try await open().0 == .created)
            // Opens racing each other take their slots at once (helper-48: a count made before the model was loaded
            // let them all pass): of six, none gets past the limit, and a refused one leaves no session recorded.
            try await client.execute(uri: "/v1/sessions/\(second.1)", method: .delete, headers: infer) { #expect($0.status == .noContent) }
            let raced = try await withThrowingTaskGroup(of: HTTPResponse.Status.self) { group in
                for _ in 0..<6 { group.addTask { try await open().0 } }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            #expect(raced.count { $0 == .created } == 1 && raced.count { $0 == .tooManyRequests } == 5, "\(raced)")
            let open = try await w.fixture.registry.sessions().filter { $0.principal == "bob" && $0.revokedAt == nil }
            #expect(open.count == 2, "\(open)")
        }
    }
}
