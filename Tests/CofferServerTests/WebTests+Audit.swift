import CofferRegistry
import CofferTestSupport
import Foundation
import GRDB
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Testing

@testable import CofferServer

/// The audit page: for admins, paged by keyset, and its chain check from the server's checkpoint.
extension WebTests {
    @Test func theAuditPageIsForAdminsAndPagesByKeyset() async throws {
        let w = try await server.world()
        let registry = w.fixture.registry
        for i in 1...130 {
            try await registry.recordRefusal(action: "probe", target: i % 2 == 0 ? "m/risk:1" : "other/x", reason: "n\(i)", principal: "mallory")
        }
        try await server.app(w).test(.router) { client in
            // A reader, and an admin token of a principal without the admin role, both get the 403 page.
            let bob = try await signIn(client, token: w.tokens["bob-read"]!)
            let refused = try await client.execute(uri: "/audit", method: .get, headers: bob.headers)
            #expect(refused.status == .forbidden)
            #expect(Self.text(refused).contains("<h1>403 Forbidden</h1>") && Self.text(refused).contains("does not allow the admin role"))
            #expect(!Self.text(try await client.execute(uri: "/models", method: .get, headers: bob.headers)).contains(#"href="/audit""#))

            let alice = try await signIn(client, token: w.tokens["admin"]!)
            let first = try await client.execute(uri: "/audit?principal=mallory&action=probe", method: .get, headers: alice.headers)
            #expect(first.status == .ok)
            let html = Self.text(first)
            #expect(html.contains(#"<span class="badge ok" id="chain-status">verified</span>"#))
            #expect(html.contains("Last signed head</dt><dd>entry "))
            #expect(html.contains("<td>n130</td>") && !html.contains("<td>n80</td>") && html.contains("<td>n81</td>"))
            // The next page starts below the last entry shown, by its number: no entry is skipped or repeated.
            let seqs = try Self.auditSeqs(html)
            #expect(seqs.count == WebController.auditPageSize && seqs == seqs.sorted(by: >))
            let next = try #require(html.range(of: #"href="/audit?principal=mallory&amp;action=probe&amp;before="#))
            let before = html[next.upperBound...].prefix { $0.isNumber }
            #expect(Int64(before) == seqs.last)
            let second = Self.text(
                try await client.execute(uri: "/audit?principal=mallory&action=probe&before=\(before)", method: .get, headers: alice.headers)
            )
            #expect(second.contains("<td>n80</td>") && second.contains("<td>n31</td>") && !second.contains("<td>n81</td>"))
            let third = Self.text(
                try await client.execute(
                    uri: "/audit?principal=mallory&action=probe&before=\(try Self.auditSeqs(second).last!)",
                    method: .get,
                    headers: alice.headers
                )
            )
            #expect(try Self.auditSeqs(third).count == 30 && !third.contains("Older entries"))
            // The model filter: only entries naming m/risk (the even ones).
            let model = Self.text(try await client.execute(uri: "/audit?model=m/risk&action=probe", method: .get, headers: alice.headers))
            #expect(model.contains("<td>n130</td>") && !model.contains("<td>n129</td>"))
            let bad = try await client.execute(uri: "/audit?before=x", method: .get, headers: alice.headers)
            #expect(bad.status == .badRequest)
        }
    }

    /// Changes the registry's database behind its back, as someone holding it would (the log's triggers dropped): its
    /// SQLite file, or its PostgreSQL database through `psql` as the tables' owner.
    static func tamper(_ w: ServerTests.World, _ sql: String) throws {
        guard TestBackends.metadataInSQLite else {
            let statements = "BEGIN; ALTER TABLE audit_log DISABLE TRIGGER USER; \(sql); ALTER TABLE audit_log ENABLE TRIGGER USER; COMMIT;"
            let psql = try ProgramRun.run("/usr/bin/psql", ["-q", "-v", "ON_ERROR_STOP=1", w.fixture.metadata, "-c", statements])
            try #require(psql.status == 0, "psql \(w.fixture.metadata) -c \(statements): \(psql.stderr)")
            return
        }
        let db = try DatabaseQueue(path: "\(w.fixture.home)/registry.sqlite")
        try db.write { db in
            for trigger in try String.fetchAll(db, sql: "SELECT name FROM sqlite_master WHERE type = 'trigger'") {
                try db.execute(sql: "DROP TRIGGER \(trigger)")
            }
            try db.execute(sql: sql)
        }
    }

