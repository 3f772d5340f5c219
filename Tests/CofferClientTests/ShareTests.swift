import CofferClient
import CofferCrypto
import CofferRegistry
import Foundation
import Hummingbird
import HummingbirdTesting
import Testing

/// Grants that carry keys over HTTP: the server wraps on demand what a grant made without the registry key left
/// out, a push over HTTP wraps for every decrypt holder, and an unshared principal opens nothing, present or future.
struct ShareOverHTTPTests {
    @Test func aSharedPrincipalPullsPresentAndFutureVersionsOverHTTPUntilUnshared() async throws {
        let f = try await Fixture()
        let dave = UnlockedIdentity(try Identity.generate(name: "dave"))
        let admin = Signer(f.alice)
        try await f.registry.addPrincipal(name: "dave", identity: dave.publicIdentity, roles: [], by: admin)
        // Shared without the registry key (an admin away from the server): nothing is wrapped yet.
        let shared = try await f.registry.share("m/", with: "dave", mode: .pull, registryIdentity: nil, by: admin)
        #expect(shared.wrapped.isEmpty && shared.pending == ["m/risk:1"])
        let token = try await f.registry.createToken(principal: "dave", scope: .read, ttl: 600, by: admin)
        let daveToken = token.token.text().withUnsafeBytes { String(decoding: $0, as: UTF8.self) }
        let daveTokenID = token.info.id
        let publish = try await f.registry.createToken(principal: "alice", scope: .publish, ttl: 600, by: admin)
        let aliceToken = publish.token.text().withUnsafeBytes { String(decoding: $0, as: UTF8.self) }

        try await f.app().test(.live) { live in
            let port = try live.livePort
            let client = try f.client(port: port, token: daveToken, memory: "dave-memory")
            // The server holds the registry key: it wraps dave's key when he asks, and keeps it.
            let first = try await client.pull(try ModelReference(parsing: "m/risk:1"), identity: dave.identity, into: f.path("d1"))
            #expect(first.version == "1")
            #expect(FileManager.default.fileExists(atPath: f.path("d1/model.safetensors")))
            let released = try await f.registry.auditEntries().last { $0.action == "pull" && $0.principal == "dave" }
            #expect(released?.reason.contains("wrapped on demand and released") == true, "\(released?.reason ?? "-")")
            // A remote verify asks for no key, and is logged as what it is.
            _ = try await client.verify(try ModelReference(parsing: "m/risk:1"))
            let verified = try await f.registry.auditEntries().last { $0.principal == "dave" }
            #expect(verified?.action == "verify" && verified?.reason == "remote: signed documents only", "\(String(describing: verified))")

            // A version pushed over HTTP after the grant is wrapped for dave at commit.
            let weights = Array("second version".utf8)
            try FileManager.default.createDirectory(atPath: f.path("v2"), withIntermediateDirectories: true)
            try Data(weights).write(to: URL(fileURLWithPath: f.path("v2/weights.bin")))
            let publisher = try f.client(port: port, token: aliceToken, memory: "alice-memory")
            let pushed = try await publisher.push(
                PushRequest(model: "m/risk", paths: [f.path("v2")]),
                publisher: f.alice.identity,
                outbox: f.path("outbox")
            )
            let second = try await client.pull(try ModelReference(parsing: "m/risk:\(pushed.version)"), identity: dave.identity, into: f.path("d2"))
            #expect(second.version == pushed.version)
            #expect(try Data(contentsOf: URL(fileURLWithPath: f.path("d2/weights.bin"))) == Data(weights))
            let atPush = try await f.registry.auditEntries().last { $0.action == "pull" && $0.principal == "dave" }
            #expect(atPush?.reason.contains("on demand") == false, "wrapped at push, not on demand: \(atPush?.reason ?? "-")")

            // Unshared: his token is revoked, so nothing opens; a fresh token finds no role, present or future.
            let ended = try await f.registry.unshare("dave", by: admin)
            #expect(ended.tokens == [daveTokenID] && ended.removedKeys.count == 2)
            await #expect(throws: CofferClientError.self) {
                try await client.pull(try ModelReference(parsing: "m/risk:1"), identity: dave.identity, into: f.path("d3"))
            }
            try await f.registry.grant(Grant(principal: "dave", role: .reader, scope: "m/"), by: admin)
            let again = try await f.registry.createToken(principal: "dave", scope: .read, ttl: 600, by: admin)
            let later = try f.client(
                port: port,
                token: again.token.text().withUnsafeBytes { String(decoding: $0, as: UTF8.self) },
                memory: "dave-memory"
            )
            let refused = await #expect(throws: CofferClientError.self) {
                try await later.pull(try ModelReference(parsing: "m/risk:\(pushed.version)"), identity: dave.identity, into: f.path("d4"))
            }
            #expect(refused == .registry(.notARecipient("m/risk:\(pushed.version)")), "\(String(describing: refused))")
            #expect(!FileManager.default.fileExists(atPath: f.path("d4/weights.bin")))
            // The server released no key: its log says the pull failed, not that a key went out.
            let failed = try await f.registry.auditEntries().last { $0.principal == "dave" && $0.action == "pull" }
            #expect(failed?.outcome == .failed && failed?.reason.contains("no decrypt role") == true, "\(String(describing: failed))")
        }
    }
}
