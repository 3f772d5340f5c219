import CofferClient
import CofferCrypto
import CofferRegistry
import Foundation
import HummingbirdTesting
import Testing

/// Inference sessions through the client, with the session token that lets another server of the registry answer.
struct SessionTests {
    let rows: [[String: Double]] = [["x0": 0.5, "x1": -0.2, "x2": 1.0], ["x0": -1.0, "x1": 0.3, "x2": 0.0]]

    @Test func aSessionOpenedOnOneServerPredictsOnAnotherWithItsToken() async throws {
        let f = try await Fixture()
        try await f.app().test(.live) { first in
            let client = try f.client(port: try first.livePort, token: "bob-infer")
            let session = try await client.openSession("m/risk@prod", ttl: 300, maxUses: 6)
            #expect(session.model == "m/risk" && session.version == "1" && session.maxUses == 6)
            let token = try #require(session.token)
            #expect(token.withUnsafeBytes { Array($0.prefix(4)) } == Array("cfs_".utf8))
            let predictions = try await client.predict(session: session, rows: rows)
            #expect(predictions.count == 2)

            // A second server over the same registry (a replica) has not loaded the session: without its token it
            // says how to reach it, with it it opens the session from its key copy.
            try await f.app().test(.live) { second in
                let replica = try f.client(port: try second.livePort, token: "bob-infer")
                let missing = await #expect(throws: CofferClientError.self) { try await replica.predict(session: session.id, rows: rows) }
                #expect(missing?.status == 404 && missing?.description.contains("Coffer-Session-Token") == true, "\(String(describing: missing))")
                #expect(try await replica.predict(session: session, rows: rows) == predictions, "the replica predicts as the first server")
            }
            let listed = try await client.sessions()
            #expect(listed.map(\.id) == [session.id] && listed.first?.uses == 4, "a use per row: two predictions of two rows")
            try await client.closeSession(session.id)
            let revoked = await #expect(throws: CofferClientError.self) { try await client.predict(session: session, rows: rows) }
            #expect(revoked?.status == 403 || revoked?.status == 404, "\(String(describing: revoked))")
        }
    }

    /// Found by the token campaign: a prediction refused for asking more rows than are left made the server forget
    /// the session, and every later one that fitted got a 404.
    @Test func aPredictionAskingMoreThanIsLeftIsRefusedAndASmallerOneStillFits() async throws {
        let f = try await Fixture()
        try await f.app().test(.live) { server in
            let client = try f.client(port: try server.livePort, token: "bob-infer")
            let session = try await client.openSession("m/risk@prod", ttl: 300, maxUses: 3)
            #expect(try await client.predict(session: session.id, rows: rows).count == 2)
            let refused = await #expect(throws: CofferClientError.self) { try await client.predict(session: session.id, rows: rows) }
            #expect(refused?.status == 403 && refused?.description.contains("has 1 of its 3 uses left, and this call needs 2") == true)
            #expect(try await client.predict(session: session.id, rows: [rows[0]]).count == 1, "the server still holds the session")
            #expect(try await client.sessions().first?.uses == 3)
        }
    }

    @Test func aReadTokenCannotOpenASession() async throws {
        let f = try await Fixture()
        try await f.app().test(.live) { live in
            let client = try f.client(port: try live.livePort, token: "bob-read")
            let refused = await #expect(throws: CofferClientError.self) { try await client.openSession("m/risk@prod", ttl: 60) }
            #expect(refused?.status == 403 && refused?.description.contains("does not allow the inference role") == true)
        }
    }
}