    /// The audit page verifies from the server's checkpoint: entries appended since are walked.
    @Test func theAuditPageWalksOnlyWhatWasAppendedSinceItsLastCheck() async throws {
        let w = try await server.world()
        try await server.app(w).test(.router) { client in
            let alice = try await signIn(client, token: w.tokens["admin"]!)
            let first = Self.text(try await client.execute(uri: "/audit", method: .get, headers: alice.headers))
            #expect(first.contains(#"<span class="badge ok" id="chain-status">verified</span>"#), "\(first)")
            let count = try await w.fixture.registry.auditEntries().count
            for i in 1...3 { try await w.fixture.registry.recordRefusal(action: "probe", target: "m/risk:1", reason: "n\(i)", principal: "mallory") }
            let second = Self.text(try await client.execute(uri: "/audit", method: .get, headers: alice.headers))
            #expect(second.contains(#"<span class="badge ok" id="chain-status">verified</span> Entries 1 to \#(count + 3) chained"#), "\(second)")
            #expect(second.contains("(3 appended since the last check walked now)"))
            #expect(second.contains("Whole chain last walked</dt><dd>20"), "the round of slices over this small log ended")
        }
    }

    /// What the page's check promises (docs/WEB.md, "The audit page's chain check"): damage after the checkpoint,
    /// to the checkpoint's own entry, or in place inside the verified prefix is shown on the next load.
    @Test(arguments: [
        ("UPDATE audit_log SET reason = 'edited' WHERE seq = {after}", "entry {after} was edited"),
        ("UPDATE audit_log SET entry_hash = prev_hash WHERE seq = {checkpoint}", "entries up to {checkpoint} were rewritten"),
        ("UPDATE audit_log SET principal = 'mallory' WHERE seq = 2", "entry 2 was edited"),
    ])
    func theAuditPageShowsDamageBeforeAndAfterItsCheckpoint(damage: (sql: String, expected: String)) async throws {
        let w = try await server.world()
        try await server.app(w).test(.router) { client in
            let alice = try await signIn(client, token: w.tokens["admin"]!)
            let first = Self.text(try await client.execute(uri: "/audit", method: .get, headers: alice.headers))
            #expect(first.contains(#"id="chain-status">verified</span>"#))
            let checkpoint = try #require(try await w.fixture.registry.auditEntries().last?.seq)
            for i in 1...3 { try await w.fixture.registry.recordRefusal(action: "probe", target: "m/risk:1", reason: "n\(i)", principal: "mallory") }
            func filled(_ text: String) -> String {
                text.replacingOccurrences(of: "{after}", with: "\(checkpoint + 2)").replacingOccurrences(of: "{checkpoint}", with: "\(checkpoint)")
            }
            try Self.tamper(w, filled(damage.sql))
            let page = Self.text(try await client.execute(uri: "/audit", method: .get, headers: alice.headers))
            #expect(page.contains(#"<span class="badge bad" id="chain-status">broken</span>"#), "\(page)")
            #expect(page.contains(filled(damage.expected)), "\(page)")
        }
    }

    /// The entry numbers in the first column of an audit page's table, top to bottom.
    static func auditSeqs(_ html: String) throws -> [Int64] {
        let body = try #require(html.range(of: "<tbody>").map { html[$0.upperBound...] })
        return body.components(separatedBy: "<tr><td>").dropFirst().compactMap { Int64($0.prefix { $0.isNumber }) }
    }
}
